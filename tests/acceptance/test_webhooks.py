"""Webhooks through a real proxy, in each credit mode: every state change reaches a receiver that
verifies each signature with ``standardwebhooks``, exactly once by webhook-id, although the receiver
answered 500, timed out, or the proxy was killed with SIGKILL mid-delivery; and hostile input to the
admin routes is a 4xx in OpenAI's error JSON."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from typing import Any

import httpx
import pytest

from tests.acceptance.helpers import client
from tests.conftest import query
from tests.support.services import Proxy, wait_for
from tests.support.webhook_receiver import Received, Receiver

ADMIN = "sk-master"
TEAM, KEY = "team-e", "sk-team-e"
FAST = {
    "JOBS_WEBHOOK_TIMEOUT_S": "1",
    "JOBS_WEBHOOK_BACKOFF_BASE_S": "0.1",
    "JOBS_WEBHOOK_BACKOFF_MAX_S": "0.4",
    "JOBS_WEBHOOK_POLL_S": "0.1",
    "JOBS_WEBHOOK_JOB_SETTLE_S": "0.5",
    "JOBS_WEBHOOK_STANDBY_S": "0.5",
}


def call(proxy: Proxy, method: str, path: str, body: Any = None, key: str = ADMIN) -> httpx.Response:
    return httpx.request(
        method, f"{proxy.url}{path}", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60
    )


def register(proxy: Proxy, receiver: Receiver, **body: Any) -> dict[str, Any]:
    r = call(proxy, "POST", "/api/webhooks/endpoints", {"url": receiver.url, **body})
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    assert created["secret"].startswith("whsec_")
    receiver.secrets.append(created["secret"])
    return created


def chat(proxy: Proxy, job_id: str | None = None) -> None:
    extra = {"metadata": {"job_id": job_id, "job_type": "document_analysis"}} if job_id else {}
    client(proxy, KEY).chat.completions.create(
        model="ChatAgent", messages=[{"role": "user", "content": "hello"}], extra_body=extra
    )


def create(proxy: Proxy, job_id: str) -> None:
    r = call(proxy, "POST", "/api/jobs/create", {"job_type": "document_analysis", "job_id": job_id}, KEY)
    assert r.status_code == 201, r.text


def complete(proxy: Proxy, job_id: str, status: str) -> None:
    r = call(proxy, "POST", f"/api/jobs/{job_id}/complete", {"status": status}, KEY)
    assert r.status_code == 200, r.text


def settled(receiver: Receiver, count: int, timeout: float = 90) -> list[dict[str, Any]]:
    """The receiver's events once it accepted ``count`` distinct ones (and no more came for a while)."""
    wait_for(lambda: len(receiver.events()) >= count, timeout=timeout, what=f"{count} webhooks")
    time.sleep(2.0)
    got = receiver.events()
    assert len(got) == count, [e["type"] for e in got]
    return got


