"""Two real proxy replicas sharing PostgreSQL and Redis: credits stay exact under concurrency."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest

from tests.acceptance.test_reliability import reconcile_report
from tests.conftest import query
from tests.support.services import FakeUpstream, Proxy, wait_for

pytestmark = pytest.mark.single_mode(
    "starts its own two replicas in each of its modes (Redis, Redis Cluster, PostgreSQL)",
)


@pytest.fixture(params=["redis", "cluster", "postgres"])
def replicas(
    request: pytest.FixtureRequest,
    start_proxy: Callable[..., Proxy],
    database_url: str,
    redis_server_url: str | None,
    redis_prefix: str,
) -> list[Proxy]:
    """Two replicas on one database: holds in Redis (one Redis, or a three-master Redis Cluster), or
    (no Redis) in PostgreSQL — the first replica starts alone and decides in memory, and hands over to
    PostgreSQL when the second one arrives."""
    env = {"JOBS_IDLE_TIMEOUT_S": "10", "JOBS_REAPER_INTERVAL_S": "0.2"}
    if request.param == "redis":
        if redis_server_url is None:
            pytest.skip("no Redis server (JOBS_TEST_REDIS_URL unset and no redis-server binary)")
        env |= {"JOBS_REDIS_URL": redis_server_url, "JOBS_REDIS_PREFIX": redis_prefix}
    if request.param == "cluster":
        env |= {"JOBS_REDIS_URL": request.getfixturevalue("redis_cluster_url"), "JOBS_REDIS_PREFIX": redis_prefix}
    first = start_proxy(database_url, env=env)
    second = start_proxy(database_url, env=env)
    if request.param == "postgres":
        wait_for(
            lambda: "moving credits to PostgreSQL" in first.log_path.read_text(errors="replace"),
            timeout=30,
            what="the first replica to hand its credits over",
        )
    return [first, second]


async def fire(replicas: list[Proxy], team_key: str, n: int, content: str, model: str) -> list[int]:
    clients = [openai.AsyncOpenAI(base_url=p.url, api_key=team_key, max_retries=0, timeout=120) for p in replicas]

    async def one(i: int) -> int:
        try:
            await clients[i % len(clients)].chat.completions.create(
                model=model, messages=[{"role": "user", "content": f"{content} #{i}"}]
            )
            return 200
        except openai.APIStatusError as exc:
            if exc.status_code == 402:
                body: Any = exc.body
                assert body["type"] == "insufficient_credits"
            return exc.status_code

    try:
        return list(await asyncio.gather(*(one(i) for i in range(n))))
    finally:
        for c in clients:
            await c.close()


def team(proxy: Proxy, team_id: str) -> dict[str, Any]:
    r = httpx.get(f"{proxy.url}/api/teams/{team_id}", headers={"Authorization": "Bearer sk-master"}, timeout=30)
    body: dict[str, Any] = r.json()
    return body


def ledger(url: str, team_id: str) -> dict[str, Any]:
    (row,) = query(
        url,
        """SELECT
        coalesce(sum(amount) FILTER (WHERE kind IN ('grant', 'adjust')), 0) AS allocated,
        coalesce(sum(amount) FILTER (WHERE kind = 'capture'), 0) AS charged,
        coalesce(sum(amount) FILTER (WHERE kind = 'hold'), 0)
          - coalesce(sum(amount) FILTER (WHERE kind IN ('capture', 'release')), 0) AS held,
        count(*) FILTER (WHERE kind = 'hold') AS holds, count(*) FILTER (WHERE kind = 'capture') AS captures,
        count(*) FILTER (WHERE kind = 'release') AS releases
        FROM credit_ledger WHERE team_id = %s""",
        team_id,
    )
    return row


def test_ten_credits_buy_exactly_ten_jobs_across_two_replicas(
    replicas: list[Proxy], upstream: FakeUpstream, database_url: str
) -> None:
    replicas[0].grant("team-c", 10)
    before = upstream.stats().get("primary", 0)
    statuses = asyncio.run(fire(replicas, "sk-team-c", 200, "new single-call job", "ChatAgent"))
    assert statuses.count(200) == 10, sorted(set(statuses))
    assert statuses.count(402) == 190
    assert upstream.stats().get("primary", 0) - before == 10

    def settled() -> dict[str, Any] | None:
        row = ledger(database_url, "team-c")
        return row if row["captures"] == 10 else None

    row = wait_for(settled, timeout=30, what="10 captures in the ledger")
    assert (row["allocated"], row["charged"], row["held"]) == (10, 10, 0)
    assert row["allocated"] - row["charged"] - row["held"] == 0
    for proxy in replicas:
        t = team(proxy, "team-c")
        assert (t["credits_remaining"], t["credits_held"], t["credits_charged"]) == (0, 0, 10)
    (account,) = query(database_url, "SELECT * FROM credit_accounts WHERE team_id = 'team-c'")
    assert (account["credits_remaining"], account["credits_held"], account["credits_charged"]) == (0, 0, 10)
    jobs = query(database_url, "SELECT status, count(*) AS n FROM jobs WHERE team_id = 'team-c' GROUP BY status")
    assert jobs == [{"status": "completed", "n": 10}]
    assert asyncio.run(reconcile_report(database_url)).clean  # what `litellm-jobs reconcile` checks


def test_failing_jobs_release_their_holds_and_cost_nothing(
    replicas: list[Proxy], upstream: FakeUpstream, database_url: str
) -> None:
    replicas[1].grant("team-c", 10)
    before = upstream.stats().get("primary", 0)
    statuses = asyncio.run(fire(replicas, "sk-team-c", 200, "[fail:500] doomed", "Summarizer"))
    failed = statuses.count(500)
    assert failed >= 10
    assert statuses.count(402) == 200 - failed
    assert upstream.stats().get("primary", 0) - before == failed

    def settled() -> dict[str, Any] | None:
        row = ledger(database_url, "team-c")
        return row if row["releases"] == failed and row["held"] == 0 else None

    row = wait_for(settled, timeout=30, what="every hold released")
    assert (row["allocated"], row["charged"], row["holds"], row["captures"]) == (10, 0, failed, 0)
    for proxy in replicas:
        t = team(proxy, "team-c")
        assert (t["credits_remaining"], t["credits_held"], t["credits_charged"]) == (10, 0, 0)


def test_an_idle_job_is_expired_by_the_reaper_and_its_hold_released(replicas: list[Proxy], database_url: str) -> None:
    replicas[0].grant("team-c", 3)
    job_id = f"idle-{uuid.uuid4().hex[:8]}"
    openai.OpenAI(base_url=replicas[0].url, api_key="sk-team-c", max_retries=0).chat.completions.create(
        model="ChatAgent",
        messages=[{"role": "user", "content": "start and walk away"}],
        extra_body={"metadata": {"job_id": job_id, "job_type": "walkaway"}},
    )
    assert team(replicas[1], "team-c")["credits_held"] == 1

    def expired() -> bool:
        rows = query(database_url, "SELECT status FROM jobs WHERE team_id = 'team-c' AND job_id = %s", job_id)
        return bool(rows) and rows[0]["status"] == "expired"

    wait_for(expired, timeout=60, what="the reaper to expire the idle job")  # JOBS_IDLE_TIMEOUT_S=10
    t = team(replicas[1], "team-c")
    assert (t["credits_remaining"], t["credits_held"], t["credits_charged"]) == (3, 0, 0)
    row = ledger(database_url, "team-c")
    assert (row["holds"], row["releases"], row["captures"]) == (1, 1, 0)
    with pytest.raises(openai.APIStatusError) as info:
        openai.OpenAI(base_url=replicas[1].url, api_key="sk-team-c", max_retries=0).chat.completions.create(
            model="ChatAgent",
            messages=[{"role": "user", "content": "too late"}],
            extra_body={"metadata": {"job_id": job_id, "job_type": "walkaway"}},
        )
    assert info.value.status_code == 409
    assert Decimal(str(t["credits_remaining"])) == 3
