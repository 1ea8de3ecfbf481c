"""Reconciliation against a real PostgreSQL: drift written by hand is found exactly, and fixed."""

from __future__ import annotations

import asyncio
import random
from decimal import Decimal
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from litellm_jobs_plugin.errors import StoreUnavailable
from litellm_jobs_plugin.metrics import Metrics
from litellm_jobs_plugin.models import CallStatus, LedgerEntry, LedgerKind, ledger_key
from litellm_jobs_plugin.reconcile import (
    RECONCILE_LOCK_KEY,
    DriftKind,
    Report,
    check_once,
    drift_check_forever,
    find_drift,
    fix_drift,
)
from litellm_jobs_plugin.store.postgres import PostgresStore
from tests.conftest import query
from tests.support.events import context, event

#: Columns a fix may move although their values are right (bookkeeping, not totals).
BOOKKEEPING = {"updated_at", "last_activity_at"}


def hold(team: str, job: str, amount: str) -> LedgerEntry:
    return LedgerEntry(team, LedgerKind.HOLD, Decimal(amount), ledger_key(LedgerKind.HOLD, team, job), job_id=job)


def close(kind: LedgerKind, team: str, job: str, amount: str) -> LedgerEntry:
    return LedgerEntry(team, kind, Decimal(amount), ledger_key(kind, team, job), job_id=job)


async def seed(store: PostgresStore) -> None:
    """Two teams' credits, jobs and calls, written the way the plugin writes them."""
    await store.grant("team-a", Decimal(10), kind="grant", idempotency_key="g1", note=None)
    await store.grant("team-b", Decimal(5), kind="grant", idempotency_key="g2", note=None)
    await store.grant("team-b", Decimal("-0.5"), kind="adjust", idempotency_key="g3", note=None)
    # Holds first (the job's opening), then the calls, then the closing entry: the writer's order.
    await store.write_batch(
        [hold("team-a", "job-1", "1"), hold("team-a", "job-2", "2"), hold("team-b", "job-3", "1.5")]
    )
    await store.write_batch([hold("team-a", "job-4", "1")])  # opened by the route, no call yet
    a1, a2, b3 = (context(job_id="job-1"), context(job_id="job-2"), context(team_id="team-b", job_id="job-3"))
    await store.write_events(
        [
            event("c1", ctx=a1, cost="0.0010", prompt=11, completion=7),
            event("c2", ctx=a1, cost="0.0025", model="openai/gpt-4o", offset_s=1),
            event("c3", ctx=a1, status=CallStatus.FAILURE, offset_s=2),
            event("c4", ctx=a2, cost="0.000000000000000000000000000001"),
            event("c5", ctx=b3, cost="1.5"),
        ]
    )
    await store.write_batch(
        [close(LedgerKind.CAPTURE, "team-a", "job-2", "2"), close(LedgerKind.RELEASE, "team-b", "job-3", "1.5")]
    )


def snapshot(url: str) -> dict[str, list[dict[str, Any]]]:
    jobs = query(url, "SELECT * FROM jobs ORDER BY team_id, job_id")
    accounts = query(url, "SELECT * FROM credit_accounts ORDER BY team_id")
    return {
        "jobs": [{k: v for k, v in r.items() if k not in BOOKKEEPING} for r in jobs],
        "accounts": [{k: v for k, v in r.items() if k != "updated_at"} for r in accounts],
    }


def corrupt(url: str) -> None:
    query(url, "UPDATE jobs SET total_cost_usd = total_cost_usd + 0.5 WHERE team_id = 'team-a' AND job_id = 'job-1'")
    query(url, "UPDATE jobs SET total_calls = 7, failed_calls = 3 WHERE team_id = 'team-a' AND job_id = 'job-2'")
    query(url, "UPDATE jobs SET total_calls = 2 WHERE team_id = 'team-a' AND job_id = 'job-4'")  # has no calls
    query(url, "UPDATE jobs SET credits_held = 0 WHERE team_id = 'team-a' AND job_id = 'job-1'")
    query(url, "UPDATE credit_accounts SET credits_held = credits_held + 2 WHERE team_id = 'team-b'")


