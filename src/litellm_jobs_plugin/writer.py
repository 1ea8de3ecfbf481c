"""The background writer: call events and ledger entries, written to the store in batches.

LiteLLM's logging events only :meth:`Writer.put` their records; one task per process writes them,
one transaction per batch. Nothing on a call's request path waits for the database.

Without Redis the records wait in a bounded in-memory buffer (lost on ``kill -9``: at most what the
health route reports as unwritten). With Redis they go to the :mod:`journal` first, a Redis stream
every replica reads, and leave it only once PostgreSQL has committed them; while Redis is down the
in-memory buffer takes over.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .errors import StoreUnavailable
from .journal import RedisJournal, decode_entry
from .models import CallEvent, LedgerEntry

_log = logging.getLogger(__name__)


Item = CallEvent | LedgerEntry
#: How long a journal reader's read waits for new entries (it returns as soon as one arrives): well
#: under the Redis client's 5 s socket timeout, which a blocking read's wait counts against.
JOURNAL_BLOCK_MS = 2000
#: A writer woken by a new record waits this long before writing it: the answer whose record it is
#: leaves first (with Redis, its wait for the append ended at the same moment as the reader's).
ANSWER_FIRST_S = 0.005
#: How often the journal's backlog is read for the Prometheus gauges.
JOURNAL_GAUGE_INTERVAL_S = 5.0


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
    journaled: int = 0  # records appended to the journal (not counted in enqueued)
    journal_errors: int = 0  # Redis failures of the journal (records then took the in-memory buffer)
    unreadable: int = 0  # journal entries that could not be decoded (left pending, logged)


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
        journal: RedisJournal | None = None,
        journal_retry_s: float = 1.0,
        journal_observer: Callable[[int, float], None] | None = None,
        linger_s: float = 0.0,
    ) -> None:
        #: After a batch's first record, wait this long for more (one transaction for many calls).
        self.linger_s = linger_s
        #: Told the journal's backlog and the age of its oldest entry every few seconds (JOURNAL_GAUGE_INTERVAL_S).
        self.journal_observer = journal_observer
        self.sink = sink
        #: The durable queue (Redis); None: the in-memory buffer only.
        self.journal = journal
        self.journal_retry_s = journal_retry_s
        self._journal_down_until = 0.0
        self._journal_task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        #: Told the stats and the buffer depth after every batch (the Prometheus series).
        self.observer = observer
        self.batch_size = batch_size
        self.enqueue_timeout_s = enqueue_timeout_s
        self.retry_max_s = retry_max_s
        self.stats = WriterStats()
        self._queue: asyncio.Queue[Item] = asyncio.Queue(maxsize=max_size)
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._mem_pending = 0
        self._journal_writing = 0  # journal batches read and being written to the store
        #: time.monotonic() of the last batch PostgreSQL committed (the store watch needs no ping then).
        self.last_written_at = 0.0
        #: Journal readers waiting in a blocking read (holding nothing): shutdown cancels them.
        self._reading: set[asyncio.Task[Any]] = set()
        self._give_up_at: float | None = None
        self._oldest_pending: float | None = None
        # Enqueue times, in queue order (the queue is FIFO): the health route's "oldest unwritten".
        self._enqueue_times: collections.deque[float] = collections.deque()

    @property
    def depth(self) -> int:
        """Events in the in-memory buffer, not yet written (including a batch being written).

        The journal's backlog is in Redis: :meth:`RedisJournal.backlog`.
        """
        return self._mem_pending

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
        if self.journal is not None and (self._journal_task is None or self._journal_task.done()):
            self._journal_task = asyncio.get_running_loop().create_task(
                self._run_journals(), name="litellm-jobs-journal"
            )
            self._watch_task = asyncio.get_running_loop().create_task(
                self._watch_journal(), name="litellm-jobs-journal-backlog"
            )

    @property
    def journal_up(self) -> bool:
        """The journal takes new records (False for ``journal_retry_s`` after a Redis failure)."""
        return self.journal is not None and time.monotonic() >= self._journal_down_until

    async def put(self, event: Item) -> None:
        """Record one event: in the journal (durable), else in the buffer (waiting while it is full)."""
        if self.journal is None:
            await self._buffer(event)  # in process: straight to the buffer (a call's path, kept short)
            return
        await self.put_many((event,))

    async def put_call(self, event: CallEvent, team_id: str, job_id: str) -> bool:
        """Record a call of an open job. True: its cost was added to the job by the same journal
        script (Redis credits, one round trip); False: the caller adds it."""
        journal = self.journal
        if journal is not None and journal.adds_costs and self.journal_up:
            try:
                await journal.append_call(event, team_id, job_id)
                self.stats.journaled += 1
                return True
            except Exception as exc:
                self._journal_failed(exc)
        await self.put(event)
        return False

    async def put_many(self, items: Sequence[Item]) -> None:
        """Record several events, in order: in the journal in one round trip, else in the buffer.

        A retried append may journal a record twice (a pipeline is not atomic): the store counts
        each record once.
        """
        if self.journal is not None and self.journal_up:
            try:
                await self.journal.append_many(items)
                self.stats.journaled += len(items)
                return
            except Exception as exc:
                self._journal_failed(exc)
        for item in items:
            await self._buffer(item)

    async def _buffer(self, event: Item) -> None:
        try:
            self._queue.put_nowait(event)
            self._enqueue_times.append(time.monotonic())
            self._mem_pending += 1
        except asyncio.QueueFull:
            try:
                await asyncio.wait_for(self._queue.put(event), timeout=self.enqueue_timeout_s)
                self._enqueue_times.append(time.monotonic())
                self._mem_pending += 1
            except TimeoutError:
                self.stats.dropped += 1
                self.stats.enqueued += 1
                _log.error("litellm-jobs: buffer full for %.1fs, dropped %s", self.enqueue_timeout_s, event.event_id)
                self._report()
                return
        self.stats.enqueued += 1

    async def flush(self) -> None:
        """Return once every event put before this call has been written (or given up on).

        With a journal: once the journal is empty too (its entries may be any replica's).
        """
        await self._queue.join()
        if self.journal is None:
            return
        # Other replicas' readers drain it too, so there is no local event to wait on: poll Redis.
        backlog, _ = await self.journal.backlog()
        while backlog:
            await asyncio.sleep(0.02)
            backlog, _ = await self.journal.backlog()

    async def settle(self, timeout_s: float) -> bool:
        """Wait (at most ``timeout_s``) until nothing this process holds is unwritten: the in-memory
        buffer is empty and no batch read from the journal is still being written. True if so.

        A rebuild of a Redis that lost its data waits for this before it reads PostgreSQL.
        """
        deadline = time.monotonic() + timeout_s
        while self._mem_pending or self._journal_writing:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    def _journal_failed(self, exc: Exception) -> None:
        self.stats.journal_errors += 1
        if time.monotonic() >= self._journal_down_until:
            _log.warning("litellm-jobs: the journal is unavailable (%r); buffering in memory", exc)
        self._journal_down_until = time.monotonic() + self.journal_retry_s

    async def aclose(self, timeout_s: float = 30.0) -> None:
        """Write what is buffered (for at most ``timeout_s``), then stop the tasks.

        The journal's reader stops after its current batch: what it has not written stays in the
        journal, for this replica's successor or another replica.
        """
        self._closing = True
        self._give_up_at = time.monotonic() + timeout_s
        for reader in self._reading:
            reader.cancel()  # only waiting for new entries: nothing in hand
        if self._journal_task is not None and not self._journal_task.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._journal_task), timeout=timeout_s)
            except TimeoutError:
                self._journal_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._journal_task
        self._journal_task = None
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
            self._watch_task = None
        if self._task is not None and not self._task.done():
            try:
                await asyncio.wait_for(self._queue.join(), timeout=timeout_s)  # the journal keeps its own
            except TimeoutError:
                _log.error("litellm-jobs: shutdown flush timed out with %d events unwritten", self.depth)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            if self._queue.qsize() < self.batch_size - 1 and not self._closing:
                # a linger, or at least the answer whose record this is leaves before the batch's work
                await asyncio.sleep(self.linger_s or ANSWER_FIRST_S)
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
                self._mem_pending -= len(batch)
                for _ in batch:
                    self._queue.task_done()
                self._report()

    async def _run_journals(self) -> None:
        """One reader per stream of the journal (its shards): each reads, writes and acknowledges its own."""
        assert self.journal is not None
        loop = asyncio.get_running_loop()
        readers = [
            loop.create_task(self._run_journal(shard), name="litellm-jobs-journal-reader")
            for shard in self.journal.shards
        ]
        # A reader cancelled at shutdown while it waited is done; the others end after their batch.
        await asyncio.gather(*readers, return_exceptions=True)

    async def _run_journal(self, journal: RedisJournal) -> None:
        """Read one stream of the journal (what dead replicas left pending first), write, then acknowledge.

        A retiring stream (an older key layout's) is read until it is empty, then deleted.
        """
        delay = 0.05
        claim_every = max(0.5, journal.claim_idle_ms / 2000)
        next_claim = 0.0
        set_up = False
        #: Entries written to PostgreSQL, acknowledged in the same round trip as the next read.
        written: list[str] = []
        while not self._closing:
            try:
                if not set_up:
                    await journal.setup()
                    set_up = True
                    await journal.forget_idle_consumers()
                entries: list[tuple[str, dict[str, str]]] = []
                if time.monotonic() >= next_claim:
                    if written:
                        await journal.ack(written)
                        written = []
                    entries = await journal.claim(self.batch_size)
                    if journal.claim_scan_done:
                        next_claim = time.monotonic() + claim_every
                if not entries:
                    if self._closing:
                        break
                    entries = await self._wait_for_entries(journal, written)
                    written = []
                    if entries and len(entries) < self.batch_size and self.linger_s:
                        await asyncio.sleep(self.linger_s)
                        entries += await journal.read(self.batch_size - len(entries), block_ms=None)
                    elif entries:
                        # What woke this read is a call's record, whose answer is waiting for the same
                        # Redis round trip: let the answer leave before this batch's work runs.
                        await asyncio.sleep(ANSWER_FIRST_S)
            except Exception as exc:
                self.stats.journal_errors += 1
                _log.warning("litellm-jobs: cannot read the journal (%r); retrying in %.2fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max_s)
                continue
            delay = 0.05
            if not entries:
                if journal.retiring and journal.claim_scan_done and not written and await self._drained(journal):
                    return
                continue
            ids: list[str] = []
            batch: list[Item] = []
            for entry_id, fields in entries:
                try:
                    batch.extend(decode_entry(fields))
                    ids.append(entry_id)
                except (ValueError, KeyError, TypeError):
                    # Left pending (never acknowledged): visible in XPENDING, and never silently lost.
                    self.stats.unreadable += 1
                    _log.error("litellm-jobs: journal entry %s cannot be read: %r", entry_id, fields)
            self._journal_writing += 1
            try:
                if not await self._write(batch, journaled=True):
                    continue  # shutting down mid-outage: the entries stay in the journal
            finally:
                self._journal_writing -= 1
            written = ids
            self._report()
        await self._ack(journal, written)

    async def _wait_for_entries(self, journal: RedisJournal, written: list[str]) -> list[tuple[str, dict[str, str]]]:
        """New entries (acknowledging ``written`` in the same round trip), waiting for them up to
        :data:`JOURNAL_BLOCK_MS`: an idle replica asks Redis every 2 s, not twice a second."""
        task = asyncio.current_task()
        assert task is not None
        self._reading.add(task)
        try:
            return await journal.read(self.batch_size, block_ms=JOURNAL_BLOCK_MS, ack=written)
        finally:
            self._reading.discard(task)

    async def _drained(self, journal: RedisJournal) -> bool:
        """A retiring stream is empty (every entry written and acknowledged): delete it. False if not."""
        try:
            if (await journal.backlog())[0]:
                return False
            await journal.client.delete(journal.stream)
        except Exception:
            return False
        _log.info("litellm-jobs: the retired journal stream %s is drained and deleted", journal.stream)
        return True

    async def _watch_journal(self) -> None:
        """Tell the journal observer (the Prometheus gauges) the backlog every few seconds, outages included."""
        assert self.journal is not None
        while True:
            if self.journal_observer is not None:
                try:
                    self.journal_observer(*await self.journal.backlog())
                except StoreUnavailable:
                    pass
                except Exception:
                    _log.exception("litellm-jobs: the journal's observer failed")
            await asyncio.sleep(JOURNAL_GAUGE_INTERVAL_S)

    async def _ack(self, journal: RedisJournal, ids: list[str]) -> None:
        if not ids:
            return
        delay = 0.05
        for _ in range(20):
            try:
                await journal.ack(ids)
                return
            except Exception as exc:
                self.stats.journal_errors += 1
                if self._closing:
                    break
                _log.warning("litellm-jobs: cannot acknowledge journal entries (%r); retrying", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max_s)
        # Unacknowledged entries are claimed and written again later: a duplicate counts once.
        _log.warning("litellm-jobs: %d journal entries left unacknowledged (they will be rewritten)", len(ids))

    def _report(self) -> None:
        """Tell the observer (the Prometheus series); never let it stop the writer."""
        if self.observer is None:
            return
        try:
            self.observer(self.stats, self.depth)
        except Exception:
            _log.exception("litellm-jobs: the writer's observer failed")

    async def _write(self, batch: list[Item], *, journaled: bool = False) -> bool:
        """Write a batch, retrying while the store is unavailable. False: given up at shutdown."""
        assert self.sink is not None
        delay = 0.05
        while True:
            try:
                new = await self.sink.write_batch(batch)
            except StoreUnavailable as exc:
                # Transient: keep the batch and retry; the buffer absorbs new events meanwhile.
                self.stats.store_errors += 1
                if self._give_up_at is not None and time.monotonic() >= self._give_up_at:
                    if not journaled:
                        self._drop(batch, f"store unavailable at shutdown: {exc}")
                    return False
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
                    return True
                for event in batch:
                    if not await self._write([event], journaled=journaled):
                        return False
                return True
            self.stats.batches += 1
            self.last_written_at = time.monotonic()
            self.stats.written += new
            self.stats.duplicates += len(batch) - new
            return True

    def _drop(self, batch: Sequence[Item], why: str) -> None:
        self.stats.dropped += len(batch)
        _log.error(
            "litellm-jobs: dropped %d events (%s): %s", len(batch), why, ", ".join(e.event_id for e in batch[:10])
        )
