"""PostgresStore against a real PostgreSQL: idempotency, fallbacks, aggregates, concurrency."""

from __future__ import annotations

import asyncio
import random
from decimal import Decimal

import pytest

from litellm_jobs_plugin.models import CallStatus, JobStatus
from litellm_jobs_plugin.store.migrations import MigrationError, load_migrations
from litellm_jobs_plugin.store.postgres import PostgresStore
from tests.conftest import query
from tests.support.events import context, event


def job_matches_call_sums(url: str) -> None:
    rows = query(
        url,
        """
        SELECT j.team_id, j.job_id, j.total_calls, j.successful_calls, j.failed_calls, j.prompt_tokens,
               j.completion_tokens, j.total_cost_usd,
               count(c.call_id) AS n, count(c.call_id) FILTER (WHERE c.status = 'success') AS ok,
               count(c.call_id) FILTER (WHERE c.status = 'failure') AS bad,
               coalesce(sum(c.prompt_tokens), 0) AS p, coalesce(sum(c.completion_tokens), 0) AS c,
               coalesce(sum(c.cost_usd), 0) AS cost
        FROM jobs j LEFT JOIN calls c ON c.team_id = j.team_id AND c.job_id = j.job_id
        GROUP BY j.team_id, j.job_id""",
    )
    assert rows, "no jobs"
    for r in rows:
        assert (r["total_calls"], r["successful_calls"], r["failed_calls"]) == (r["n"], r["ok"], r["bad"]), r
        assert (r["prompt_tokens"], r["completion_tokens"]) == (r["p"], r["c"]), r
        assert r["total_cost_usd"] == r["cost"], r


async def test_replaying_events_changes_nothing(store: PostgresStore, database_url: str) -> None:
    batch = [event(cost="0.0010"), event(cost="0.0025"), event(status=CallStatus.FAILURE)]
    assert await store.write_events(batch) == 3
    before = query(database_url, "SELECT * FROM jobs")
    calls_before = query(database_url, "SELECT * FROM calls ORDER BY call_id")
    assert await store.write_events(batch) == 0
    assert await store.write_events(list(reversed(batch))) == 0
    assert query(database_url, "SELECT * FROM jobs") == before
    assert query(database_url, "SELECT * FROM calls ORDER BY call_id") == calls_before
    job = await store.get_job("team-a", "job-1")
    assert job is not None
    assert (job.total_calls, job.successful_calls, job.failed_calls) == (3, 2, 1)
    assert job.total_cost_usd == Decimal("0.0035")
    assert job.status is JobStatus.IN_PROGRESS


async def test_fallback_success_wins_in_either_order(store: PostgresStore, database_url: str) -> None:
    for order in ("failure_first", "success_first"):
        ctx = context(job_id=f"fallback-{order}")
        failed = event("call-" + order, status=CallStatus.FAILURE, ctx=ctx, model="openai/gpt-4o-mini")
        served = event(
            "call-" + order,
            ctx=ctx,
            cost="0.0042",
            model="openai/gpt-4o",
            model_group="ChatAgent-fallback",
            offset_s=0.3,
        )
        for e in [failed, served] if order == "failure_first" else [served, failed]:
            await store.write_events([e])  # separate batches, as events of one call may arrive
        job = await store.get_job("team-a", ctx.job_id or "")
        assert job is not None
        assert (job.total_calls, job.successful_calls, job.failed_calls) == (1, 1, 0), order
        assert job.total_cost_usd == Decimal("0.0042")
        assert job.models_used == ["openai/gpt-4o"]
        (call,) = await store.list_calls("team-a", ctx.job_id or "")
        assert call.status is CallStatus.SUCCESS
        assert (call.model, call.model_group, call.requested_model) == (
            "openai/gpt-4o",
            "ChatAgent-fallback",
            "ChatAgent",
        )
        assert (call.attempts, call.failed_attempts) == (2, 1)
    job_matches_call_sums(database_url)


