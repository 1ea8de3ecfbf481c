"""Whether PostgreSQL answers, known without a round trip on any call's path (JOBS_FAIL_MODE)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from ..errors import StoreUnavailable
from .postgres import PostgresStore

_log = logging.getLogger(__name__)


class StoreWatch:
    """Pings the store every ``interval_s`` in the background; :attr:`available` is the last answer.

    Example::

        watch = StoreWatch(store, interval_s=1.0)
        watch.start()
        if not watch.available: ...   # refuse new holds (JOBS_FAIL_MODE=closed)
        await watch.aclose()
    """

    def __init__(self, store: PostgresStore, *, interval_s: float = 1.0) -> None:
        self.store = store
        self.interval_s = interval_s
        self.available = True
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="litellm-jobs-store-watch")

    async def check(self) -> bool:
        try:
            await asyncio.wait_for(self.store.ping(), timeout=max(self.interval_s, 1.0))
        except (StoreUnavailable, TimeoutError) as exc:
            if self.available:
                _log.warning("litellm-jobs: PostgreSQL is unreachable (%s)", exc)
            self.available = False
        else:
            if not self.available:
                _log.warning("litellm-jobs: PostgreSQL is reachable again")
            self.available = True
        return self.available

    async def _run(self) -> None:
        while True:
            await self.check()
            await asyncio.sleep(self.interval_s)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
