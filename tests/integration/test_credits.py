"""Credit rules against real PostgreSQL (and Redis), checked against a reference model."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from litellm_jobs_plugin import litellm_adapter as adapter
from litellm_jobs_plugin.credits import CreditService, PostgresCredits, RedisCredits
from litellm_jobs_plugin.credits.base import CreditBackend
from litellm_jobs_plugin.credits.local import Authority, LocalCredits, SharedPostgresCredits, choose_backend
from litellm_jobs_plugin.credits.policies import TeamPolicies
from litellm_jobs_plugin.errors import (
    FailureAllowanceExhausted,
    InsufficientCredits,
    InvalidJobMetadata,
    JobClosed,
    JobsError,
    UnknownJobType,
)
from litellm_jobs_plugin.metadata import parse_job_tag
from litellm_jobs_plugin.models import CallContext, CallStatus, JobStatus
from litellm_jobs_plugin.settings import Settings
from litellm_jobs_plugin.store.postgres import PostgresStore
from litellm_jobs_plugin.writer import Writer
from tests.conftest import REDIS_TEST_PREFIX, query
from tests.support.services import PostgresServer, wait_for_async

PRICES = {"cheap": Decimal(1), "big": Decimal(2)}
_run = itertools.count()


def ctx(team: str, job: str, job_type: str, single_call: bool = False) -> CallContext:
    return CallContext(
        team_id=team,
        job_id=job,
        job_type=job_type,
        single_call=single_call,
        requested_model="m",
        key_hash="h",
        user_id="u",
        job_type_given=True,
    )


#: Provider cost of failed and expired jobs a team may run up per window (USD).
ALLOWANCE = Decimal("0.25")
CALL_COSTS = (Decimal("0.05"), Decimal("0.1"))


@dataclass
class Model:
    """The reference: what the credit rules say should happen."""

    remaining: dict[str, Decimal] = field(default_factory=dict)
    granted: dict[str, Decimal] = field(default_factory=dict)
    jobs: dict[tuple[str, str], tuple[str, Decimal]] = field(default_factory=dict)  # state, hold
    cost: dict[tuple[str, str], Decimal] = field(default_factory=dict)  # each job's recorded provider cost
    uncharged: dict[str, Decimal] = field(default_factory=dict)  # provider cost of failed/expired jobs
    records: int = 0  # answered calls, each of which must be one record

    def open(self, team: str, job: str, price: Decimal) -> str:
        state = self.jobs.get((team, job))
        if state is not None:
            return "closed" if state[0] not in ("pending", "in_progress") else "ok"
        if self.uncharged.get(team, Decimal(0)) >= ALLOWANCE:
            return "allowance"
        if self.remaining.get(team, Decimal(0)) < price:
            return "insufficient"
        self.remaining[team] = self.remaining.get(team, Decimal(0)) - price
        self.jobs[(team, job)] = ("in_progress", price)
        return "ok"

    def close(self, team: str, job: str, status: str) -> str:
        state = self.jobs.get((team, job))
        if state is None:
            return "unknown"
        if state[0] not in ("pending", "in_progress"):
            return "same" if state[0] == status else "conflict"
        if status != "completed":
            self.remaining[team] += state[1]
            self.uncharged[team] = self.uncharged.get(team, Decimal(0)) + self.cost.get((team, job), Decimal(0))
        self.jobs[(team, job)] = (status, state[1])
        return "closed"


Backend = Callable[[PostgresStore, Writer, str], Awaitable[CreditBackend]]


async def run_workload(database_url: str, make_backend: Backend, ops: list[tuple[Any, ...]]) -> None:
    run = next(_run)
    teams = [f"r{run}-t{i}" for i in range(2)]
    store = PostgresStore(database_url, max_size=4)
    await store.open()
    writer = Writer(store)
    writer.start()
    backend = await make_backend(store, writer, f"run{run}")
    settings = Settings(job_prices=PRICES, default_price=Decimal(1), failure_allowance_usd=ALLOWANCE)
    policies = TeamPolicies(store, refresh_s=3600, window_s=3600)
    credits = CreditService(settings, store, writer, backend, policies=policies)
    model = Model()
    # A "cycle" is the abuse of free failures: open a job, make it cost the operator, fail it.
    ops = [
        step
        for op in ops
        for step in (
            [("open", *op[1:3]), ("call", *op[1:3], 1), ("call", *op[1:3], 1), ("fail", *op[1:3])]
            if op[0] == "cycle"
            else [op]
        )
    ]
    try:
        if any(op[0] == "cycle" for op in ops):  # enough credits that only the allowance stops the cycles
            ops = [("grant", 0, 0, 50, 99), ("grant", 1, 0, 50, 99), *ops]
        for op in ops:
            kind, t, j = op[0], teams[op[1]], f"job-{op[2]}"
            if kind == "open_nan":
                # A NaN or an infinity in a tracked call's metadata never reaches a decision.
                bad = {"job_id": j, "job_type": "cheap", "x": [float("nan"), float("inf"), float("-inf")][op[3]]}
                with pytest.raises(InvalidJobMetadata):
                    parse_job_tag(bad, {})
            elif kind == "open_hostile":
                # A job type the operator never priced, or a priced one spelled otherwise: refused, nothing held.
                with pytest.raises(UnknownJobType):
                    await credits.admit_call(ctx(t, f"hostile-{op[2]}", ["Cheap", "zzz", "BIG"][op[3]]))
            elif kind == "call":
                # An answered call of an open job, with a call id the client reuses for every call.
                if model.jobs.get((t, j), ("none",))[0] != "in_progress":
                    continue
                call_id = "same-call-id"
                headers = {"proxy_server_request": {"headers": {adapter.CALL_ID_HEADER: call_id}}}
                record_id = adapter.record_call_id(headers, call_id)
                context = dataclasses.replace(ctx(t, j, "cheap"), call_id=record_id)
                data: dict[str, Any] = {"metadata": {}}
                adapter.put_stash(data, context)
                cost = CALL_COSTS[op[3]]
                answered = adapter.call_event(
                    {
                        "litellm_call_id": call_id,
                        "litellm_params": {"metadata": data["metadata"]},
                        "response_cost": float(cost),
                        "standard_logging_object": {"model_group": "m"},
                    },
                    0.0,
                    1.0,
                    CallStatus.SUCCESS,
                )
                assert answered is not None
                await writer.put(answered)
                await credits.add_cost(t, j, cost)
                model.records += 1
                model.cost[(t, j)] = model.cost.get((t, j), Decimal(0)) + cost
            elif kind == "grant":
                amount = Decimal(op[3])
                await credits.grant(t, amount, kind="grant", idempotency_key=f"g-{op[4]}")
                if f"{t}/g-{op[4]}" not in model.granted:
                    model.granted[f"{t}/g-{op[4]}"] = amount
                    model.remaining[t] = model.remaining.get(t, Decimal(0)) + amount
            elif kind == "open":
                job_type = "big" if op[2] % 3 == 0 else "cheap"
                expected = model.open(t, j, PRICES[job_type])
                try:
                    await credits.admit_call(ctx(t, j, job_type))
                    got = "ok"
                except InsufficientCredits:
                    got = "insufficient"
                except JobClosed:
                    got = "closed"
                except FailureAllowanceExhausted:
                    got = "allowance"
                assert got == expected, (op, got, expected)
            else:
                status = {"complete": JobStatus.COMPLETED, "fail": JobStatus.FAILED, "expire": JobStatus.EXPIRED}[kind]
                expected = model.close(t, j, status.value)
                try:
                    closure = await credits.close_job(t, j, status)
                    got = "unknown" if closure is None else ("same" if closure.repeated else "closed")
                except JobClosed:
                    got = "conflict"
                assert got == expected, (op, got, expected)
            await writer.flush()  # the records of this step are in PostgreSQL before the next decision
            for team in teams:
                balance = await credits.balance(team)
                assert balance.credits_remaining == model.remaining.get(team, Decimal(0)), (op, team)
                assert balance.credits_held >= 0
        await writer.flush()
        # Every answered call is one record, whatever call id the client sent.
        recorded = query(database_url, "SELECT count(*) AS n FROM calls WHERE team_id = ANY(%s)", teams)[0]["n"]
        assert recorded == model.records
        # Failed and expired jobs went free only up to the allowance plus one job's cost.
        biggest_job = max(model.cost.values(), default=Decimal(0))
        for row in query(
            database_url,
            """SELECT team_id, sum(total_cost_usd) AS spent FROM jobs
            WHERE team_id = ANY(%s) AND status IN ('failed', 'expired') GROUP BY team_id""",
            teams,
        ):
            assert row["spent"] == model.uncharged.get(row["team_id"], Decimal(0))
            assert row["spent"] <= ALLOWANCE + biggest_job
        # Cached balances equal the ledger; charges never exceed grants; one capture per completed job.
        accounts = {r["team_id"]: r for r in query(database_url, "SELECT * FROM credit_accounts")}
        for row in query(database_url, "SELECT * FROM (" + LEDGER_TOTALS + ") t"):
            if row["team_id"] not in teams:
                continue
            account = accounts[row["team_id"]]
            assert (account["credits_allocated"], account["credits_charged"], account["credits_held"]) == (
                row["allocated"],
                row["charged"],
                row["held"],
            )
            assert row["charged"] <= row["allocated"]
            assert row["held"] >= 0
            assert account["credits_remaining"] == model.remaining.get(row["team_id"], Decimal(0))
        captures = query(
            database_url,
            """SELECT l.job_id, l.team_id, count(*) AS n, max(j.status) AS status
            FROM credit_ledger l JOIN jobs j USING (team_id, job_id) WHERE kind = 'capture' AND l.team_id = ANY(%s)
            GROUP BY l.team_id, l.job_id""",
            teams,
        )
        assert all(c["n"] == 1 and c["status"] == "completed" for c in captures)
        completed = {k for k, v in model.jobs.items() if v[0] == "completed"}
        assert {(c["team_id"], c["job_id"]) for c in captures} == completed
        states = {
            (r["team_id"], r["job_id"]): r["status"]
            for r in query(database_url, "SELECT team_id, job_id, status FROM jobs WHERE team_id = ANY(%s)", teams)
        }
        assert states == {k: v[0] for k, v in model.jobs.items()}
    finally:
        await writer.aclose()
        await credits.aclose()
        await store.close()


LEDGER_TOTALS = """SELECT team_id,
       coalesce(sum(amount) FILTER (WHERE kind IN ('grant', 'adjust')), 0) AS allocated,
       coalesce(sum(amount) FILTER (WHERE kind = 'capture'), 0) AS charged,
       coalesce(sum(amount) FILTER (WHERE kind = 'hold'), 0)
         - coalesce(sum(amount) FILTER (WHERE kind IN ('capture', 'release')), 0) AS held
