"""A Redis that forgets (a restart without persistence, a FLUSHDB): the credit state is rebuilt from
PostgreSQL before anything is decided again — open jobs stay open with their one hold, new holds
respect the balance, and PostgreSQL's books stay exact. Each test flushes a redis-server of its own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import redis

from litellm_jobs_plugin.credits import CreditService, RedisCredits
from litellm_jobs_plugin.errors import InsufficientCredits, StoreUnavailable
from litellm_jobs_plugin.models import CallContext, JobStatus
from litellm_jobs_plugin.reconcile import find_drift
from litellm_jobs_plugin.settings import Settings
from litellm_jobs_plugin.store.postgres import PostgresStore
from litellm_jobs_plugin.writer import Writer
from tests.conftest import query
from tests.support.outages import OwnRedis, own_redis

PRICES = {"cheap": Decimal(1)}
TEAM = "team-r"


def ctx(job: str) -> CallContext:
    return CallContext(
        team_id=TEAM,
        job_id=job,
        job_type="cheap",
        single_call=False,
        requested_model="m",
        key_hash="h",
        user_id="u",
        job_type_given=True,
    )


@pytest.fixture
def own(tmp_path: Path) -> Iterator[OwnRedis]:
    with own_redis(tmp_path / "redis") as server:
        yield server


class Replica:
    def __init__(self, store: PostgresStore, url: str) -> None:
        self.writer = Writer(store)
        self.backend = RedisCredits(url, store, prefix="ljp")
        self.backend.settle = self.writer.settle
        self.service = CreditService(Settings(job_prices=PRICES), store, self.writer, self.backend)

    async def start(self) -> None:
        self.writer.journal = self.backend.journal(claim_idle_s=30)
        await self.writer.journal.setup()
        self.writer.start()
        await self.backend.load_accounts()  # the first start loads the state (a rebuild of an empty Redis)
        self.backend.rebuilds = 0

    async def aclose(self) -> None:
        await self.writer.aclose()
        await self.service.aclose()


@pytest.fixture
async def replicas(store: PostgresStore, own: OwnRedis) -> AsyncIterator[list[Replica]]:
    started = [Replica(store, own.url), Replica(store, own.url)]
    for r in started:
        await r.start()
    yield started
    for r in started:
        await r.aclose()


def flushdb(url: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()  # the test's own redis-server, never the machine's
    finally:
        client.close()


def holds(url: str, job: str) -> int:
    rows = query(
        url, "SELECT count(*) AS n FROM credit_ledger WHERE team_id = %s AND job_id = %s AND kind = 'hold'", TEAM, job
    )
    return int(rows[0]["n"])


async def test_open_jobs_survive_a_flushdb_with_one_hold_and_new_holds_respect_the_balance(
    replicas: list[Replica], store: PostgresStore, database_url: str, own: OwnRedis
) -> None:
    a, b = replicas
    await a.service.grant(TEAM, Decimal(3), kind="grant", idempotency_key="g1")
    assert (await a.service.admit_call(ctx("old-1"))).created
    assert (await b.service.admit_call(ctx("old-2"))).created
    await a.writer.flush()  # PostgreSQL has both holds: 1 credit left, 2 held

    flushdb(own.url)

    # Both replicas at once: one rebuilds, the other waits for it; neither decides without the state.
    again = await asyncio.gather(a.service.admit_call(ctx("old-1")), b.service.admit_call(ctx("old-1")))
    assert [x.created for x in again] == [False, False]  # a call of an open job: no second hold
    assert a.backend.rebuilds + b.backend.rebuilds == 1

    outcomes = await asyncio.gather(
        a.service.admit_call(ctx("new-1")), b.service.admit_call(ctx("new-2")), return_exceptions=True
    )
    assert sorted(type(o).__name__ for o in outcomes) == ["Admission", "InsufficientCredits"]
    with pytest.raises(InsufficientCredits):
        await a.service.admit_call(ctx("new-3"))

    closure = await b.service.close_job(TEAM, "old-1", JobStatus.COMPLETED)
    assert closure is not None
    assert (closure.repeated, closure.hold) == (False, Decimal(1))
    repeat = await a.service.close_job(TEAM, "old-1", JobStatus.COMPLETED)
    assert repeat is not None
    assert repeat.repeated

    # The reaper's index was rebuilt too: the open jobs are in it, the closed one is not.
    idle = {job for _, job in await a.backend.idle_jobs(0, 100)}
    opened = next(f"new-{i}" for i, o in enumerate(outcomes, 1) if not isinstance(o, Exception))
    assert idle == {"old-2", opened}

    await a.writer.flush()
    await b.writer.flush()
    assert holds(database_url, "old-1") == 1
    captures = query(
        database_url, "SELECT count(*) AS n FROM credit_ledger WHERE job_id = 'old-1' AND kind = 'capture'"
    )
    assert captures[0]["n"] == 1
    balance = await store.balance(TEAM)
    assert (balance.credits_remaining, balance.credits_held) == (Decimal(0), Decimal(2))
    redis_balance = await a.backend.balance(TEAM)
    assert (redis_balance.credits_remaining, redis_balance.credits_held) == (Decimal(0), Decimal(2))
    assert (await find_drift(store)).clean


async def test_a_call_waits_for_another_replicas_rebuild_then_gets_a_503(
    replicas: list[Replica], own: OwnRedis
) -> None:
    a, _ = replicas
    await a.service.grant(TEAM, Decimal(3), kind="grant", idempotency_key="g1")
    flushdb(own.url)
    client = redis.Redis.from_url(own.url)
    try:
        client.set(a.backend.keys.rebuild_lock, "someone-else", px=60_000)  # another replica is rebuilding
        a.backend.rebuild_wait_s = 0.3
        with pytest.raises(StoreUnavailable):
            await a.service.admit_call(ctx("j"))
        client.delete(a.backend.keys.rebuild_lock)  # it died: the lock is gone (here: at once)
    finally:
        client.close()
    assert (await a.service.admit_call(ctx("j"))).created
    assert a.backend.rebuilds == 1
