"""Usage export from a real proxy: sinks and customers set through the admin routes, jobs closed
through the API, events at a local Stripe-shaped receiver; a proxy killed (SIGKILL) in the middle
of an export, and a new one that resumes from the cursor with the same ids."""

from __future__ import annotations

import signal
from collections.abc import Callable

import httpx
import pytest

from litellm_jobs_plugin.billing.events import job_event_id
from tests.conftest import query
from tests.support.billing_receivers import Receiver
from tests.support.services import Proxy, wait_for

ADMIN = {"Authorization": "Bearer sk-master"}
TEAM_A = {"Authorization": "Bearer sk-team-a"}
EXPORT_ENV = {"JOBS_EXPORT_INTERVAL_S": "0.2", "JOBS_EXPORT_DELAY_S": "0"}

pytestmark = pytest.mark.single_mode("kills one proxy with SIGKILL mid-export and starts the next one")


def close_jobs(proxy: Proxy, ids: list[str]) -> None:
    for job_id in ids:
        r = httpx.post(
            f"{proxy.url}/api/jobs/create", json={"job_id": job_id, "job_type": "chat"}, headers=TEAM_A, timeout=30
        )
        assert r.status_code == 201, r.text
        r = httpx.post(
            f"{proxy.url}/api/jobs/{job_id}/complete", json={"status": "completed"}, headers=TEAM_A, timeout=30
        )
        assert r.status_code == 200, r.text


def test_a_proxy_killed_mid_export_is_resumed_by_the_next_one(
    start_proxy: Callable[..., Proxy], database_url: str
) -> None:
    with Receiver("stripe").running() as receiver:
        proxy = start_proxy(database_url, env=EXPORT_ENV)
        proxy.grant("team-a", "100")
        sink = {"kind": "stripe", "url": receiver.url, "api_key": receiver.api_key, "options": {"value": "credits"}}
        r = httpx.put(f"{proxy.url}/api/billing/sinks/stripe-meter", json=sink, headers=ADMIN, timeout=30)
        assert r.status_code == 200, r.text
        assert "api_key" not in r.json()
        assert r.json()["api_key_set"] is True
        r = httpx.put(
            f"{proxy.url}/api/billing/sinks/stripe-meter/customers/team-a",
            json={"customer_id": "cus_TeamA"},
            headers=ADMIN,
            timeout=30,
        )
        assert r.status_code == 200, r.text
        assert httpx.get(f"{proxy.url}/api/billing/sinks", headers=TEAM_A, timeout=30).status_code == 403

        jobs = [f"job-{i}" for i in range(6)]
        expected = [job_event_id("team-a", j, "completed") for j in jobs]
        # The receiver takes two events, then holds the third request: the proxy dies mid-export.
        original = receiver.parse

        def parse_then_hold(path: str, headers: dict[str, str], body: bytes) -> list[dict[str, str]]:
            events = original(path, headers, body)
            if len(receiver.received) >= 1:
                receiver.hold.set()
            return events  # type: ignore[return-value]

        receiver.parse = parse_then_hold  # type: ignore[method-assign]
        close_jobs(proxy, jobs)
        wait_for(lambda: receiver.holding >= 1, timeout=30, what="the export to be held mid-delivery")
        proxy.stop(sig=signal.SIGKILL, timeout=10)
        receiver.parse = original  # type: ignore[method-assign]
        receiver.hold.clear()
        [cursor] = query(database_url, "SELECT exported FROM export_cursors WHERE sink = 'stripe-meter'")
        assert 1 <= cursor["exported"] < len(jobs)

        start_proxy(database_url, env=EXPORT_ENV)
        wait_for(lambda: set(receiver.ids()) == set(expected), timeout=60, what="every job's event")
        ids = receiver.ids()
        assert len(ids) - len(set(ids)) <= 1  # at most the request in flight at the kill is sent twice
        assert all(
            e["payload[value]"] == "1" and e["payload[stripe_customer_id]"] == "cus_TeamA" for e in receiver.events
        )
        [cursor] = query(database_url, "SELECT exported, last_error FROM export_cursors WHERE sink = 'stripe-meter'")
        assert cursor == {"exported": len(jobs), "last_error": None}
