"""What a client just wrote is what it reads next, in every credit mode and from any replica.

With Redis, a job's hold reaches PostgreSQL through the journal, whose reader may write it before
the route that created the job writes its row: the row must still be the route's (pending, with its
caps and metadata), and be visible the moment create answers. In the postgres and redis credit modes
"the proxy" is two replicas behind a round-robin front (tests/conftest.py): requests alternate between
them, so the read right after a write goes to the other replica.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import httpx

from tests.acceptance.helpers import TEAM_A, api, client, tag
from tests.support.services import Proxy, wait_for


def test_a_created_job_is_pending_with_its_caps_and_listed_at_once(
    start_proxy: Callable[..., Proxy], database_url: str
) -> None:
    proxy = start_proxy(database_url)
    proxy.grant("team-a", 100)
    prefix = f"ryw-{uuid.uuid4().hex[:6]}"
    for n in range(20):
        job_id = f"{prefix}-{n}"
        created = httpx.post(
            f"{proxy.url}/api/jobs/create",
            json={"job_type": "x", "job_id": job_id, "max_calls": 3, "metadata": {"n": n}},
            headers={"Authorization": f"Bearer {TEAM_A}"},
            timeout=30,
        )
        assert created.status_code == 201, created.text
        assert created.json()["status"] == "pending", (n, created.json())
        job = api(proxy, f"/api/jobs/{job_id}").json()
        assert (job["status"], job["max_calls"], job["metadata"]) == ("pending", 3, {"n": n}), (n, job)
        listed = api(proxy, "/api/jobs", status="pending", limit=100).json()
        assert job_id in {j["job_id"] for j in listed["jobs"]}, n


def test_a_job_opened_by_a_call_is_readable_right_after_the_answer(
    start_proxy: Callable[..., Proxy], database_url: str
) -> None:
    proxy = start_proxy(database_url)
    proxy.grant("team-a", 100)
    oai = client(proxy)
    for n in range(10):
        job_id = f"ryw-call-{uuid.uuid4().hex[:6]}-{n}"
        oai.chat.completions.create(
            model="ChatAgent", messages=[{"role": "user", "content": "hi"}], extra_body=tag(job_id)
        )
        # Never a 404 for a job whose call was just answered: the job, at once.
        assert api(proxy, f"/api/jobs/{job_id}").status_code == 200, n
        assert api(proxy, f"/api/jobs/{job_id}/calls").status_code == 200, n
        # And its call shortly after (the record is written off the request path).
        wait_for(
            lambda job_id=job_id: len(api(proxy, f"/api/jobs/{job_id}/calls").json()["calls"]) == 1,  # type: ignore[misc]
            timeout=5,
            what=f"the call of {job_id}",
        )