def found(report: Report) -> dict[tuple[str, str, str | None], dict[str, tuple[Any, Any]]]:
    return {
        (d.kind.value, d.team_id, d.job_id): {f.name: (f.stored, f.expected) for f in d.fields} for d in report.drifts
    }


async def test_a_clean_database_has_no_drift(store: PostgresStore) -> None:
    empty = await find_drift(store)
    assert empty.clean
    assert empty.counts == dict.fromkeys(DriftKind, 0)
    assert empty.drifts == ()
    await seed(store)
    seeded = await find_drift(store)
    assert seeded.clean, seeded.drifts
    # The seed is not trivial: every kind of cached value is non-zero somewhere.
    job = await store.get_job("team-a", "job-1")
    assert job is not None
    assert (job.total_calls, job.failed_calls, job.total_cost_usd, job.credits_held) == (
        3,
        1,
        Decimal("0.0035"),
        Decimal(1),
    )
    assert (await store.balance("team-b")).credits_allocated == Decimal("4.5")


async def test_drift_is_reported_with_stored_and_expected_values(store: PostgresStore, database_url: str) -> None:
    await seed(store)
    corrupt(database_url)
    report = await find_drift(store)
    assert not report.clean
    assert report.counts == {DriftKind.JOB_AGGREGATES: 3, DriftKind.JOB_CREDITS: 1, DriftKind.TEAM_BALANCES: 1}
    assert found(report) == {
        ("job_aggregates", "team-a", "job-1"): {"total_cost_usd": (Decimal("0.5035"), Decimal("0.0035"))},
        ("job_aggregates", "team-a", "job-2"): {"total_calls": (7, 1), "failed_calls": (3, 0)},
        ("job_aggregates", "team-a", "job-4"): {"total_calls": (2, 0)},
        ("job_credits", "team-a", "job-1"): {"credits_held": (Decimal(0), Decimal(1))},
        ("team_balances", "team-b", None): {"credits_held": (Decimal(2), Decimal(0))},
    }
    money = report.drifts[0].fields[0]
    assert isinstance(money.stored, Decimal)  # never float
    assert isinstance(money.expected, Decimal)
    as_json = report.to_json()
    assert as_json["clean"] is False
    assert as_json["drifts"][0]["fields"]["total_cost_usd"] == {"stored": "0.5035", "expected": "0.0035"}


async def test_fix_restores_the_derived_values_and_is_idempotent(store: PostgresStore, database_url: str) -> None:
    await seed(store)
    before = snapshot(database_url)
    corrupt(database_url)
    report = await fix_drift(store)
    assert report.counts == {DriftKind.JOB_AGGREGATES: 3, DriftKind.JOB_CREDITS: 1, DriftKind.TEAM_BALANCES: 1}
    assert report.fixed == report.counts
    assert report.remaining == dict.fromkeys(DriftKind, 0)
    assert report.clean
    assert (await find_drift(store)).clean
    assert snapshot(database_url) == before
    balance = await store.balance("team-b")
    assert (balance.credits_held, balance.credits_remaining) == (Decimal(0), Decimal("4.5"))

    # Again: nothing to do, nothing written (not even updated_at).
    raw = query(database_url, "SELECT * FROM jobs ORDER BY team_id, job_id")
    raw_accounts = query(database_url, "SELECT * FROM credit_accounts ORDER BY team_id")
    again = await fix_drift(store)
    assert again.counts == again.fixed == again.remaining == dict.fromkeys(DriftKind, 0)
    assert query(database_url, "SELECT * FROM jobs ORDER BY team_id, job_id") == raw
    assert query(database_url, "SELECT * FROM credit_accounts ORDER BY team_id") == raw_accounts


