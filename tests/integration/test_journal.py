"""The writer's journal on a real Redis and PostgreSQL: durable until committed, taken over when
its reader dies, bypassed (in memory) while Redis is unreachable."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis

from litellm_jobs_plugin.journal import RedisJournal, encode
from litellm_jobs_plugin.redis_channel import RedisChannel
from litellm_jobs_plugin.store.postgres import PostgresStore
from litellm_jobs_plugin.writer import Writer
from tests.conftest import query
from tests.support.events import event
from tests.support.services import free_port, wait_for_async


@pytest.fixture
async def redis_client(redis_server_url: str | None) -> AsyncIterator[aioredis.Redis]:
    if redis_server_url is None:
        pytest.skip("no Redis server")
    client = aioredis.Redis.from_url(redis_server_url)
    yield client
    await client.aclose()


ReaderChannels = Callable[[str], Callable[[], RedisChannel]] | None


@pytest.fixture(params=["redis-py", "channel"])
async def readers(request: pytest.FixtureRequest) -> AsyncIterator[ReaderChannels]:
    """How journals read: through redis-py's client, or each over a pipelined connection of its own
    (what Redis credits give the writer with a single Redis)."""
    if request.param == "redis-py":
        yield None
        return
    made: list[RedisChannel] = []

    def for_url(url: str) -> Callable[[], RedisChannel]:
        def make() -> RedisChannel:
            made.append(RedisChannel(url))
            return made[-1]

        return make

    yield for_url
    for channel in made:
        await channel.aclose()


def journal(
    client: aioredis.Redis, prefix: str, name: str, claim_idle_s: float = 30.0, readers: ReaderChannels = None
) -> RedisJournal:
    kwargs = client.connection_pool.connection_kwargs
    url = f"redis://{kwargs.get('host', '127.0.0.1')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"
    return RedisJournal(
        client,
        f"{prefix}:journal",
        consumer=name,
        claim_idle_s=claim_idle_s,
        reader_channel=None if readers is None else readers(url),
    )


def recorded(database_url: str) -> int:
    return int(query(database_url, "SELECT count(*) AS n FROM calls")[0]["n"])


def recorded_is(database_url: str, n: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await asyncio.to_thread(recorded, database_url) == n

    return check


async def test_two_writers_share_one_journal_and_write_each_event_once(
    store: PostgresStore, database_url: str, redis_client: aioredis.Redis, redis_prefix: str, readers: ReaderChannels
) -> None:
    writers = [
        Writer(store, journal=journal(redis_client, redis_prefix, f"w{n}", readers=readers), batch_size=20)
        for n in range(2)
    ]
    for w in writers:
        await w.journal.setup()  # type: ignore[union-attr]
        w.start()
    events = [event(f"shared-{i}") for i in range(300)]
    for i, e in enumerate(events + events[:50]):  # 50 replays
        await writers[i % 2].put(e)
    await asyncio.wait_for(writers[0].flush(), timeout=30)
    assert recorded(database_url) == 300
    assert sum(w.stats.journaled for w in writers) == 350
    assert sum(w.stats.written for w in writers) == 300
    assert sum(w.stats.duplicates for w in writers) == 50
    assert await redis_client.xlen(f"{redis_prefix}:journal") == 0
    for w in writers:
        await w.aclose()


async def test_entries_a_dead_reader_left_unacknowledged_are_taken_over(
    store: PostgresStore, database_url: str, redis_client: aioredis.Redis, redis_prefix: str, readers: ReaderChannels
) -> None:
    dead = journal(redis_client, redis_prefix, "dead", readers=readers)
    await dead.setup()
    for i in range(40):
        await dead.append(event(f"orphan-{i}"))
    assert len(await dead.read(100, block_ms=10)) == 40  # read, then the process "dies": never acked
    writer = Writer(store, journal=journal(redis_client, redis_prefix, "heir", claim_idle_s=0.3, readers=readers))
    writer.start()
    await wait_for_async(recorded_is(database_url, 40), within=30)
    await asyncio.wait_for(writer.flush(), timeout=30)
    pending = await redis_client.xpending(f"{redis_prefix}:journal", "writers")
    assert pending["pending"] == 0
    await writer.aclose()


async def test_an_unreadable_entry_is_left_pending_and_the_rest_is_written(
    store: PostgresStore, database_url: str, redis_client: aioredis.Redis, redis_prefix: str, readers: ReaderChannels
) -> None:
    stream = f"{redis_prefix}:journal"
    j = journal(redis_client, redis_prefix, "w", readers=readers)
    await j.setup()
    await redis_client.xadd(stream, {"v": "{not json"})
    await redis_client.xadd(stream, {"v": encode(event("readable"))})
    writer = Writer(store, journal=j)
    writer.start()
    await wait_for_async(recorded_is(database_url, 1), within=30)

    async def unreadable_seen() -> bool:
        return writer.stats.unreadable == 1

    await wait_for_async(unreadable_seen, within=30)
    assert await redis_client.xlen(stream) == 1  # kept for an operator, never silently dropped
    await writer.aclose()


async def test_with_redis_unreachable_events_go_to_memory_and_are_written(
    store: PostgresStore, database_url: str, readers: ReaderChannels
) -> None:
    unreachable = aioredis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5)
    writer = Writer(store, journal=journal(unreachable, "none", "w", readers=readers), journal_retry_s=60)
    writer.start()
    for i in range(10):
        await writer.put(event(f"fallback-{i}"))
    await wait_for_async(recorded_is(database_url, 10), within=30)
    assert writer.depth == 0
    assert writer.stats.journaled == 0
    assert writer.stats.journal_errors >= 1
    assert writer.stats.dropped == 0
    await writer.aclose()
    await unreachable.aclose()


async def test_records_put_together_are_journaled_in_order_and_written_once(
    store: PostgresStore, database_url: str, redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    """A single-call job's closure puts its hold and its capture together: one round trip, in order."""
    from decimal import Decimal

    from litellm_jobs_plugin.journal import decode
    from litellm_jobs_plugin.models import LedgerEntry, LedgerKind, ledger_key

    entries = [
        LedgerEntry("team-a", kind, Decimal(1), ledger_key(kind, "team-a", "together"), "together", "doc", True)
        for kind in (LedgerKind.HOLD, LedgerKind.CAPTURE)
    ]
    j = journal(redis_client, redis_prefix, "reader")
    await j.setup()
    await Writer(store, journal=j).put_many([event("together-call"), *entries])
    rows = await redis_client.xrange(f"{redis_prefix}:journal")
    assert [decode({k.decode(): v.decode() for k, v in f.items()}).event_id for _, f in rows] == [
        event("together-call").event_id,
        *(e.idempotency_key for e in entries),
    ]
    writer = Writer(store, journal=j)
    writer.start()
    await asyncio.wait_for(writer.flush(), timeout=30)
    ledger = query(database_url, "SELECT kind FROM credit_ledger WHERE job_id = 'together'")
    assert sorted(r["kind"] for r in ledger) == ["capture", "hold"]
    (job,) = query(database_url, "SELECT credits_held, credits_charged FROM jobs WHERE job_id = 'together'")
    assert (job["credits_held"], job["credits_charged"]) == (0, 1)
    assert recorded(database_url) == 1
    await writer.aclose()


