from __future__ import annotations

import asyncio
from collections.abc import Sequence

from litellm_jobs_plugin.errors import StoreUnavailable
from litellm_jobs_plugin.models import CallEvent
from litellm_jobs_plugin.writer import Writer
from tests.support.events import event
from tests.support.services import wait_for_async


class Sink:
    """Records batches; fails with StoreUnavailable while ``down`` is set."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.seen: set[str] = set()
        self.down = False
        self.attempts = 0

    async def write_batch(self, events: Sequence[CallEvent]) -> int:  # type: ignore[override]
        self.attempts += 1
        if self.down:
            raise StoreUnavailable("down")
        self.batches.append([e.event_id for e in events])
        new = {e.event_id for e in events} - self.seen
        self.seen |= new
        return len(new)


async def test_events_are_written_in_batches_and_replays_counted() -> None:
    sink = Sink()
    writer = Writer(sink, batch_size=10)
    events = [event(f"c{i}") for i in range(25)]
    for e in events + events[:5]:
        await writer.put(e)
    writer.start()
    await writer.flush()
    assert sink.seen == {e.event_id for e in events}
    assert all(len(b) <= 10 for b in sink.batches)
    assert len(sink.batches) >= 3
    assert (writer.stats.written, writer.stats.duplicates, writer.stats.dropped, writer.depth) == (25, 5, 0, 0)
    await writer.aclose()


async def test_a_store_outage_keeps_the_batch_until_it_is_back() -> None:
    sink = Sink()
    sink.down = True
    writer = Writer(sink, retry_max_s=0.05)
    writer.start()
    await writer.put(event("c1"))
    deadline = asyncio.get_running_loop().time() + 10
    while sink.attempts < 3:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)
    assert writer.depth == 1
    assert writer.stats.store_errors >= 3
    sink.down = False
    await asyncio.wait_for(writer.flush(), timeout=10)
    assert sink.seen == {event("c1").event_id}
    assert writer.stats.dropped == 0
    await writer.aclose()


async def test_a_full_buffer_waits_then_counts_a_drop() -> None:
    sink = Sink()
    writer = Writer(sink, max_size=2, enqueue_timeout_s=0.01)  # not started: nothing drains
    for i in range(3):
        await writer.put(event(f"c{i}"))
    assert writer.stats.dropped == 1
    assert writer.depth == 2
    writer.start()
    await writer.aclose()
    assert len(sink.seen) == 2


async def test_a_poison_event_is_isolated_from_its_batch() -> None:
    class Picky(Sink):
        async def write_batch(self, events: Sequence[CallEvent]) -> int:  # type: ignore[override]
            if any(e.call_id == "bad" for e in events):
                raise ValueError("numeric field overflow")
            return await super().write_batch(events)

    sink = Picky()
    writer = Writer(sink)
    for cid in ("a", "bad", "b"):
        await writer.put(event(cid))
    writer.start()
    await writer.flush()
    assert sink.seen == {event("a").event_id, event("b").event_id}
    assert writer.stats.dropped == 1
    await writer.aclose()


async def test_aclose_flushes_what_is_buffered() -> None:
    sink = Sink()
    writer = Writer(sink)
    writer.start()
    for i in range(100):
        await writer.put(event(f"c{i}"))
    await writer.aclose()
    assert len(sink.seen) == 100


async def test_the_oldest_unwritten_age_is_measured_from_enqueueing() -> None:
    sink = Sink()
    writer = Writer(sink)  # not started: the event waits
    await writer.put(event("old"))
    assert 0.0 <= writer.oldest_pending_age_s < 5.0
    assert writer.depth == 1
    writer.start()
    await writer.flush()
    assert (writer.depth, writer.oldest_pending_age_s) == (0, 0.0)
    await writer.aclose()


async def test_the_metrics_see_an_outage_while_it_lasts_and_a_broken_observer_stops_nothing() -> None:
    from prometheus_client import CollectorRegistry

    from litellm_jobs_plugin.metrics import Metrics

    registry = CollectorRegistry()
    metrics = Metrics(registry)
    sink = Sink()
    sink.down = True
    writer = Writer(sink, batch_size=10, retry_max_s=0.01, observer=metrics.writer_progress)
    for i in range(3):
        await writer.put(event(f"o{i}"))
    writer.start()

    async def errors_reported() -> bool:
        return (registry.get_sample_value("litellm_jobs_store_errors_total") or 0) >= 2

    await wait_for_async(errors_reported, within=5, what="store errors")  # reported while the store is down
    assert registry.get_sample_value("litellm_jobs_writer_buffer_depth") == 3

    def broken(*_: object) -> None:
        raise RuntimeError("observer bug")

    writer.observer = broken
    sink.down = False
    await asyncio.wait_for(writer.flush(), timeout=5)
    await writer.put(event("after"))
    await asyncio.wait_for(writer.flush(), timeout=5)
    assert any("after" in e for b in sink.batches for e in b)
    await writer.aclose()


def test_job_type_labels_are_bounded() -> None:
    from prometheus_client import CollectorRegistry

    from litellm_jobs_plugin.metrics import Metrics
    from litellm_jobs_plugin.models import JobStatus

    registry = CollectorRegistry()
    metrics = Metrics(registry, max_job_types=2, known_job_types=["priced"], team_labels=True)
    for job_type in ("a", "b", "c", "d", "priced"):
        metrics.job_started(job_type, "t")
    metrics.job_closed("z", "t", JobStatus.COMPLETED, charged=1, calls=2)  # type: ignore[arg-type]
    value = registry.get_sample_value
    assert value("litellm_jobs_started_total", {"job_type": "a", "team": "t"}) == 1
    assert value("litellm_jobs_started_total", {"job_type": "b", "team": "t"}) == 1
    assert value("litellm_jobs_started_total", {"job_type": "other", "team": "t"}) == 2
    assert value("litellm_jobs_started_total", {"job_type": "priced", "team": "t"}) == 1
    assert value("litellm_jobs_closed_total", {"job_type": "other", "team": "t", "status": "completed"}) == 1