def test_every_state_change_arrives_once_signed_through_500s_and_timeouts(
    start_proxy: Any, database_url: str, credit_mode: dict[str, str]
) -> None:
    def unreliable(_: Received, before: int) -> tuple[int, float]:
        if before == 0:
            return 500, 0.0
        if before == 1:
            return 200, 1.5  # answered after the sender's 1 s timeout: a failed attempt
        return 200, 0.0

    receiver = Receiver([], unreliable)
    env = {
        **credit_mode,
        **FAST,
        "JOBS_FAILURE_ALLOWANCE_USD": "0.0000001",
        "JOBS_IDLE_TIMEOUT_S": "3",
        "JOBS_REAPER_INTERVAL_S": "0.5",
    }
    with receiver.running():
        proxy = start_proxy(database_url, env=env)
        register(proxy, receiver, team_id=TEAM)
        r = call(proxy, "PUT", f"/api/webhooks/teams/{TEAM}", {"credits_low_threshold": "3"})
        assert r.json() == {"team_id": TEAM, "credits_low_threshold": "3"}, r.text
        proxy.grant(TEAM, 5)  # credits.granted; remaining 5
        create(proxy, "job-a")
        chat(proxy, "job-a")
        complete(proxy, "job-a", "completed")  # job.completed; remaining 4
        create(proxy, "job-c")  # left idle: expired by the reaper (job.expired), its hold released
        wait_for(
            lambda: call(proxy, "GET", "/api/jobs/job-c", key=KEY).json()["status"] == "expired",
            timeout=30,
            what="job-c to expire",
        )
        chat(proxy)  # an untagged call: a single-call job, job.completed; remaining 3
        create(proxy, "job-d")  # remaining 2: credits.low
        create(proxy, "job-e")
        create(proxy, "job-f")  # remaining 0: credits.exhausted
        chat(proxy, "job-d")
        complete(proxy, "job-d", "failed")  # job.failed; its cost passes the allowance: failure_allowance.exhausted
        complete(proxy, "job-e", "completed")
        complete(proxy, "job-f", "failed")
        got = settled(receiver, 10)

        assert Counter(e["type"] for e in got) == {
            "credits.granted": 1,
            "job.completed": 3,
            "job.expired": 1,
            "job.failed": 2,
            "credits.low": 1,
            "credits.exhausted": 1,
            "failure_allowance.exhausted": 1,
        }
        # Every request carried a valid signature; a retry repeats the webhook-id and the body.
        assert all(r.verified_by == [0] for r in receiver.received)
        for webhook_id in {r.webhook_id for r in receiver.received}:
            attempts = [r for r in receiver.received if r.webhook_id == webhook_id]
            assert len({a.body for a in attempts}) == 1
            assert [a.answered for a in attempts][:2] == [500, 200]
        # One event per state change in the outbox, each delivered.
        rows = query(database_url, "SELECT status FROM webhook_deliveries")
        assert [r["status"] for r in rows] == ["delivered"] * 10
        # A job's event carries what GET /api/jobs/{id} shows.
        for e in got:
            if e["type"].startswith("job."):
                shown = call(proxy, "GET", f"/api/jobs/{e['data']['job_id']}", key=KEY).json()
                assert e["data"].keys() == shown.keys()
                for field in ("status", "job_type", "total_calls", "total_cost_usd", "credits_charged"):
                    assert e["data"][field] == shown[field], (e["type"], field)
        by_type = {e["type"]: e for e in got}
        assert by_type["credits.low"]["data"]["credits_low_threshold"] == "3"
        assert by_type["credits.low"]["data"]["credits_remaining"] == "2"
        assert by_type["credits.exhausted"]["data"]["credits_remaining"] == "0"
        assert by_type["failure_allowance.exhausted"]["data"]["job_id"] == "job-d"
        assert by_type["credits.granted"]["data"]["grant"]["amount"] == "5"


@pytest.mark.single_mode("kills one proxy with SIGKILL mid-delivery and starts the next one")
def test_a_delivery_cut_by_kill_9_is_sent_again_by_the_next_proxy(start_proxy: Any, database_url: str) -> None:
    in_flight = threading.Event()

    def slow_first(_: Received, before: int) -> tuple[int, float]:
        if before == 0:
            in_flight.set()
            return 200, 3.0  # the proxy is killed while it waits for this answer
        return 200, 0.0

    receiver = Receiver([], slow_first)
    env = {**FAST, "JOBS_WEBHOOK_TIMEOUT_S": "5"}
    with receiver.running():
        first = start_proxy(database_url, env=env)
        register(first, receiver, event_types=["credits.granted", "job.completed"])
        first.grant(TEAM, 3)
        assert in_flight.wait(timeout=30), "the webhook never left"
        first.stop(sig=signal.SIGKILL, timeout=10)
        second = start_proxy(database_url, env=env)  # its worker takes the lock the dead one held
        second.grant(TEAM, 2)
        create(second, "job-k")
        complete(second, "job-k", "completed")
        got = settled(receiver, 3, timeout=120)
    assert sorted(e["type"] for e in got) == ["credits.granted", "credits.granted", "job.completed"]
    # The team's two grants reached it in their order (the second waited for the first's redelivery).
    assert [e["data"]["grant"]["amount"] for e in got if e["type"] == "credits.granted"] == ["3", "2"]
    assert all(r.verified_by == [0] for r in receiver.received)
    first_id = receiver.received[0].webhook_id
    assert sum(1 for r in receiver.received if r.webhook_id == first_id) >= 2  # at least once: sent again
    assert len(query(database_url, "SELECT event_id FROM webhook_events")) == 3