async def test_a_call_of_an_open_job_is_journaled_with_its_cost_in_one_script(
    store: PostgresStore, database_url: str, redis_server_url: str | None, redis_prefix: str
) -> None:
    """With Redis credits the record and the job's cost update are one script (add_cost.lua):
    both happen, or neither; without them the caller adds the cost itself."""
    from decimal import Decimal

    from litellm_jobs_plugin.credits import CreditService, RedisCredits
    from litellm_jobs_plugin.models import CallContext
    from litellm_jobs_plugin.settings import Settings

    if redis_server_url is None:
        pytest.skip("no Redis server")
    backend = RedisCredits(redis_server_url, store, prefix=redis_prefix)
    writer = Writer(store, journal=backend.journal())
    await writer.journal.setup()  # type: ignore[union-attr]
    writer.start()
    await backend.load_accounts()
    credits = CreditService(Settings(), store, writer, backend)
    await credits.grant("team-a", Decimal(5), kind="grant", idempotency_key="g-cost")
    ctx = CallContext("team-a", "costly", "doc", False, "m", "h", "u", job_type_given=True)
    await credits.admit_call(ctx)
    calls = [event(f"costly-{i}", ctx=ctx, cost="0.25") for i in range(3)]
    for call in calls:
        assert await writer.put_call(call, "team-a", "costly") is True
    job_hash = backend.keys.job("team-a", "costly")
    assert Decimal((await backend.client.hget(job_hash, "cost")).decode()) == Decimal("0.75")
    await asyncio.wait_for(writer.flush(), timeout=30)
    (job,) = query(database_url, "SELECT total_calls, total_cost_usd FROM jobs WHERE job_id = 'costly'")
    assert (job["total_calls"], job["total_cost_usd"]) == (3, Decimal("0.75"))
    assert await backend.client.xlen(backend.keys.journal_for("team-a")) == 0  # acknowledged and deleted
    # A journal without Redis credits (a plain stream) records the call and leaves the cost to the caller.
    plain = Writer(store, journal=journal(backend.client, redis_prefix + "-plain", "w"))
    await plain.journal.setup()  # type: ignore[union-attr]
    assert await plain.put_call(event("plain-1", ctx=ctx), "team-a", "costly") is False
    assert await backend.client.xlen(f"{redis_prefix}-plain:journal") == 1
    assert Decimal((await backend.client.hget(job_hash, "cost")).decode()) == Decimal("0.75")
    await writer.aclose()
    await credits.aclose()


