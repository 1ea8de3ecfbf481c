"""``litellm-jobs worker``: webhook delivery and usage export in a process of their own.

The proxy runs both in the background by default. An operator who wants the proxies to spend nothing
on them (each delivery is an HTTP request and a few queries) turns them off there
(``JOBS_WEBHOOKS_ENABLED=false``, ``JOBS_EXPORT_INTERVAL_S=0``) and runs this command instead, once or
on several machines: as in the proxies, one delivers and exports at a time, the others stand by.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

from .billing.exporter import Exporter
from .cli import app, database, out, run
from .settings import Settings
from .webhooks.worker import DeliveryPolicy, WebhookWorker


@app.command("worker")
def worker_command() -> None:
    """Deliver webhooks and export usage until stopped (SIGTERM or Ctrl+C)."""

    async def work(settings: Settings) -> None:
        async with database(settings) as (store, _url):
            exporter = Exporter(store, settings)
            webhooks = WebhookWorker(
                store,
                DeliveryPolicy.from_settings(settings),
                allowance=(settings.failure_allowance_usd, settings.failure_window_s),
            )
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            exporter.start()
            await webhooks.start()
            out.print(
                "litellm-jobs worker: delivering webhooks and exporting usage "
                f"(every {settings.export_interval_s:g} s); SIGTERM or Ctrl+C stops it"
            )
            try:
                await stop.wait()
            finally:
                with contextlib.suppress(Exception):
                    await webhooks.aclose()
                with contextlib.suppress(Exception):
                    await exporter.aclose()
            out.print("litellm-jobs worker: stopped")

    run(work)