FROM credit_ledger GROUP BY team_id"""

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("grant"), st.integers(0, 1), st.just(0), st.integers(1, 3), st.integers(0, 5)),
        st.tuples(
            st.sampled_from(["open", "open", "complete", "fail", "expire"]), st.integers(0, 1), st.integers(0, 5)
        ),
        # Hostile: unpriced and wrong-case job types; calls that reuse one client call id (and cost the
        # operator money, so that jobs failed over and over run into the failure allowance).
        st.tuples(st.just("open_hostile"), st.integers(0, 1), st.integers(0, 5), st.integers(0, 2)),
        st.tuples(st.just("open_nan"), st.integers(0, 1), st.integers(0, 5), st.integers(0, 2)),
        st.tuples(st.just("call"), st.integers(0, 1), st.integers(0, 5), st.integers(0, 1)),
        st.tuples(st.just("cycle"), st.integers(0, 1), st.integers(0, 5)),
    ),
    min_size=1,
    max_size=30,
)


def backends(redis_server_url: str | None) -> dict[str, Backend]:
    async def pg(store: PostgresStore, writer: Writer, prefix: str) -> CreditBackend:
        return PostgresCredits(store)

    async def local(store: PostgresStore, writer: Writer, prefix: str) -> CreditBackend:
        # Alone on its database, a process decides in memory; a second one makes it hand over.
        return await choose_backend(store, writer, store.url)

    async def rd(store: PostgresStore, writer: Writer, prefix: str) -> CreditBackend:
        assert redis_server_url is not None
        b = RedisCredits(redis_server_url, store, prefix=f"{REDIS_TEST_PREFIX}-{prefix}")
        # Holds reach the ledger through the journal (open_job.lua appends them), as in the proxy.
        writer.journal = b.journal(claim_idle_s=30)
        await writer.journal.setup()
        writer.start()
        await b.load_accounts()
        return b

    found: dict[str, Backend] = {"postgres": pg, "local": local}
    if redis_server_url:
        found["redis"] = rd
    return found


def backend_or_skip(redis_server_url: str | None, name: str) -> Backend:
    available = backends(redis_server_url)
    if name not in available:
        pytest.skip("no Redis server (JOBS_TEST_REDIS_URL unset and no redis-server binary)")
    return available[name]


@pytest.mark.parametrize("backend_name", ["postgres", "local", "redis"])
def test_random_workloads_keep_every_invariant(
    database_url: str, redis_server_url: str | None, backend_name: str
) -> None:
    make_backend = backend_or_skip(redis_server_url, backend_name)
    # The abuse the allowance exists for, every time: six create → costly call → fail cycles in a row.
    asyncio.run(run_workload(database_url, make_backend, [("cycle", 0, n) for n in range(6)]))

    @settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(OPS)
    def check(ops: list[tuple[Any, ...]]) -> None:
        asyncio.run(run_workload(database_url, make_backend, ops))

    check()


@pytest.mark.parametrize("backend_name", ["postgres", "local", "redis"])
def test_concurrent_opens_never_overspend(database_url: str, redis_server_url: str | None, backend_name: str) -> None:
    make_backend = backend_or_skip(redis_server_url, backend_name)

    async def main() -> None:
        stores = [PostgresStore(database_url, max_size=8) for _ in range(2)]
        for s in stores:
            await s.open()
        writers = [Writer(s) for s in stores]
        for w in writers:
            w.start()
        services = [
            CreditService(Settings(), s, w, await make_backend(s, w, "conc"))
            for s, w in zip(stores, writers, strict=True)
        ]
        try:
            await services[0].grant("conc", Decimal(10), kind="grant", idempotency_key="once")
            await services[1].grant("conc", Decimal(10), kind="grant", idempotency_key="once")  # a replay

            async def attempt(i: int) -> bool:
                try:
                    await services[i % 2].admit_call(ctx("conc", f"j{i}", "cheap", single_call=True))
                    return True
                except InsufficientCredits:
                    return False
                except JobsError:
                    raise

            results = await asyncio.gather(*(attempt(i) for i in range(100)))
            assert sum(results) == 10
            for w in writers:
                await w.flush()
            balance = await services[0].balance("conc")
            assert (balance.credits_remaining, balance.credits_held) == (0, 10)
        finally:
            for svc, w, s in zip(services, writers, stores, strict=True):
                await w.aclose()
                await svc.aclose()
                await s.close()

    asyncio.run(main())


@pytest.mark.parametrize("backend_name", ["postgres", "local", "redis"])
def test_the_reaper_expires_idle_jobs_once_and_releases_their_holds(
    database_url: str, redis_server_url: str | None, backend_name: str
) -> None:
    make_backend = backend_or_skip(redis_server_url, backend_name)

    async def main() -> None:
        store = PostgresStore(database_url)
        await store.open()
        writer = Writer(store)
        writer.start()
        settings_ = Settings(idle_timeout_s=0.3)
        # Two replicas' reapers on the same jobs: each job is expired exactly once.
        services = [
            CreditService(settings_, store, writer, await make_backend(store, writer, "reap")) for _ in range(2)
        ]
        try:
            await services[0].grant("reap", Decimal(5), kind="grant", idempotency_key="g")
            for i in range(3):
                await services[0].admit_call(ctx("reap", f"idle-{i}", "cheap"))
            assert (await services[0].balance("reap")).credits_held == 3
            assert await services[0].reap_once() + await services[1].reap_once() == 0  # not idle yet
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            expired = 0
            while expired < 3:
                assert loop.time() < deadline, "the reaper did not expire the idle jobs"
                counts = await asyncio.gather(services[0].reap_once(), services[1].reap_once())
                expired += sum(counts)
                await asyncio.sleep(0.05)
            assert expired == 3
            balance = await services[1].balance("reap")
            assert (balance.credits_remaining, balance.credits_held, balance.credits_charged) == (5, 0, 0)
            await writer.flush()
            rows = query(database_url, "SELECT status FROM jobs WHERE team_id = 'reap'")
            assert [r["status"] for r in rows] == ["expired"] * 3
            (ledger,) = query(
                database_url,
                "SELECT count(*) FILTER (WHERE kind = 'release') AS releases FROM credit_ledger WHERE team_id = 'reap'",
            )
            assert ledger["releases"] == 3
        finally:
            await writer.aclose()
            for svc in services:
                await svc.aclose()
            await store.close()

    asyncio.run(main())


def test_an_in_process_replica_hands_over_when_a_second_process_arrives(database_url: str) -> None:
    async def main() -> None:
        stores = [PostgresStore(database_url, max_size=8) for _ in range(2)]
        for s in stores:
            await s.open()
        writers = [Writer(s) for s in stores]
        for w in writers:
            w.start()
        # A minute between its own checks: the hand-over below comes from the second process's knock (a NOTIFY).
        first = await choose_backend(stores[0], writers[0], database_url, watch_s=60.0)
        assert isinstance(first, LocalCredits)
        one = CreditService(Settings(), stores[0], writers[0], first)
        try:
            await one.grant("solo", Decimal(10), kind="grant", idempotency_key="g")
            for i in range(4):
                await one.admit_call(ctx("solo", f"early-{i}", "cheap"))
            await one.close_job("solo", "early-0", JobStatus.COMPLETED)
            # A single-call job still in flight: its hold waits in memory for its closure.
            await one.admit_call(ctx("solo", "early-single", "cheap", single_call=True))
            await writers[0].flush()
            assert query(database_url, "SELECT job_id FROM jobs WHERE job_id = 'early-single'") == []
            assert first.mode == "in-process"

            second = await choose_backend(stores[1], writers[1], database_url)
            assert isinstance(second, SharedPostgresCredits)
            two = CreditService(Settings(), stores[1], writers[1], second)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            while first.mode == "in-process":
                assert loop.time() < deadline, "the in-process replica did not hand over"
                await asyncio.sleep(0.05)

            async def attempt(i: int) -> bool:
                try:
                    await (one, two)[i % 2].admit_call(ctx("solo", f"late-{i}", "cheap", single_call=True))
                    return True
                except InsufficientCredits:
                    return False

            results = await asyncio.gather(*(attempt(i) for i in range(60)))
            assert sum(results) == 5  # 10 granted - 1 charged - 4 still held (3 jobs, 1 single call)
            # The jobs opened in memory are known to PostgreSQL now: the other process closes them.
            closure = await two.close_job("solo", "early-1", JobStatus.FAILED)
            assert closure is not None
            assert closure.hold == 1
            # ...the single-call job too: the hand-over wrote its hold.
            closure = await two.close_job("solo", "early-single", JobStatus.COMPLETED, single_call=True)
            assert closure is not None
            assert closure.hold == 1
            with pytest.raises(JobClosed):
                await two.close_job("solo", "early-0", JobStatus.FAILED)
            with pytest.raises(JobClosed):
                await two.admit_call(ctx("solo", "early-0", "cheap"))
            for w in writers:
                await w.flush()
            for svc in (one, two):
                balance = await svc.balance("solo")
                assert (balance.credits_remaining, balance.credits_held, balance.credits_charged) == (1, 7, 2)
            (row,) = query(database_url, "SELECT * FROM credit_accounts WHERE team_id = 'solo'")
            assert (row["credits_remaining"], row["credits_held"], row["credits_charged"]) == (1, 7, 2)
            await two.aclose()
        finally:
            for w in writers:
                await w.aclose()
            await one.aclose()
            for s in stores:
                await s.close()

    asyncio.run(main())


def test_a_job_id_reused_after_it_was_forgotten_is_a_new_job_with_its_own_entries(database_url: str) -> None:
    async def main() -> None:
        store = PostgresStore(database_url)
        await store.open()
        writer = Writer(store)
        writer.start()
        backend = await choose_backend(store, writer, database_url, max_closed=0)  # forget closed jobs at once
        assert isinstance(backend, LocalCredits)
        credits = CreditService(Settings(), store, writer, backend)
        try:
            await credits.grant("reuse", Decimal(2), kind="grant", idempotency_key="g")
            for outcome in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.COMPLETED):
                await credits.admit_call(ctx("reuse", "same-id", "cheap"))
                await credits.close_job("reuse", "same-id", outcome)
            with pytest.raises(InsufficientCredits):
                await credits.admit_call(ctx("reuse", "same-id", "cheap"))
            await writer.flush()
            (row,) = query(database_url, "SELECT * FROM (" + LEDGER_TOTALS + ") t WHERE team_id = 'reuse'")
            assert (row["allocated"], row["charged"], row["held"]) == (2, 2, 0)
            (account,) = query(database_url, "SELECT * FROM credit_accounts WHERE team_id = 'reuse'")
            assert (account["credits_charged"], account["credits_held"], account["credits_remaining"]) == (2, 0, 0)
        finally:
            await writer.aclose()
            await credits.aclose()
            await store.close()

    asyncio.run(main())


@pytest.mark.parametrize("backend_name", ["local", "redis"])
@pytest.mark.parametrize("status", [JobStatus.COMPLETED, JobStatus.FAILED])
def test_a_single_call_closure_through_the_writer_lands_with_its_ledger_entries(
    database_url: str, redis_server_url: str | None, backend_name: str, status: JobStatus
) -> None:
    """The closure a call's own logging event makes (via_writer): no round trip of its own, and
    once the writer has written it, the job is closed, captured or released, and the balances match."""
    make_backend = backend_or_skip(redis_server_url, backend_name)

    async def scenario() -> None:
        run = next(_run)
        team = f"w{run}"
        store = PostgresStore(database_url, max_size=4)
        await store.open()
        writer = Writer(store)
        writer.start()
        backend = await make_backend(store, writer, f"via-writer-{run}")
        credits = CreditService(Settings(job_prices=PRICES), store, writer, backend)
        try:
            await credits.grant(team, Decimal(5), kind="grant", idempotency_key="g")
            await credits.admit_call(ctx(team, "call-1", "big", single_call=True))
            closure = await credits.close_job(team, "call-1", status, single_call=True, via_writer=True)
            assert closure is not None
            assert not closure.repeated
            await asyncio.wait_for(writer.flush(), timeout=30)
            (job,) = query(
                database_url, "SELECT status, credits_held, credits_charged FROM jobs WHERE team_id = %s", team
            )
            charged = Decimal(2) if status is JobStatus.COMPLETED else Decimal(0)
            assert (job["status"], job["credits_held"], job["credits_charged"]) == (status.value, 0, charged)
            kinds = sorted(
                r["kind"] for r in query(database_url, "SELECT kind FROM credit_ledger WHERE team_id = %s", team)
            )
            assert kinds == sorted(["grant", "hold", "capture" if status is JobStatus.COMPLETED else "release"])
            balance = await credits.balance(team)
            assert (balance.credits_remaining, balance.credits_held) == (Decimal(5) - charged, 0)
            (account,) = query(
                database_url, "SELECT credits_charged, credits_held FROM credit_accounts WHERE team_id = %s", team
            )
            assert (account["credits_charged"], account["credits_held"]) == (charged, 0)
        finally:
            await writer.aclose()
            await credits.aclose()
            await store.close()

    asyncio.run(scenario())


def test_a_waiter_in_another_database_does_not_count_as_a_second_process(
    database_url: str, pg_server: PostgresServer
) -> None:
    """Advisory locks are per database; pg_locks is per server. Two deployments sharing one server
    (each its own database) must not make each other hand their credits over."""
    other_url = pg_server.create_database()

    async def scenario() -> None:
        mine, theirs, their_second = Authority(database_url), Authority(other_url), Authority(other_url)
        try:
            assert await mine.try_exclusive()
            assert await theirs.try_exclusive()
            waiting = asyncio.create_task(their_second.shared())  # waits: their lock is held exclusively

            async def seen() -> bool:
                return await theirs.waiters() == 1

            await wait_for_async(seen, within=10, what="the waiter in the other database")
            assert await mine.waiters() == 0
            waiting.cancel()
        finally:
            for authority in (mine, theirs, their_second):
                await authority.aclose()

    try:
        asyncio.run(scenario())
    finally:
        pg_server.drop_database(other_url)


async def test_terms_are_worked_out_once_per_policy_and_failure_spend_read(store: PostgresStore) -> None:
    from litellm_jobs_plugin.credits.decide import TeamPolicy

    policies = TeamPolicies(store, refresh_s=3600, window_s=3600)
    settings = Settings(job_prices={"doc": Decimal(2)})
    credits = CreditService(settings, store, Writer(store), PostgresCredits(store), policies=policies)
    first = await credits.terms("team-t", "doc", store_up=True)
    assert first.price == Decimal(2)
    assert await credits.terms("team-t", "doc", store_up=True) is first  # every call of an open job asks again
    await policies.put("team-t", TeamPolicy(job_prices={"doc": Decimal(5)}))  # the admin's new price
    assert (await credits.terms("team-t", "doc", store_up=True)).price == Decimal(5)
    policies.stale("team-t")  # a job of the team failed here: its spend is read again, and the terms with it
    again = await credits.terms("team-t", "doc", store_up=True)
    assert again.price == Decimal(5)
    assert again is not first
    # a refusal is never kept: each is its own exception
    down = [await credits.terms("team-t", "doc", store_up=False) for _ in range(2)]
    assert all(t.refusal is not None for t in down)
    assert down[0].refusal is not down[1].refusal
    await policies.aclose()


def test_a_call_of_a_job_held_open_here_joins_without_terms_and_refusals_still_count(database_url: str) -> None:
    """In process, a call of a job this process holds open is admitted in memory: no terms, no
    policy read. What the full path would refuse (a cap reached, another job type, a closed job) is
    refused the same way, and a cap's 402 is counted in the rejections series."""
    from prometheus_client import CollectorRegistry

    from litellm_jobs_plugin.errors import JobBudgetExceeded, JobTypeMismatch
    from litellm_jobs_plugin.metrics import Metrics
    from litellm_jobs_plugin.settings import JobTypeCaps

    async def main() -> None:
        store = PostgresStore(database_url)
        await store.open()
        writer = Writer(store)
        writer.start()
        backend = await choose_backend(store, writer, database_url)
        assert isinstance(backend, LocalCredits)
        registry = CollectorRegistry()
        settings = Settings(job_prices=PRICES, job_type_caps={"big": JobTypeCaps(max_calls=2)})
        credits = CreditService(settings, store, writer, backend, metrics=Metrics(registry))
        terms_asked = 0
        full_terms = credits.terms

        async def counted_terms(*args: Any, **kwargs: Any) -> Any:
            nonlocal terms_asked
            terms_asked += 1
            return await full_terms(*args, **kwargs)

        credits.terms = counted_terms  # type: ignore[method-assign]
        try:
            await credits.grant("join", Decimal(10), kind="grant", idempotency_key="g")
            first = await credits.admit_call(ctx("join", "j1", "big"))
            assert (first.created, terms_asked) == (True, 1)
            second = await credits.admit_call(ctx("join", "j1", "big"))
            assert (second.created, second.hold, second.credits_remaining, terms_asked) == (
                False,
                Decimal(2),
                Decimal(8),
                1,
            )
            assert await backend.admitted_calls("join", "j1") == 2
            with pytest.raises(JobBudgetExceeded):
                await credits.admit_call(ctx("join", "j1", "big"))  # max_calls=2
            assert registry.get_sample_value("litellm_jobs_rejections_total", {"reason": "job_budget_exceeded"}) == 1
            with pytest.raises(JobTypeMismatch):
                await credits.admit_call(ctx("join", "j1", "cheap"))
            await credits.close_job("join", "j1", JobStatus.COMPLETED)
            with pytest.raises(JobClosed):
                await credits.admit_call(ctx("join", "j1", "big"))
            assert (terms_asked, await backend.admitted_calls("join", "j1")) == (1, 2)
            # a job this process does not hold takes the full path (and its terms)
            await credits.admit_call(ctx("join", "j2", "cheap"))
            assert terms_asked == 2
        finally:
            await writer.aclose()
            await credits.aclose()
            await store.close()

    asyncio.run(main())
