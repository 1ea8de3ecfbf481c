"""Whether PostgreSQL answers, known without a round trip on any call's path (JOBS_FAIL_MODE)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import asyncpg

from .postgres import asyncpg_connect_args
from .sql import query

_log = logging.getLogger(__name__)


class StoreWatch:
    """Pings PostgreSQL every ``interval_s`` on a connection of its own; :attr:`available` is the verdict.

    No ping while the writer's batches show PostgreSQL answering (``answered_at``): under load the
    watch costs nothing, and an outage stops those answers, so the next round pings.

    Not through the store's pool: at saturation the pool's connections are all busy and a ping
    waiting for one is no sign of an outage. A refused or broken connection is one at once; a ping
    that only times out (a loaded event loop or database) counts after ``failures_to_down`` in a row.
    The connection is asyncpg's, with its own timeout: an idle proxy pings every ``interval_s``, and
    this way a ping costs a quarter of the instructions of psycopg's under ``asyncio.wait_for``.

    Example::

        watch = StoreWatch(url, interval_s=1.0)
        watch.start()
        if not watch.available: ...   # refuse new holds (JOBS_FAIL_MODE=closed)
        await watch.aclose()
    """

    def __init__(
        self,
        url: str,
        *,
        interval_s: float = 1.0,
        timeout_s: float = 5.0,
        failures_to_down: int = 2,
        answered_at: Callable[[], float] | None = None,
    ) -> None:
        self.url = url
        #: time.monotonic() of the last time PostgreSQL answered someone else (the writer): no ping is
        #: needed while that is recent and the verdict is "available".
        self.answered_at = answered_at
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.failures_to_down = failures_to_down
        self.available = True
        self._connect_args = asyncpg_connect_args(url, application_name="litellm-jobs-watch")
        self._conn: asyncpg.Connection | None = None
        self._timeouts = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="litellm-jobs-store-watch")

    async def _ping(self) -> None:
        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(timeout=self.timeout_s, **self._connect_args)
        await self._conn.execute(query("ping"), timeout=self.timeout_s)

    async def check(self) -> bool:
        try:
            await self._ping()
        except TimeoutError:
            await self._drop_connection()  # a ping cut short: the next one starts on a fresh connection
            self._timeouts += 1
            if self._timeouts >= self.failures_to_down:
                self._down(f"no answer in {self.timeout_s:.1f}s, {self._timeouts} times")
        except (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError) as exc:
            reused = self._conn is not None
            await self._drop_connection()
            if reused:  # a connection left from before a restart is no verdict: ask on a fresh one
                return await self.check()
            self._down(str(exc).strip() or type(exc).__name__)
        else:
            self._timeouts = 0
            if not self.available:
                _log.warning("litellm-jobs: PostgreSQL is reachable again")
            self.available = True
        return self.available

    def _down(self, why: str) -> None:
        if self.available:
            _log.warning("litellm-jobs: PostgreSQL is unreachable (%s)", why)
        self.available = False

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.terminate()

    async def _run(self) -> None:
        while True:
            recent = self.answered_at is not None and time.monotonic() - self.answered_at() < self.interval_s
            if not (recent and self.available):
                await self.check()
            await asyncio.sleep(self.interval_s)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._drop_connection()