async def test_one_team_is_checked_and_fixed_alone(store: PostgresStore, database_url: str) -> None:
    await seed(store)
    corrupt(database_url)
    only_b = await find_drift(store, team_id="team-b")
    assert set(found(only_b)) == {("team_balances", "team-b", None)}
    fixed = await fix_drift(store, team_id="team-a")
    assert fixed.fixed == {DriftKind.JOB_AGGREGATES: 3, DriftKind.JOB_CREDITS: 1, DriftKind.TEAM_BALANCES: 0}
    assert fixed.clean
    left = await find_drift(store)
    assert left.counts == {DriftKind.JOB_AGGREGATES: 0, DriftKind.JOB_CREDITS: 0, DriftKind.TEAM_BALANCES: 1}


async def test_a_missing_account_is_drift_and_is_recreated(store: PostgresStore, database_url: str) -> None:
    await seed(store)
    before = snapshot(database_url)
    query(database_url, "DELETE FROM credit_accounts WHERE team_id = 'team-b'")
    report = await find_drift(store)
    assert found(report) == {
        ("team_balances", "team-b", None): {
            "credits_allocated": (None, Decimal("4.5")),
            "credits_charged": (None, Decimal(0)),
            "credits_held": (None, Decimal(0)),
        }
    }
    assert (await fix_drift(store)).clean
    assert snapshot(database_url) == before


async def test_many_drifting_rows_are_counted_listed_up_to_the_limit_and_fixed_in_batches(
    store: PostgresStore, database_url: str
) -> None:
    await store.write_events([event(f"c{i}", ctx=context(job_id=f"job-{i:02d}")) for i in range(12)])
    before = snapshot(database_url)
    query(database_url, "UPDATE jobs SET prompt_tokens = prompt_tokens + 1, models_used = '{}'")
    report = await find_drift(store, limit=5)
    assert report.counts[DriftKind.JOB_AGGREGATES] == 12
    assert [d.job_id for d in report.drifts] == [f"job-{i:02d}" for i in range(5)]
    assert report.drifts[0].field_named("models_used") is not None
    fixed = await fix_drift(store, limit=3, batch_size=5)
    assert fixed.fixed is not None
    assert fixed.fixed[DriftKind.JOB_AGGREGATES] == 12
    assert len(fixed.drifts) == 3
    assert fixed.clean
    assert snapshot(database_url) == before


#: Locks the jobs in the writers' order first (a plain UPDATE of every row could deadlock with them).
CORRUPT_ALL_JOBS = """
    WITH locked AS (SELECT team_id, job_id FROM jobs ORDER BY team_id, job_id FOR UPDATE)
    UPDATE jobs j SET total_calls = j.total_calls + 1, credits_held = 0
    FROM locked l WHERE j.team_id = l.team_id AND j.job_id = l.job_id"""


async def test_fixing_while_writers_write_leaves_exact_totals(database_url: str) -> None:
    """fix_drift takes the writers' locks in their order: no deadlock, no lost update."""
    stores = [PostgresStore(database_url, max_size=4) for _ in range(3)]
    for s in stores:
        await s.open()
    try:
        rng = random.Random(11)
        await stores[0].grant("team-a", Decimal(1000), kind="grant", idempotency_key="g", note=None)
        jobs = [f"job-{i}" for i in range(8)]
        await stores[0].write_batch([hold("team-a", j, "1") for j in jobs])

        async def write(s: PostgresStore, n: int) -> None:
            for i in range(n):
                batch = [
                    event(
                        f"w{id(s)}-{i}-{k}", ctx=context(job_id=rng.choice(jobs)), cost=f"0.{rng.randrange(1, 999):03d}"
                    )
                    for k in range(5)
                ]
                await s.write_batch(batch)

        async def corrupt_and_fix(s: PostgresStore) -> None:
            for _ in range(10):
                # In a thread: the UPDATEs wait for the writers' row locks, which this loop must release.
                await asyncio.to_thread(query, database_url, CORRUPT_ALL_JOBS)
                await asyncio.to_thread(
                    query, database_url, "UPDATE credit_accounts SET credits_held = credits_held + 1"
                )
                await fix_drift(s, batch_size=3)

        await asyncio.gather(write(stores[0], 30), write(stores[1], 30), corrupt_and_fix(stores[2]))
        await fix_drift(stores[2])  # the last corruption may have landed after the last fix
        final = await find_drift(stores[2])
        assert final.clean, final.drifts
        (row,) = query(database_url, "SELECT sum(total_calls) AS n FROM jobs")
        assert row["n"] == 300
        assert (await stores[0].balance("team-a")).credits_held == Decimal(8)
    finally:
        for s in stores:
            await s.close()