HOSTILE: list[tuple[str, str, Any]] = [
    ("POST", "/api/webhooks/endpoints", {}),
    ("POST", "/api/webhooks/endpoints", {"url": "ftp://example.com/x"}),
    ("POST", "/api/webhooks/endpoints", {"url": "http://"}),
    ("POST", "/api/webhooks/endpoints", {"url": "http://example.com:99999/x"}),
    ("POST", "/api/webhooks/endpoints", {"url": "http://exa mple.com/"}),
    ("POST", "/api/webhooks/endpoints", {"url": "http://example.com/" + "a" * 5000}),
    ("POST", "/api/webhooks/endpoints", {"url": "http://example.com/\u0000"}),
    ("POST", "/api/webhooks/endpoints", {"url": 42}),
    ("POST", "/api/webhooks/endpoints", {"url": "http://example.com/", "event_types": []}),
    ("POST", "/api/webhooks/endpoints", {"url": "http://example.com/", "event_types": ["job.exploded"]}),
    ("POST", "/api/webhooks/endpoints", {"url": "http://example.com/", "event_types": "job.completed"}),
    ("POST", "/api/webhooks/endpoints", {"url": "http://example.com/", "event_types": [{"a": 1}]}),
    ("POST", "/api/webhooks/endpoints", {"url": "http://example.com/", "team_id": "bad\nteam"}),
    ("POST", "/api/webhooks/endpoints", {"url": "http://example.com/", "team_id": ["x"]}),
    ("POST", "/api/webhooks/endpoints", {"url": "http://example.com/", "description": "a\u0007"}),
    ("POST", "/api/webhooks/endpoints", [1, 2]),
    ("POST", "/api/webhooks/endpoints/we_nope/rotate-secret", {}),
    ("POST", "/api/webhooks/endpoints/we_%00/rotate-secret", {}),
    ("GET", "/api/webhooks/endpoints/we_missing0", None),
    ("GET", "/api/webhooks/endpoints/" + "x" * 3000, None),
    ("DELETE", "/api/webhooks/endpoints/we_missing0", None),
    ("DELETE", "/api/webhooks/endpoints/%F0%9F%92%A3", None),
    ("GET", "/api/webhooks/dead-letters?limit=0", None),
    ("GET", "/api/webhooks/dead-letters?limit=abc", None),
    ("GET", "/api/webhooks/dead-letters?endpoint_id=nope", None),
    ("POST", "/api/webhooks/dead-letters/retry", {"event_ids": []}),
    ("POST", "/api/webhooks/dead-letters/retry", {"event_ids": ["drop table"]}),
    ("POST", "/api/webhooks/dead-letters/retry", {"event_ids": "evt_x"}),
    ("PUT", "/api/webhooks/teams/team-a", {"credits_low_threshold": "-1"}),
    ("PUT", "/api/webhooks/teams/team-a", {"credits_low_threshold": "NaN"}),
    ("PUT", "/api/webhooks/teams/team-a", {"credits_low_threshold": "1e400"}),
    ("PUT", "/api/webhooks/teams/team-a", {"credits_low_threshold": "0.0000001"}),
    ("PUT", "/api/webhooks/teams/team-a", {"credits_low_threshold": {"x": 1}}),
    ("PUT", "/api/webhooks/teams/%20", {"credits_low_threshold": "1"}),
    ("GET", "/api/webhooks/teams/" + "t" * 500, None),
]


