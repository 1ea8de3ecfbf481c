"""The background writer: a bounded in-memory buffer of call events, written in batches.

LiteLLM's logging events only :meth:`Writer.put` into the buffer; one task per process drains it
into the store, one transaction per batch. Nothing on a call's request path waits for the database.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from .errors import StoreUnavailable
from .models import CallEvent, LedgerEntry

_log = logging.getLogger(__name__)


Item = CallEvent | LedgerEntry


class EventSink(Protocol):
    async def write_batch(self, items: Sequence[Item]) -> int: ...


@dataclass(slots=True)
class WriterStats:
    enqueued: int = 0
    written: int = 0  # events that were new in the store
    duplicates: int = 0  # events the store already had (replays)
    dropped: int = 0  # events given up on: must stay 0
    store_errors: int = 0
    batches: int = 0


class Writer:
    """Buffers :class:`CallEvent` and :class:`LedgerEntry` values and writes them to an :class:`EventSink` in batches.

    Example::

        writer = Writer(store, max_size=50_000, batch_size=500)
        writer.start()
        await writer.put(event)     # from a LiteLLM logging callback
        await writer.flush()        # everything put so far is in the store
        await writer.aclose()       # flush, then stop
    """

    def __init__(
        self,
        sink: EventSink | None = None,
        *,
        max_size: int = 50_000,
        batch_size: int = 500,
        enqueue_timeout_s: float = 5.0,
        retry_max_s: float = 5.0,
        observer: Callable[[WriterStats, int], None] | None = None,
    ) -> None:
        self.sink = sink
        #: Told the stats and the buffer depth after every batch (the Prometheus series).
        self.observer = observer
        self.batch_size = batch_size
        self.enqueue_timeout_s = enqueue_timeout_s
        self.retry_max_s = retry_max_s
        self.stats = WriterStats()
        self._queue: asyncio.Queue[Item] = asyncio.Queue(maxsize=max_size)
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._give_up_at: float | None = None
        self._oldest_pending: float | None = None
        # Enqueue times, in queue order (the queue is FIFO): the health route's "oldest unwritten".
        self._enqueue_times: collections.deque[float] = collections.deque()

    @property
    def depth(self) -> int:
        """Events buffered and not yet written (including a batch being written)."""
        return self.stats.enqueued - self.stats.written - self.stats.duplicates - self.stats.dropped

    @property
    def oldest_pending_age_s(self) -> float:
        """Age of the oldest event not yet written (in a batch being written, or still queued)."""
        if self.depth == 0:
            return 0.0
        times = [t for t in (self._oldest_pending, self._enqueue_times[0] if self._enqueue_times else None) if t]
        return max(0.0, time.monotonic() - min(times)) if times else 0.0

    def start(self, sink: EventSink | None = None) -> None:
        if sink is not None:
            self.sink = sink
        if self.sink is None:
            raise RuntimeError("Writer.start() needs a sink")
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="litellm-jobs-writer")

    async def put(self, event: Item) -> None:
        """Buffer one event. Waits (off the request path) while the buffer is full."""
        try:
            self._queue.put_nowait(event)
            self._enqueue_times.append(time.monotonic())
        except asyncio.QueueFull:
            try:
                await asyncio.wait_for(self._queue.put(event), timeout=self.enqueue_timeout_s)
                self._enqueue_times.append(time.monotonic())
            except TimeoutError:
                self.stats.dropped += 1
                self.stats.enqueued += 1
                _log.error("litellm-jobs: buffer full for %.1fs, dropped %s", self.enqueue_timeout_s, event.event_id)
                self._report()
                return
        self.stats.enqueued += 1

    async def flush(self) -> None:
        """Return once every event put before this call has been written (or given up on)."""
        await self._queue.join()

    async def aclose(self, timeout_s: float = 30.0) -> None:
        """Write what is buffered (for at most ``timeout_s``), then stop the task."""
        self._closing = True
        self._give_up_at = time.monotonic() + timeout_s
        if self._task is not None and not self._task.done():
            try:
                await asyncio.wait_for(self.flush(), timeout=timeout_s)
            except TimeoutError:
                _log.error("litellm-jobs: shutdown flush timed out with %d events unwritten", self.depth)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.batch_size:
                try:
                    batch.append(self._queue.get_nowait())
                except asyncio.QueueEmpty:
                    break
            times = [self._enqueue_times.popleft() for _ in batch if self._enqueue_times]
            self._oldest_pending = times[0] if times else time.monotonic()
            try:
                await self._write(batch)
            finally:
                self._oldest_pending = None
                for _ in batch:
                    self._queue.task_done()
                self._report()

    def _report(self) -> None:
        """Tell the observer (the Prometheus series); never let it stop the writer."""
        if self.observer is None:
            return
        try:
            self.observer(self.stats, self.depth)
        except Exception:
            _log.exception("litellm-jobs: the writer's observer failed")

    async def _write(self, batch: list[Item]) -> None:
        assert self.sink is not None
        delay = 0.05
        while True:
            try:
                new = await self.sink.write_batch(batch)
            except StoreUnavailable as exc:
                # Transient: keep the batch and retry; the buffer absorbs new events meanwhile.
                self.stats.store_errors += 1
                if self._give_up_at is not None and time.monotonic() >= self._give_up_at:
                    self._drop(batch, f"store unavailable at shutdown: {exc}")
                    return
                _log.warning(
                    "litellm-jobs: store unavailable (%s); retrying %d events in %.2fs", exc, len(batch), delay
                )
                self._report()  # the outage shows (store errors, buffer depth) while it lasts
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max_s)
                continue
            except Exception:
                # Not transient (a bad value in some event): isolate it so the rest is written.
                self.stats.store_errors += 1
                if len(batch) == 1:
                    _log.exception("litellm-jobs: cannot write event %s", batch[0].event_id)
                    self._drop(batch, "rejected by the store")
                    return
                for event in batch:
                    await self._write([event])
                return
            self.stats.batches += 1
            self.stats.written += new
            self.stats.duplicates += len(batch) - new
            return

    def _drop(self, batch: Sequence[Item], why: str) -> None:
        self.stats.dropped += len(batch)
        _log.error(
            "litellm-jobs: dropped %d events (%s): %s", len(batch), why, ", ".join(e.event_id for e in batch[:10])
        )