async def test_failed_call_is_recorded_with_its_error(store: PostgresStore) -> None:
    ctx = context(job_id="broken")
    await store.write_events([event("c1", status=CallStatus.FAILURE, ctx=ctx, attempt="x")])
    (call,) = await store.list_calls("team-a", "broken")
    assert call.status is CallStatus.FAILURE
    assert (call.error_type, call.error_code, call.cost_usd) == ("InternalServerError", "500", Decimal(0))
    job = await store.get_job("team-a", "broken")
    assert job is not None
    assert (job.total_calls, job.failed_calls) == (1, 1)


async def test_untagged_allowed_calls_have_no_job(store: PostgresStore, database_url: str) -> None:
    await store.write_events([event("free", ctx=context(job_id=None))])
    assert query(database_url, "SELECT job_id FROM calls WHERE call_id = 'free'") == [{"job_id": None}]
    assert query(database_url, "SELECT count(*) AS n FROM jobs") == [{"n": 0}]


async def test_concurrent_writers_of_the_same_jobs_keep_exact_aggregates(database_url: str) -> None:
    stores = [PostgresStore(database_url, max_size=4) for _ in range(3)]
    for s in stores:
        await s.open()
    try:
        rng = random.Random(7)
        events = []
        for i in range(600):
            ctx = context(team_id=f"team-{i % 3}", job_id=f"job-{rng.randrange(12)}")
            status = CallStatus.SUCCESS if rng.random() < 0.8 else CallStatus.FAILURE
            events.append(
                event(
                    f"c{i}",
                    ctx=ctx,
                    status=status,
                    cost=f"0.{rng.randrange(1, 99999):05d}",
                    prompt=rng.randrange(1, 50),
                    completion=rng.randrange(1, 50),
                )
            )
        # Every event is delivered twice, by different writers, in batches of random size.
        deliveries = events + rng.sample(events, len(events))
        chunks = []
        while deliveries:
            n = rng.randrange(1, 40)
            chunks.append(deliveries[:n])
            deliveries = deliveries[n:]

        async def writer(k: int) -> int:
            return sum([await stores[k].write_events(c) for c in chunks[k::3]])

        written = sum(await asyncio.gather(*(writer(k) for k in range(3))))
        assert written == 600
        job_matches_call_sums(database_url)
        total = query(database_url, "SELECT sum(total_cost_usd) AS s, sum(total_calls) AS n FROM jobs")[0]
        assert total["n"] == 600
        assert total["s"] == sum((e.cost_usd for e in events), Decimal(0))
    finally:
        for s in stores:
            await s.close()