async def test_the_check_sets_the_gauges(store: PostgresStore, database_url: str) -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    await seed(store)
    corrupt(database_url)
    report = await check_once(store)
    assert report is not None
    metrics.drift_checked(report)

    def gauge(kind: str) -> float | None:
        return registry.get_sample_value("litellm_jobs_reconcile_drift", {"kind": kind})

    assert (gauge("job_aggregates"), gauge("job_credits"), gauge("team_balances")) == (3, 1, 1)
    stamp = registry.get_sample_value("litellm_jobs_reconcile_last_check_timestamp_seconds")
    assert stamp == report.checked_at.timestamp()
    # A one-team check says nothing about the others: the gauges keep the last full check's values.
    metrics.drift_checked(await find_drift(store, team_id="team-c"))
    assert gauge("job_aggregates") == 3
    await fix_drift(store)
    clean = await check_once(store)
    assert clean is not None
    metrics.drift_checked(clean)
    assert (gauge("job_aggregates"), gauge("job_credits"), gauge("team_balances")) == (0, 0, 0)


async def test_one_check_at_a_time(store: PostgresStore) -> None:
    async with store.transaction() as conn:
        row = await store.fetch_one("reconcile_try_lock", {"key": RECONCILE_LOCK_KEY}, conn)
        assert row == {"locked": True}
        assert await check_once(store) is None  # another "replica" is checking: skip this round
    assert await check_once(store) is not None  # the lock went with the transaction


class FlakyStore:
    """The store, whose first transaction fails as if PostgreSQL were away."""

    def __init__(self, store: PostgresStore) -> None:
        self.store = store
        self.failures = 1

    def transaction(self) -> Any:
        if self.failures:
            self.failures -= 1
            raise StoreUnavailable("down")
        return self.store.transaction()

    async def fetch_all(self, *args: Any) -> Any:
        return await self.store.fetch_all(*args)

    async def fetch_one(self, *args: Any) -> Any:
        return await self.store.fetch_one(*args)


async def test_the_check_loop_survives_a_failure_and_sets_the_gauges(store: PostgresStore, database_url: str) -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    await seed(store)
    query(database_url, "UPDATE credit_accounts SET credits_charged = 1 WHERE team_id = 'team-a'")
    task = asyncio.create_task(drift_check_forever(FlakyStore(store), metrics, 0.05))  # type: ignore[arg-type]
    try:
        for _ in range(200):
            if registry.get_sample_value("litellm_jobs_reconcile_drift", {"kind": "team_balances"}) is not None:
                break
            await asyncio.sleep(0.02)
        assert registry.get_sample_value("litellm_jobs_reconcile_drift", {"kind": "team_balances"}) == 1
        assert registry.get_sample_value("litellm_jobs_reconcile_check_errors_total") == 1
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_the_check_loop_is_off_at_interval_zero(store: PostgresStore) -> None:
    metrics = Metrics(CollectorRegistry())
    await asyncio.wait_for(drift_check_forever(store, metrics, 0), timeout=1)