def test_hostile_input_to_the_webhook_routes_is_a_4xx_in_openai_error_json(start_proxy: Any, database_url: str) -> None:
    proxy = start_proxy(database_url)
    for method, path, body in HOSTILE:
        r = call(proxy, method, path, body)
        assert 400 <= r.status_code < 500, (method, path, body, r.status_code, r.text)
        assert "error" in r.json(), (method, path, r.status_code, r.text)
        error = r.json()["error"]
        assert error["message"]
        assert error["type"]
    raw = httpx.post(
        f"{proxy.url}/api/webhooks/endpoints",
        content=b'{"url": "http://example.com/", "event_types": ["job.completed"',
        headers={"Authorization": f"Bearer {ADMIN}", "content-type": "application/json"},
        timeout=30,
    )
    assert raw.status_code == 400
    # A team key may not see nor manage webhooks.
    for method, path in (("GET", "/api/webhooks/endpoints"), ("GET", "/api/webhooks/status")):
        r = call(proxy, method, path, key="sk-team-a")
        assert r.status_code == 403
        assert r.json()["error"]["type"] == "forbidden"
    r = call(proxy, "POST", "/api/webhooks/endpoints", {"url": "http://example.com/"}, key="sk-team-a")
    assert r.status_code == 403
    # What the admin does: add, list (no secret), rotate, remove.
    r = call(proxy, "POST", "/api/webhooks/endpoints", {"url": "https://example.com/h", "team_id": "team-a"})
    assert r.status_code == 201
    endpoint = r.json()
    listed = call(proxy, "GET", "/api/webhooks/endpoints").json()["endpoints"]
    assert [e["endpoint_id"] for e in listed] == [endpoint["endpoint_id"]]
    assert "secret" not in listed[0]
    rotated = call(proxy, "POST", f"/api/webhooks/endpoints/{endpoint['endpoint_id']}/rotate-secret", {"overlap_s": 60})
    assert rotated.status_code == 200
    assert rotated.json()["secret"] != endpoint["secret"]
    assert call(proxy, "GET", "/api/webhooks/status").json()["dead_letters"] == 0
    assert call(proxy, "DELETE", f"/api/webhooks/endpoints/{endpoint['endpoint_id']}").status_code == 200
    assert call(proxy, "DELETE", f"/api/webhooks/endpoints/{endpoint['endpoint_id']}").status_code == 404


def test_the_worker_command_delivers_for_proxies_that_do_not(
    start_proxy: Any, database_url: str, tmp_path: Any
) -> None:
    """Proxies with delivery and export off spend nothing on them; `litellm-jobs worker` delivers instead."""
    import subprocess
    import sys

    from tests.support.services import ROOT, clean_env, stop_process

    receiver = Receiver([], lambda _r, _n: (200, 0.0))
    quiet = {**FAST, "JOBS_WEBHOOKS_ENABLED": "false", "JOBS_EXPORT_INTERVAL_S": "0"}
    with receiver.running():
        proxy = start_proxy(database_url, env=quiet)
        register(proxy, receiver, event_types=["credits.granted"])
        proxy.grant(TEAM, 3)
        # Written with the grant, and waiting: no proxy delivers.
        assert len(query(database_url, "SELECT event_id FROM webhook_events")) == 1
        assert receiver.events() == []
        log = (tmp_path / "worker.log").open("wb")
        worker = subprocess.Popen(
            [str(ROOT / ".venv" / "bin" / "litellm-jobs"), "worker"]
            if (ROOT / ".venv" / "bin" / "litellm-jobs").exists()
            else [sys.executable, "-m", "litellm_jobs_plugin.cli", "worker"],
            env={**clean_env(), **FAST, "JOBS_DATABASE_URL": database_url},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            got = settled(receiver, 1, timeout=60)
        finally:
            code = stop_process(worker, timeout=30)
            log.close()
    assert [e["type"] for e in got] == ["credits.granted"]
    assert code == 0, (tmp_path / "worker.log").read_text()
    assert "litellm-jobs worker: stopped" in (tmp_path / "worker.log").read_text()
