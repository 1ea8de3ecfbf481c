"""A Redis that forgets (a restart without persistence, a FLUSHDB): the credit state is rebuilt from
PostgreSQL before anything is decided again — open jobs stay open with their one hold, new holds
respect the balance, and PostgreSQL's books stay exact. On one Redis each test flushes a redis-server
of its own; on the session's Redis Cluster it deletes every key of its own prefix (a cluster that lost
its data, as far as this plugin can tell)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
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
from tests.acceptance.test_reliability import redis_client
from tests.conftest import query
from tests.support.outages import own_redis
from tests.support.redis_cluster import redis_cluster

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


@dataclass
class Target:
    url: str
    prefix: str

    def forget(self) -> None:
        """Redis loses its data."""
        if self.url.startswith("redis+cluster://"):
            client = redis_client(self.url)
            try:
                for key in list(client.scan_iter(match=f"{{{self.prefix}:*", count=1000)):
                    client.delete(key)
            finally:
                client.close()
            return
        client = redis.Redis.from_url(self.url)
        try:
            client.flushdb()  # the test's own redis-server, never the machine's
        finally:
            client.close()


@pytest.fixture(params=["redis", "cluster"])
def own(request: pytest.FixtureRequest, tmp_path: Path, redis_prefix: str) -> Iterator[Target]:
    if request.param == "cluster":
        yield Target(str(request.getfixturevalue("redis_cluster_url")), redis_prefix)
        return
    with own_redis(tmp_path / "redis") as server:
        yield Target(server.url, "ljp")


class Replica:
    def __init__(self, store: PostgresStore, target: Target) -> None:
        self.writer = Writer(store)
        self.backend = RedisCredits(target.url, store, prefix=target.prefix)
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
async def replicas(store: PostgresStore, own: Target) -> AsyncIterator[list[Replica]]:
    started = [Replica(store, own), Replica(store, own)]
    for r in started:
        await r.start()
    yield started
    for r in started:
        await r.aclose()


def holds(url: str, job: str) -> int:
    rows = query(
        url, "SELECT count(*) AS n FROM credit_ledger WHERE team_id = %s AND job_id = %s AND kind = 'hold'", TEAM, job
    )
    return int(rows[0]["n"])


async def assert_books(store: PostgresStore, backend: RedisCredits, *, remaining: Decimal, held: Decimal) -> None:
    """The team's balance, in PostgreSQL and in Redis, is ``remaining`` and ``held``; reconcile finds no drift."""
    balance = await store.balance(TEAM)
    assert (balance.credits_remaining, balance.credits_held) == (remaining, held)
    redis_balance = await backend.balance(TEAM)
    assert (redis_balance.credits_remaining, redis_balance.credits_held) == (remaining, held)
    assert (await find_drift(store)).clean


async def test_open_jobs_survive_a_flushdb_with_one_hold_and_new_holds_respect_the_balance(
    replicas: list[Replica], store: PostgresStore, database_url: str, own: Target
) -> None:
    a, b = replicas
    await a.service.grant(TEAM, Decimal(3), kind="grant", idempotency_key="g1")
    assert (await a.service.admit_call(ctx("old-1"))).created
    assert (await b.service.admit_call(ctx("old-2"))).created
    await a.writer.flush()  # PostgreSQL has both holds: 1 credit left, 2 held

    own.forget()

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
    await assert_books(store, a.backend, remaining=Decimal(0), held=Decimal(2))


async def test_a_call_waits_for_another_replicas_rebuild_then_gets_a_503(replicas: list[Replica], own: Target) -> None:
    a, _ = replicas
    await a.service.grant(TEAM, Decimal(3), kind="grant", idempotency_key="g1")
    own.forget()
    client = redis_client(own.url)
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


