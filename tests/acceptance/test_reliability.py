"""Crashes and outages against real processes: replicas killed with SIGKILL, the test's own
PostgreSQL and Redis stopped and started again. Billing data is money: nothing lost, nothing twice."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from redis.cluster import ClusterNode, RedisCluster

from litellm_jobs_plugin.credits.redis_layout import DEFAULT_SHARDS, RedisKeys
from litellm_jobs_plugin.reconcile import Report, find_drift
from litellm_jobs_plugin.store.postgres import PostgresStore
from tests.conftest import query
from tests.support.outages import OwnPostgres, OwnRedis, own_postgres, own_redis
from tests.support.services import FakeUpstream, Proxy, proxy_config, wait_for

KEY = "sk-team-a"
TEAM = "team-a"

pytestmark = pytest.mark.single_mode(
    "starts, kills and cuts off its own proxies, PostgreSQL and Redis, in the credit mode each test is about"
)


@dataclass
class Load:
    """What a load run saw: the call ids answered 200, per job, and every other outcome."""

    ok: dict[str, str | None] = field(default_factory=dict)  # call id → job id (None: untagged)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)  # error type of 4xx/5xx answers
    transport_errors: int = 0

    def count(self, status: int) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1


async def drive(
    targets: Callable[[], list[Proxy]],
    load: Load,
    *,
    stop: asyncio.Event,
    jobs: list[str],
    concurrency: int = 8,
    untagged_every: int = 4,
) -> None:
    """Concurrent non-streamed calls spread over ``targets()`` until ``stop`` is set."""
    counter = itertools.count()

    async def worker(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            i = next(counter)
            live = targets()
            proxy = live[i % len(live)]
            job = None if i % untagged_every == 0 else jobs[i % len(jobs)]
            body: dict[str, Any] = {"model": "Summarizer", "messages": [{"role": "user", "content": f"load {i}"}]}
            if job is not None:
                body["metadata"] = {"job_id": job, "job_type": "load"}
            try:
                r = await client.post(
                    f"{proxy.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}
                )
            except httpx.TransportError:
                load.transport_errors += 1
                continue
            load.count(r.status_code)
            if r.status_code == 200:
                load.ok[r.headers["x-litellm-call-id"]] = job
            else:
                error = r.json().get("error", {})
                load.errors[str(error.get("type"))] = load.errors.get(str(error.get("type")), 0) + 1

    async with httpx.AsyncClient(timeout=60) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))


async def until(condition: Callable[[], bool], *, within: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def assert_recorded_once(database_url: str, load: Load) -> None:
    """Every answered call has its row, its one success event, and each job's totals are its rows' sums."""
    ids = list(load.ok)
    rows = query(database_url, "SELECT call_id, job_id, status FROM calls WHERE call_id = ANY(%s)", ids)
    assert {r["call_id"] for r in rows} == set(ids), "a call answered 200 has no row"
    assert len(rows) == len(ids)
    assert all(r["status"] == "success" for r in rows)
    events = query(
        database_url,
        "SELECT call_id, count(*) AS n FROM call_events WHERE call_id = ANY(%s) AND status = 'success' GROUP BY 1",
        ids,
    )
    assert {e["call_id"]: e["n"] for e in events} == dict.fromkeys(ids, 1)
    drift = query(
        database_url,
        """SELECT j.job_id, j.total_calls, j.total_cost_usd, count(c.call_id) AS n, coalesce(sum(c.cost_usd), 0) AS cost
        FROM jobs j LEFT JOIN calls c USING (team_id, job_id) WHERE j.team_id = %s
        GROUP BY j.job_id, j.total_calls, j.total_cost_usd
        HAVING j.total_calls <> count(c.call_id) OR j.total_cost_usd <> coalesce(sum(c.cost_usd), 0)""",
        TEAM,
    )
    assert drift == []
    # And what `litellm-jobs reconcile` checks: every aggregate and balance equals its source rows.
    assert asyncio.run(reconcile_report(database_url)).clean


async def reconcile_report(database_url: str) -> Report:
    store = PostgresStore(database_url)
    await store.open(migrate=False)
    try:
        return await find_drift(store)
    finally:
        await store.close()


def redis_client(url: str) -> Any:
    """A synchronous client of ``url``: one Redis, or a cluster (``redis+cluster://host:port,...``)."""
    if url.startswith("redis+cluster://"):
        nodes = [ClusterNode(h, int(p)) for h, p in (n.split(":") for n in url.split("://", 1)[1].split(","))]
        return RedisCluster(startup_nodes=nodes)
    return redis.Redis.from_url(url)


def journal_state(url: str, prefix: str) -> tuple[int, int]:
    """(entries in the journal, entries delivered and not acknowledged) in Redis: over every stream
    (each shard's, and the unsharded layout's that an upgrade drains)."""
    keys = RedisKeys(prefix, DEFAULT_SHARDS[url.startswith("redis+cluster://")])
    client = redis_client(url)
    try:
        length = pending = 0
        for stream in [*keys.journals, keys.legacy_journal]:
            if not client.exists(stream):
                continue
            length += int(client.xlen(stream))
            with contextlib.suppress(redis.ResponseError):  # a stream without the group yet
                pending += sum(int(c["pending"]) for c in client.xinfo_consumers(stream, "writers"))
        return length, pending
    finally:
        client.close()


@pytest.fixture(params=["redis", "cluster"])
def redis_target(request: pytest.FixtureRequest, redis_server_url: str | None) -> str:
    """The replicas' JOBS_REDIS_URL: one Redis, or the session's three-master Redis Cluster."""
    if request.param == "cluster":
        return str(request.getfixturevalue("redis_cluster_url"))
    if redis_server_url is None:
        pytest.skip("no Redis server")
    return redis_server_url


def test_kill_9_of_one_replica_mid_load_loses_no_answered_call(
    start_proxy: Callable[..., Proxy], database_url: str, redis_target: str, redis_prefix: str
) -> None:
    env = {"JOBS_REDIS_URL": redis_target, "JOBS_REDIS_PREFIX": redis_prefix, "JOBS_JOURNAL_CLAIM_IDLE_S": "2"}
    a, b = start_proxy(database_url, env=env), start_proxy(database_url, env=env)
    a.grant(TEAM, 100_000)
    live = [a, b]
    load = Load()
    jobs = [f"kill-{uuid.uuid4().hex[:6]}-{k}" for k in range(6)]

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(drive(lambda: live, load, stop=stop, jobs=jobs))
        await until(lambda: len(load.ok) >= 60, within=120, what=f"60 answered calls ({load})")
        a.stop(sig=signal.SIGKILL)
        live.remove(a)
        killed_at = len(load.ok)
        await until(lambda: len(load.ok) >= killed_at + 40, within=120, what="40 more calls on the survivor")
        stop.set()
        await task

    asyncio.run(scenario())
    assert a.proc.returncode == -signal.SIGKILL
    # The killed replica's successor starts; between it and the survivor, the journal drains.
    start_proxy(database_url, env=env)
    wait_for(lambda: journal_state(redis_target, redis_prefix) == (0, 0), timeout=60, what="the journal to drain")
    wait_for(
        lambda: len(query(database_url, "SELECT 1 FROM calls WHERE call_id = ANY(%s)", list(load.ok))) == len(load.ok),
        timeout=30,
        what="every answered call's row",
    )
    assert load.statuses.get(200, 0) == len(load.ok) >= 100
    assert set(load.statuses) == {200}, load.errors
    assert_recorded_once(database_url, load)


def test_a_replica_takes_over_what_a_killed_replica_left_in_the_journal(
    start_proxy: Callable[..., Proxy], database_url: str, redis_server_url: str | None, redis_prefix: str
) -> None:
    """Deterministic take-over: entries a dead consumer read and never acknowledged are claimed.

    The entries are in the unsharded layout's stream (``<prefix>:journal``), as a replica of a version
    before the sharded layout left them: an upgraded replica drains that stream before it loads the
    credit state, then deletes it."""
    if redis_server_url is None:
        pytest.skip("no Redis server")
    client = redis.Redis.from_url(redis_server_url)
    stream = f"{redis_prefix}:journal"
    # A "replica" that read three holds from the journal and died before writing them.
    client.xgroup_create(stream, "writers", id="0", mkstream=True)
    for n in range(3):
        fields = {"k": "hold", "t": TEAM, "j": f"orphan-{n}", "y": "load", "m": "1000000", "s": "0", "i": "1"}
        client.xadd(stream, fields)  # type: ignore[arg-type]
    delivered = client.xreadgroup("writers", "dead-replica", {stream: ">"}, count=10)
    assert len(delivered[0][1]) == 3  # type: ignore[index]
    env = {"JOBS_REDIS_URL": redis_server_url, "JOBS_REDIS_PREFIX": redis_prefix, "JOBS_JOURNAL_CLAIM_IDLE_S": "1"}
    start_proxy(database_url, env=env)
    wait_for(lambda: journal_state(redis_server_url, redis_prefix) == (0, 0), timeout=60, what="the take-over")
    holds = query(database_url, "SELECT job_id, amount FROM credit_ledger WHERE kind = 'hold' ORDER BY job_id")
    assert [(h["job_id"], h["amount"]) for h in holds] == [(f"orphan-{n}", Decimal(1)) for n in range(3)]
    wait_for(lambda: not client.exists(stream), timeout=30, what="the drained stream to be deleted")
    client.close()


@pytest.fixture
def pg() -> Any:
    with own_postgres() as server:
        yield server


@pytest.fixture
def own_redis_server(tmp_path: Path) -> Any:
    with own_redis(tmp_path / "own-redis") as server:
        yield server


def gauge(proxy: Proxy, name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    r = httpx.get(f"{proxy.url}/metrics/", headers={"Authorization": "Bearer sk-master"}, timeout=30)
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    return 0.0


def call(proxy: Proxy, job: str | None, *, key: str = KEY) -> httpx.Response:
    body: dict[str, Any] = {"model": "Summarizer", "messages": [{"role": "user", "content": "hi"}]}
    if job is not None:
        body["metadata"] = {"job_id": job, "job_type": "load"}
    return httpx.post(
        f"{proxy.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60
    )


def test_postgres_down_mid_load_open_jobs_go_on_new_jobs_get_503_and_nothing_is_lost(
    start_proxy: Callable[..., Proxy], pg: OwnPostgres, own_redis_server: OwnRedis
) -> None:
    env = {
        "JOBS_REDIS_URL": own_redis_server.url,
        "JOBS_STORE_CHECK_INTERVAL_S": "0.2",
        "JOBS_JOURNAL_CLAIM_IDLE_S": "2",
    }
    proxy = start_proxy(pg.url, env=env, litellm_settings={"callbacks": ["litellm_jobs_plugin.plugin", "prometheus"]})
    proxy.grant(TEAM, 1000)
    jobs = [f"pg-{k}" for k in range(4)]
    for job in jobs:  # opened while PostgreSQL is up
        assert call(proxy, job).status_code == 200
    load = Load()

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(drive(lambda: [proxy], load, stop=stop, jobs=jobs, untagged_every=1_000_000))
        await until(lambda: len(load.ok) >= 20, within=60, what="20 calls before the outage")
        pg.stop()
        await until(lambda: proxy.health().status_code == 503, within=30, what="health to turn 503")
        during = len(load.ok)
        await until(lambda: len(load.ok) >= during + 30, within=60, what="30 calls of open jobs during the outage")
        # The records wait in the journal, and the metric shows it.
        await until(lambda: gauge(proxy, "litellm_jobs_journal_backlog") >= 30, within=30, what="the backlog metric")
        # A new job (a new hold) is refused while the database is down: JOBS_FAIL_MODE=closed.
        refused = await asyncio.to_thread(call, proxy, "pg-new-during-outage")
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["type"] == "jobs_store_unavailable"
        assert "JOBS_FAIL_MODE" in refused.json()["error"]["message"]
        health = proxy.health().json()
        assert health["status"] == "unavailable"
        assert health["store"] != "ok"
        # The readiness probe's view: this replica is fine, keep it in the Service.
        replica = await asyncio.to_thread(httpx.get, f"{proxy.url}/api/jobs/health?scope=replica", timeout=10)
        assert replica.status_code == 200, replica.text
        assert replica.json()["store"] != "ok"
        pg.start()
        await until(lambda: proxy.health().status_code == 200, within=60, what="health to be 200 again")
        after = len(load.ok)
        await until(lambda: len(load.ok) >= after + 10, within=60, what="calls after the outage")
        stop.set()
        await task

    asyncio.run(scenario())
    assert set(load.statuses) == {200}, load.errors
    wait_for(
        lambda: len(query(pg.url, "SELECT 1 FROM calls WHERE call_id = ANY(%s)", list(load.ok))) == len(load.ok),
        timeout=60,
        what="every answered call's row",
    )
    assert_recorded_once(pg.url, load)
    assert query(pg.url, "SELECT count(*) AS n FROM jobs WHERE job_id = 'pg-new-during-outage'") == [{"n": 0}]
    assert call(proxy, "pg-new-after").status_code == 200  # new jobs open again


def test_redis_down_mid_load_fails_closed_and_never_overspends(
    start_proxy: Callable[..., Proxy], database_url: str, own_redis_server: OwnRedis
) -> None:
    env = {"JOBS_REDIS_URL": own_redis_server.url, "JOBS_JOURNAL_CLAIM_IDLE_S": "2"}
    a, b = start_proxy(database_url, env=env), start_proxy(database_url, env=env)
    granted = 40
    a.grant(TEAM, granted)
    load = Load()

    async def scenario() -> None:
        stop = asyncio.Event()
        # Every call is a single-call job (untagged): each takes a hold, so credits run out mid-run.
        task = asyncio.create_task(drive(lambda: [a, b], load, stop=stop, jobs=["-"], untagged_every=1))
        await until(lambda: len(load.ok) >= 10, within=60, what="10 calls before the outage")
        own_redis_server.stop()
        await until(lambda: load.errors.get("jobs_store_unavailable", 0) >= 5, within=60, what="503s")
        await until(lambda: a.health().status_code == 503, within=30, what="health to turn 503")
        own_redis_server.start()
        await until(lambda: load.errors.get("insufficient_credits", 0) >= 5, within=120, what="credits to run out")
        stop.set()
        await task

    asyncio.run(scenario())
    assert set(load.statuses) <= {200, 402, 503}, load.statuses
    assert load.statuses[503] >= 5
    assert load.statuses[402] >= 5
    wait_for(lambda: a.health().status_code == 200, timeout=30, what="health 200 after Redis returned")
    wait_for(
        lambda: len(query(database_url, "SELECT 1 FROM calls WHERE call_id = ANY(%s)", list(load.ok))) == len(load.ok),
        timeout=60,
        what="every answered call's row",
    )
    (row,) = query(
        database_url,
        """SELECT coalesce(sum(amount) FILTER (WHERE kind = 'capture'), 0) AS charged
        FROM credit_ledger WHERE team_id = %s""",
        TEAM,
    )
    assert row["charged"] <= granted
    assert asyncio.run(reconcile_report(database_url)).clean
    balance = httpx.get(f"{a.url}/api/teams/{TEAM}", headers={"Authorization": "Bearer sk-master"}).json()
    assert Decimal(balance["credits_remaining"]) >= 0


def test_with_redis_every_answer_is_in_the_journal_before_the_client_gets_it(
    start_proxy: Callable[..., Proxy], database_url: str, redis_server_url: str | None, redis_prefix: str
) -> None:
    """A 200 means recorded: with PostgreSQL writes held back, each answered call (a cache hit
    included) is already in the journal when its answer arrives; released, all are written.

    The record is made from the answer in the post-call hook, so this holds whether LiteLLM logs a
    call's success before its post-call hooks (1.108 and before) or after them (1.109 and later)."""
    if redis_server_url is None:
        pytest.skip("no Redis server")
    import json

    import psycopg

    proxy = start_proxy(database_url, env={"JOBS_REDIS_URL": redis_server_url, "JOBS_REDIS_PREFIX": redis_prefix})
    proxy.grant(TEAM, 100)
    client = redis.Redis.from_url(redis_server_url, decode_responses=True)
    stream = RedisKeys(redis_prefix).journal_for(TEAM)

    def journaled_call_ids() -> set[str]:
        return {json.loads(f["v"]).get("call_id") for _, f in client.xrange(stream) if "v" in f}  # type: ignore[union-attr]

    blocker = psycopg.connect(database_url)
    blocker.execute("LOCK TABLE litellm_jobs.call_events IN SHARE MODE")  # the writer's inserts wait
    answered: list[str] = []
    try:
        body: dict[str, Any] = {
            "model": "Summarizer",
            "messages": [{"role": "user", "content": f"cache me {uuid.uuid4()}"}],
            "metadata": {"job_id": "journal-first", "job_type": "load"},
            "cache": {"use-cache": True},
        }
        for n in range(6):
            r = httpx.post(
                f"{proxy.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=60
            )
            assert r.status_code == 200, r.text
            call_id = r.headers["x-litellm-call-id"]
            assert call_id in journaled_call_ids(), f"answer {n} arrived before its record was journaled"
            answered.append(call_id)
        assert query(database_url, "SELECT count(*) AS n FROM calls WHERE call_id = ANY(%s)", answered) == [{"n": 0}]
    finally:
        blocker.rollback()
        blocker.close()
    wait_for(lambda: journal_state(redis_server_url, redis_prefix) == (0, 0), timeout=30, what="the journal to drain")
    rows = query(database_url, "SELECT call_id, cache_hit FROM calls WHERE call_id = ANY(%s)", answered)
    assert len(rows) == 6
    assert sum(r["cache_hit"] for r in rows) == 5  # the first answer was computed, the others cached
    log = proxy.log_path.read_text(errors="replace")
    assert "answered before its record was journaled" not in log  # no answer waited out the timeout
    client.close()


def test_with_redis_an_answer_the_plugin_cannot_read_waits_for_its_logged_record_not_the_timeout(
    start_proxy: Callable[..., Proxy],
    database_url: str,
    redis_server_url: str | None,
    redis_prefix: str,
    upstream: FakeUpstream,
) -> None:
    """An embeddings answer is not a chat completion: its record comes from LiteLLM's success event.
    Where LiteLLM logs it before the post-call hooks (1.108 and before), the answer waits for that
    record's append, never for JOBS_DURABLE_ACK_TIMEOUT_S (set to 60 s here: a wait for it would
    outlast the client's 20 s deadline); where LiteLLM logs after them, the answer does not wait."""
    if redis_server_url is None:
        pytest.skip("no Redis server")
    embedder = {
        "model_name": "Embedder",
        "litellm_params": {
            "model": "openai/text-embedding-3-small",
            "api_base": upstream.api_base("primary"),
            "api_key": "sk-fake-upstream",
        },
    }
    proxy = start_proxy(
        database_url,
        env={"JOBS_REDIS_URL": redis_server_url, "JOBS_REDIS_PREFIX": redis_prefix, "JOBS_DURABLE_ACK_TIMEOUT_S": "60"},
        model_list=[*proxy_config(upstream)["model_list"], embedder],
    )
    proxy.grant(TEAM, 100)
    job = f"embed-{uuid.uuid4().hex[:8]}"
    answered = []
    for n in range(3):
        r = httpx.post(
            f"{proxy.url}/v1/embeddings",
            json={"model": "Embedder", "input": f"text {n}", "metadata": {"job_id": job, "job_type": "load"}},
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=20,
        )
        assert r.status_code == 200, r.text
        answered.append(r.headers["x-litellm-call-id"])

    def recorded() -> list[dict[str, Any]] | None:
        rows = query(database_url, "SELECT call_id, call_type FROM calls WHERE call_id = ANY(%s)", answered)
        return rows if len(rows) == 3 else None

    rows = wait_for(recorded, timeout=30, what="the three embeddings calls recorded")
    assert {r["call_type"] for r in rows} == {"aembedding"}
    assert "answered before its record was journaled" not in proxy.log_path.read_text(errors="replace")


@pytest.mark.parametrize("with_redis", [False, True], ids=["memory", "redis"])
def test_a_call_finishing_after_its_job_completed_is_recorded_and_not_charged_again(
    start_proxy: Callable[..., Proxy],
    database_url: str,
    redis_server_url: str | None,
    redis_prefix: str,
    upstream: FakeUpstream,
    with_redis: bool,
) -> None:
    env = {"JOBS_COMPLETE_WAIT_S": "0"}  # complete answers at once, without waiting for the slow call
    if with_redis:
        if redis_server_url is None:
            pytest.skip("no Redis server")
        env |= {"JOBS_REDIS_URL": redis_server_url, "JOBS_REDIS_PREFIX": redis_prefix}
    proxy = start_proxy(database_url, env=env)
    proxy.grant(TEAM, 10)
    job = f"late-{uuid.uuid4().hex[:8]}"
    assert call(proxy, job).status_code == 200

    async def scenario() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(timeout=60, headers={"Authorization": f"Bearer {KEY}"}) as client:
            body = {
                "model": "Summarizer",
                "messages": [{"role": "user", "content": "slow [delay:3]"}],
                "metadata": {"job_id": job, "job_type": "load"},
            }
            before = upstream.stats().get("_total", 0)
            slow = asyncio.create_task(client.post(f"{proxy.url}/v1/chat/completions", json=body))
            # Once the upstream has the slow call, it was admitted to the job: complete the job now.
            await until(lambda: upstream.stats().get("_total", 0) > before, within=30, what="the slow call upstream")
            done = await client.post(f"{proxy.url}/api/jobs/{job}/complete", json={"status": "completed"})
            return done, await slow

    done, slow = asyncio.run(scenario())
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "completed"
    assert slow.status_code == 200, slow.text
    late_id = slow.headers["x-litellm-call-id"]
    wait_for(
        lambda: query(database_url, "SELECT job_id FROM calls WHERE call_id = %s", late_id) == [{"job_id": job}],
        timeout=30,
        what="the late call's row, attached to its job",
    )
    (row,) = query(
        database_url,
        "SELECT status, total_calls, total_cost_usd, credits_charged FROM jobs WHERE job_id = %s",
        job,
    )
    (sums,) = query(database_url, "SELECT count(*) AS n, sum(cost_usd) AS cost FROM calls WHERE job_id = %s", job)
    assert (row["status"], row["total_calls"], row["total_cost_usd"]) == ("completed", 2, sums["cost"])
    assert row["credits_charged"] == Decimal(1)
    captures = query(
        database_url, "SELECT count(*) AS n FROM credit_ledger WHERE job_id = %s AND kind = 'capture'", job
    )
    assert captures == [{"n": 1}]


def test_without_redis_a_postgres_outage_fails_tracked_calls_closed_and_loses_nothing(
    start_proxy: Callable[..., Proxy], pg: OwnPostgres
) -> None:
    """One replica, no Redis: while its database is down, a tracked call is answered or gets a
    clear 503; once it is back, calls flow again and every answered call is recorded once."""
    proxy = start_proxy(pg.url, env={"JOBS_STORE_CHECK_INTERVAL_S": "0.2"})
    proxy.grant(TEAM, 1000)
    jobs = [f"mem-{k}" for k in range(3)]
    load = Load()

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(drive(lambda: [proxy], load, stop=stop, jobs=jobs, concurrency=4))
        await until(lambda: len(load.ok) >= 20, within=60, what="20 calls before the outage")
        pg.stop()
        await until(lambda: proxy.health().status_code == 503, within=30, what="health to turn 503")
        await until(lambda: load.errors.get("jobs_store_unavailable", 0) >= 3, within=60, what="503s")
        pg.start()
        await until(lambda: proxy.health().status_code == 200, within=60, what="health to be 200 again")
        after = len(load.ok)
        await until(lambda: len(load.ok) >= after + 20, within=60, what="calls after the outage")
        stop.set()
        await task

    asyncio.run(scenario())
    assert set(load.statuses) <= {200, 503}, load.errors
    assert set(load.errors) <= {"jobs_store_unavailable"}
    wait_for(
        lambda: len(query(pg.url, "SELECT 1 FROM calls WHERE call_id = ANY(%s)", list(load.ok))) == len(load.ok),
        timeout=60,
        what="every answered call's row",
    )
    assert_recorded_once(pg.url, load)
    ledger = query(
        pg.url,
        """SELECT coalesce(sum(amount) FILTER (WHERE kind = 'capture'), 0) AS charged,
        coalesce(sum(amount) FILTER (WHERE kind = 'hold'), 0)
          - coalesce(sum(amount) FILTER (WHERE kind IN ('capture', 'release')), 0) AS held
        FROM credit_ledger WHERE team_id = %s""",
        TEAM,
    )
    assert ledger[0]["charged"] + ledger[0]["held"] <= 1000


def test_a_proxy_started_while_redis_is_down_serves_once_redis_is_back(
    start_proxy: Callable[..., Proxy], database_url: str, own_redis_server: OwnRedis
) -> None:
    """Start-up waits for Redis instead of failing for good: meanwhile tracked calls get a clear 503
    (still starting), and once Redis answers the same process serves them."""
    own_redis_server.stop()
    proxy = start_proxy(database_url, env={"JOBS_REDIS_URL": own_redis_server.url}, wait=False)
    wait_for(lambda: "Redis does not answer" in proxy.log_tail(200), timeout=120, what="the start-up to wait for Redis")
    r = call(proxy, "waits-for-redis")
    assert r.status_code == 503, r.text
    assert r.json()["error"]["type"] == "jobs_store_unavailable"
    own_redis_server.start()
    proxy.wait_ready(timeout=60)
    proxy.grant(TEAM, 10)
    assert call(proxy, "waits-for-redis").status_code == 200
    assert "ready on" in proxy.log_tail(400)