async def test_migrations_are_safe_to_run_concurrently(database_url: str) -> None:
    stores = [PostgresStore(database_url) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        applied = [r["version"] for r in query(database_url, "SELECT version FROM schema_migrations ORDER BY 1")]
        assert applied == [m.version for m in load_migrations()]
        assert applied[:3] == [1, 2, 3]
        assert await asyncio.gather(*(s.migrate() for s in stores)) == [[], [], [], []]
    finally:
        for s in stores:
            await s.close()


async def test_an_edited_applied_migration_is_refused(store: PostgresStore, database_url: str) -> None:
    query(database_url, "UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1")
    with pytest.raises(MigrationError, match="immutable"):
        await store.migrate()


async def test_a_call_id_reused_by_another_team_touches_nothing_of_the_first(store: PostgresStore) -> None:
    # LiteLLM accepts a client-chosen x-litellm-call-id: calls are keyed by team and call id.
    mine = event("chosen-id", ctx=context(team_id="team-a", job_id="a-job"), cost="0.5")
    theirs = event("chosen-id", ctx=context(team_id="team-b", job_id="b-job"), status=CallStatus.FAILURE)
    assert await store.write_events([mine]) == 1
    assert await store.write_events([theirs]) == 1
    (a,) = await store.list_calls("team-a", "a-job")
    (b,) = await store.list_calls("team-b", "b-job")
    assert (a.status, a.cost_usd, a.attempts) == (CallStatus.SUCCESS, Decimal("0.5"), 1)
    assert (b.status, b.attempts) == (CallStatus.FAILURE, 1)
    job_a = await store.get_job("team-a", "a-job")
    assert job_a is not None
    assert (job_a.total_calls, job_a.failed_calls, job_a.total_cost_usd) == (1, 0, Decimal("0.5"))


async def test_aggregates_moved_by_each_batch_equal_a_recomputation_from_the_call_rows(store: PostgresStore) -> None:
    """record_batch moves a job's aggregates by the calls a batch adds, and recomputes a job one of
    whose call rows changes (a later attempt of a call): whatever the batches, the result is what
    reconcile recomputes from the rows."""
    from litellm_jobs_plugin.reconcile import find_drift

    rng = random.Random(8)
    models = ["openai/gpt-4o-mini", "openai/gpt-4o", "anthropic/claude", None]
    written: list[object] = []
    for round_ in range(30):
        batch = []
        for _ in range(rng.randint(1, 6)):
            ctx = context(job_id=f"job-{rng.randint(1, 4)}")
            call = f"call-{rng.randint(1, 40)}"  # calls recur: later attempts change existing rows
            status = rng.choice([CallStatus.SUCCESS, CallStatus.FAILURE])
            batch.append(
                event(
                    call,
                    ctx=ctx,
                    status=status,
                    cost=f"0.00{rng.randint(1, 999)}",
                    model=rng.choice(models),  # type: ignore[arg-type]
                    offset_s=rng.uniform(-100, 100),
                    attempt=f"{round_}-{rng.randint(1, 3)}",
                )
            )
        if written and rng.random() < 0.3:
            batch.append(rng.choice(written))  # a replay
        await store.write_batch(batch)  # type: ignore[arg-type]
        written += batch
        report = await find_drift(store)
        assert report.clean, (round_, report.drifts)
    job = await store.get_job("team-a", "job-1")
    assert job is not None
    assert job.total_calls > 3
    assert len(job.models_used) > 1


async def test_a_job_opened_by_its_hold_keeps_the_metadata_of_its_first_call(store: PostgresStore) -> None:
    """In process and with Redis the hold opens the job row before the call is logged; the first
    call that carries job_metadata sets it, and later ones do not replace it."""
    from litellm_jobs_plugin.models import LedgerEntry, LedgerKind, ledger_key

    hold = LedgerEntry("team-a", LedgerKind.HOLD, Decimal(1), ledger_key(LedgerKind.HOLD, "team-a", "meta"), "meta")
    await store.write_batch([hold])
    job = await store.get_job("team-a", "meta")
    assert job is not None
    assert job.metadata == {}
    await store.write_batch([event(ctx=context(job_id="meta", job_metadata={"customer": "acme", "n": 1}))])
    await store.write_batch([event(ctx=context(job_id="meta", job_metadata={"customer": "other"}))])
    job = await store.get_job("team-a", "meta")
    assert job is not None
    assert job.metadata == {"customer": "acme", "n": 1}
    assert job.total_calls == 2


async def test_the_writers_connection_survives_its_backend_being_terminated(
    store: PostgresStore, database_url: str
) -> None:
    """The writer's own connection (asyncpg) killed under it: the batch is kept and written on a new
    connection, never dropped as if it were the batch's fault (a PostgreSQL restart does this)."""
    from litellm_jobs_plugin.writer import Writer

    writer = Writer(store)
    writer.start()
    try:
        await writer.put(event("before"))
        await asyncio.wait_for(writer.flush(), timeout=30)
        killed = query(
            database_url,
            "SELECT pg_terminate_backend(pid) AS ok FROM pg_stat_activity "
            "WHERE application_name = 'litellm-jobs-writer' AND datname = current_database()",
        )
        assert [r["ok"] for r in killed] == [True]
        for n in range(5):
            await writer.put(event(f"after-{n}"))
        await asyncio.wait_for(writer.flush(), timeout=30)
        assert writer.stats.dropped == 0
        job = await store.get_job("team-a", "job-1")
        assert job is not None
        assert job.total_calls == 6
    finally:
        await writer.aclose()