async def test_on_a_cluster_teams_spread_over_shards_and_the_writers_and_reaper_read_every_shard(
    store: PostgresStore, redis_cluster_url: str, redis_prefix: str
) -> None:
    replica = Replica(store, Target(redis_cluster_url, redis_prefix))
    await replica.start()
    try:
        teams = [f"team-{n}" for n in range(12)]
        for team in teams:
            await replica.service.grant(team, Decimal(1), kind="grant", idempotency_key=f"g-{team}")
            assert (await replica.service.admit_call(dataclasses.replace(ctx("j"), team_id=team))).created
        keys = replica.backend.keys
        assert keys.shards == 16
        assert len({keys.shard(t) for t in teams}) > 4  # the journal and the index are not one hot key
        client = redis_client(redis_cluster_url)
        try:
            slots = {client.keyslot(k) for k in client.scan_iter(match=f"{{{redis_prefix}:*", count=1000)}
            nodes = {client.get_node_from_key(f"{{{redis_prefix}:{keys.shard(t)}}}").name for t in teams}
        finally:
            client.close()
        assert len(slots) == keys.shards  # one hash slot per shard: every script's keys share one
        assert len(nodes) > 1  # spread over the masters
        await asyncio.wait_for(replica.writer.flush(), timeout=30)
        assert len(query(store.url, "SELECT 1 FROM credit_ledger WHERE kind = 'hold'")) == len(teams)  # each once
        assert {team for team, _ in await replica.backend.idle_jobs(0, 100)} == set(teams)
        assert (await find_drift(store)).clean
    finally:
        await replica.aclose()


async def test_a_cluster_master_killed_fails_over_to_its_replica_and_the_books_stay_exact(
    store: PostgresStore, database_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    """kill -9 the master holding the team's keys, with what it acknowledged replicated: its replica takes
    over. A call meanwhile waits while the cluster client retries (here about 2.5 s with a 1 s node timeout)
    or gets 503, never a decision without the state; then calls go on, nothing is charged twice and
    PostgreSQL's books stay exact."""
    with redis_cluster(tmp_path / "cluster", replicas=1, node_timeout_ms=1000) as cluster:
        if cluster is None:
            pytest.skip("no redis-server/redis-cli binaries for a Redis Cluster")
        replica = Replica(store, Target(cluster.url, redis_prefix))
        await replica.start()
        try:
            service = replica.service
            await service.grant(TEAM, Decimal(5), kind="grant", idempotency_key="g1")
            assert (await service.admit_call(ctx("before-1"))).created
            assert (await service.admit_call(ctx("before-2"))).created
            closure = await service.close_job(TEAM, "before-1", JobStatus.COMPLETED)
            assert closure is not None
            assert not closure.repeated

            account = replica.backend.keys.account(TEAM)
            port = cluster.master_of(account)
            master = redis.Redis(port=port)
            try:
                assert master.execute_command("WAIT", 1, 5000) == 1  # its replica has everything acknowledged
            finally:
                master.close()
            cluster.kill(port)

            # A call meanwhile waits for the promotion (or gets 503: StoreUnavailable), then is admitted.
            refused = 0
            killed_at = time.monotonic()
            deadline = killed_at + 60
            while True:
                try:
                    admission = await service.admit_call(ctx("after-1"))
                    break
                except StoreUnavailable:
                    refused += 1
                    assert time.monotonic() < deadline, "the cluster did not fail over within 60 s"
                    await asyncio.sleep(0.1)
            assert admission.created
            assert time.monotonic() - killed_at < 30
            assert cluster.master_of(account) != port  # served by the promoted replica
            assert (await service.admit_call(ctx("before-2"))).created is False  # still open, one hold
            closure = await service.close_job(TEAM, "before-2", JobStatus.COMPLETED)
            assert closure is not None
            assert not closure.repeated
            repeat = await service.close_job(TEAM, "before-1", JobStatus.COMPLETED)
            assert repeat is not None
            assert repeat.repeated  # the closure before the failover is still known: not charged twice

            await asyncio.wait_for(replica.writer.flush(), timeout=60)
            for job in ("before-1", "before-2", "after-1"):
                assert holds(database_url, job) == 1
            captures = query(database_url, "SELECT count(*) AS n FROM credit_ledger WHERE kind = 'capture'")
            assert captures[0]["n"] == 2
            await assert_books(store, replica.backend, remaining=Decimal(2), held=Decimal(1))
        finally:
            await replica.aclose()
