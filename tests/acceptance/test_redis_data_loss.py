"""A Redis that forgets, end to end: a real proxy on a redis-server of the test's own, FLUSHDB
mid-life. Open jobs go on with their one hold, new jobs respect the balance, the books stay exact."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
import redis

from tests.acceptance.test_reliability import TEAM, call, reconcile_report
from tests.conftest import query
from tests.support.outages import OwnRedis, own_redis
from tests.support.services import Proxy, wait_for

pytestmark = pytest.mark.single_mode("one proxy on a Redis of the test's own, which it empties (FLUSHDB)")


@pytest.fixture
def own(tmp_path: Path) -> Iterator[OwnRedis]:
    with own_redis(tmp_path / "own-redis") as server:
        yield server


def ledger(url: str) -> dict[str, int]:
    rows = query(url, "SELECT kind, count(*) AS n FROM credit_ledger WHERE team_id = %s GROUP BY kind", TEAM)
    return {r["kind"]: int(r["n"]) for r in rows}


def test_after_a_flushdb_open_jobs_keep_their_one_hold_and_new_jobs_respect_the_balance(
    start_proxy: Callable[..., Proxy], database_url: str, own: OwnRedis
) -> None:
    proxy = start_proxy(database_url, env={"JOBS_REDIS_URL": own.url, "JOBS_JOURNAL_CLAIM_IDLE_S": "2"})
    proxy.grant(TEAM, 3)
    assert call(proxy, "open-1").status_code == 200
    assert call(proxy, "open-2").status_code == 200  # 1 credit left, 2 held
    wait_for(lambda: ledger(database_url).get("hold") == 2, timeout=30, what="both holds in PostgreSQL")

    client = redis.Redis.from_url(own.url)
    try:
        client.flushdb()  # the test's own redis-server
    finally:
        client.close()

    assert call(proxy, "open-1").status_code == 200  # an open job goes on: no second hold
    new = [call(proxy, f"new-{n}") for n in range(2)]
    assert sorted(r.status_code for r in new) == [200, 402]  # 1 credit left: one new job, not two
    done = httpx.post(
        f"{proxy.url}/api/jobs/open-1/complete",
        json={"status": "completed"},
        headers={"Authorization": "Bearer sk-team-a"},
        timeout=30,
    )
    assert done.status_code == 200, done.text
    wait_for(lambda: ledger(database_url).get("capture") == 1, timeout=30, what="the capture")
    wait_for(lambda: proxy.health().json()["writer"]["buffer_depth"] == 0, timeout=30, what="the journal to drain")
    assert ledger(database_url) == {"grant": 1, "hold": 3, "capture": 1}
    holds = query(database_url, "SELECT job_id FROM credit_ledger WHERE kind = 'hold' AND job_id = 'open-1'")
    assert len(holds) == 1
    balance = httpx.get(f"{proxy.url}/api/teams/{TEAM}", headers={"Authorization": "Bearer sk-master"}).json()
    assert (Decimal(balance["credits_remaining"]), Decimal(balance["credits_held"])) == (Decimal(0), Decimal(2))
    assert asyncio.run(reconcile_report(database_url)).clean
    assert "loading it from PostgreSQL" in proxy.log_path.read_text(errors="replace")