async def test_a_single_call_jobs_closure_and_its_record_are_journaled_by_the_closing_script(
    store: PostgresStore, database_url: str, redis_server_url: str | None, redis_prefix: str
) -> None:
    """close_job.lua appends the call's record and the closure's entries itself (one round trip):
    the writer's own append is not used, and PostgreSQL ends with the call, the capture and the closed row."""
    from decimal import Decimal

    from litellm_jobs_plugin.credits import CreditService, RedisCredits
    from litellm_jobs_plugin.models import CallContext, JobStatus
    from litellm_jobs_plugin.settings import Settings

    if redis_server_url is None:
        pytest.skip("no Redis server")
    backend = RedisCredits(redis_server_url, store, prefix=redis_prefix)
    writer = Writer(store, journal=backend.journal())
    await writer.journal.setup()  # type: ignore[union-attr]
    await backend.load_accounts()
    credits = CreditService(Settings(), store, writer, backend)
    await credits.grant("team-a", Decimal(5), kind="grant", idempotency_key="g-single")
    ctx = CallContext("team-a", "single-1", "doc", True, "m", "h", "u")
    await credits.admit_call(ctx)
    call = event("single-1", ctx=ctx)
    closure = await credits.close_job(
        "team-a", "single-1", JobStatus.COMPLETED, single_call=True, via_writer=True, records=(call,)
    )
    assert closure is not None
    assert not closure.repeated
    rows = await backend.client.xrange(backend.keys.journal_for("team-a"))
    assert [f.get(b"k", b"v").decode() for _, f in rows] == ["hold", "v", "close"]  # admission, record, closure
    assert writer.stats.journaled == 0  # nothing went through the writer's own append
    writer.start()
    await asyncio.wait_for(writer.flush(), timeout=30)
    (job,) = query(database_url, "SELECT status, credits_held, credits_charged FROM jobs WHERE job_id = 'single-1'")
    assert (job["status"], job["credits_held"], job["credits_charged"]) == ("completed", 0, 1)
    assert recorded(database_url) == 1
    assert (await credits.balance("team-a")).credits_remaining == Decimal(4)
    await writer.aclose()
    await credits.aclose()
