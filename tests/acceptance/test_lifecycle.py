"""Job lifecycle and credits through a real proxy (PostgreSQL mode): routes, caps, errors."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import openai
import pytest

from tests.acceptance.helpers import TEAM_A, TEAM_B, client, tag, wait_for_job
from tests.conftest import query
from tests.support.services import FakeUpstream, Proxy

MESSAGES: list[Any] = [{"role": "user", "content": "Classify this ticket"}]


def post(proxy: Proxy, path: str, body: Any, key: str = TEAM_A) -> httpx.Response:
    return httpx.post(f"{proxy.url}{path}", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def get(proxy: Proxy, path: str, key: str = TEAM_A) -> httpx.Response:
    return httpx.get(f"{proxy.url}{path}", headers={"Authorization": f"Bearer {key}"}, timeout=30)


def error_of(r: httpx.Response) -> tuple[int, str, str]:
    body = r.json()["error"]
    assert body["message"]
    return r.status_code, body["type"], body["code"]


def snapshot(proxy: Proxy, url: str, upstream: FakeUpstream, team: str = "team-a") -> tuple[Any, ...]:
    """What a rejected request must leave unchanged."""
    return (
        upstream.stats().get("_total", 0),
        get(proxy, f"/api/teams/{team}", f"sk-{team}").json(),
        query(
            url,
            "SELECT job_id, status, admitted_calls, credits_held, credits_charged FROM jobs "
            "WHERE team_id = %s ORDER BY job_id",
            team,
        ),
    )


def expect_openai_error(fn: Any, status: int, type_: str) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        fn()
    assert info.value.status_code == status
    body: Any = info.value.body
    assert (body["type"], body["code"]) == (type_, str(status)), body


def test_create_call_complete_with_caps_and_every_rejection(
    shared_proxy: Proxy, upstream: FakeUpstream, module_database_url: str
) -> None:
    before = get(shared_proxy, "/api/teams/team-a").json()
    created = post(
        shared_proxy, "/api/jobs/create", {"job_type": "ticket_triage", "max_calls": 2, "metadata": {"ticket": 42}}
    )
    assert created.status_code == 201, created.text
    job = created.json()
    job_id = job["job_id"]
    assert (job["status"], job["team_id"], job["job_type"]) == ("pending", "team-a", "ticket_triage")
    held = get(shared_proxy, "/api/teams/team-a").json()
    assert held["credits_held"] == before["credits_held"] + 1
    assert held["credits_remaining"] == before["credits_remaining"] - 1

    oai = client(shared_proxy)
    raws = [
        oai.chat.completions.with_raw_response.create(
            model="ChatAgent", messages=MESSAGES, extra_body=tag(job_id, "ticket_triage")
        )
        for _ in range(2)
    ]
    for raw in raws:
        assert raw.headers["x-job-status"] == "in_progress"
        assert float(raw.headers["x-credits-remaining"]) == held["credits_remaining"]

    state = snapshot(shared_proxy, module_database_url, upstream)
    # max_calls=2: the third call is refused before routing.
    expect_openai_error(
        lambda: oai.chat.completions.create(
            model="ChatAgent", messages=MESSAGES, extra_body=tag(job_id, "ticket_triage")
        ),
        402,
        "job_budget_exceeded",
    )
    expect_openai_error(
        lambda: oai.chat.completions.create(model="ChatAgent", messages=MESSAGES, extra_body=tag(job_id, "other_type")),
        409,
        "job_type_mismatch",
    )
    # Another team does not see the job.
    assert error_of(get(shared_proxy, f"/api/jobs/{job_id}", TEAM_B)) == (404, "job_not_found", "404")
    assert error_of(post(shared_proxy, f"/api/jobs/{job_id}/complete", {"status": "completed"}, TEAM_B)) == (
        404,
        "job_not_found",
        "404",
    )
    assert snapshot(shared_proxy, module_database_url, upstream) == state

    done = post(
        shared_proxy,
        f"/api/jobs/{job_id}/complete",
        {"status": "completed", "result": {"label": "bug"}, "metadata": {"pages": 3}},
    )
    assert done.status_code == 200, done.text
    body = done.json()
    assert body["status"] == "completed"
    assert body["job_id"] == job_id
    costs = body["costs"]
    assert (costs["total_calls"], costs["successful_calls"], costs["failed_calls"]) == (2, 2, 0)
    assert costs["credits_charged"] == 1
    assert costs["credit_applied"] is True
    assert costs["total_tokens"] == costs["prompt_tokens"] + costs["completion_tokens"] > 0
    assert costs["total_cost_usd"] == pytest.approx(sum(float(c["cost_usd"]) for c in body["calls"]))
    assert {c["call_id"] for c in body["calls"]} == {r.headers["x-litellm-call-id"] for r in raws}
    after = get(shared_proxy, "/api/teams/team-a").json()
    assert costs["credits_remaining"] == after["credits_remaining"] == before["credits_remaining"] - 1
    assert after["credits_held"] == before["credits_held"]
    assert after["credits_charged"] == before["credits_charged"] + 1

    # Completing again with the same status answers the same and charges nothing more.
    again = post(shared_proxy, f"/api/jobs/{job_id}/complete", {"status": "completed"})
    assert again.status_code == 200
    assert again.json()["costs"] == costs
    state = snapshot(shared_proxy, module_database_url, upstream)
    assert error_of(post(shared_proxy, f"/api/jobs/{job_id}/complete", {"status": "failed"})) == (
        409,
        "job_closed",
        "409",
    )
    expect_openai_error(
        lambda: oai.chat.completions.create(
            model="ChatAgent", messages=MESSAGES, extra_body=tag(job_id, "ticket_triage")
        ),
        409,
        "job_closed",
    )
    assert snapshot(shared_proxy, module_database_url, upstream) == state
    final = get(shared_proxy, f"/api/jobs/{job_id}").json()
    assert final["result"] == {"label": "bug"}
    assert final["metadata"] == {"ticket": 42, "pages": 3}


def test_a_failed_job_costs_nothing(shared_proxy: Proxy) -> None:
    before = get(shared_proxy, "/api/teams/team-a").json()
    job_id = f"fails-{uuid.uuid4().hex[:8]}"
    client(shared_proxy).chat.completions.create(model="ChatAgent", messages=MESSAGES, extra_body=tag(job_id))
    wait_for_job(shared_proxy, job_id, calls=1)
    r = post(shared_proxy, f"/api/jobs/{job_id}/complete", {"status": "failed", "error_message": "parser crashed"})
    assert r.status_code == 200
    assert r.json()["costs"]["credits_charged"] == 0
    assert r.json()["costs"]["credit_applied"] is False
    after = get(shared_proxy, "/api/teams/team-a").json()
    assert (after["credits_remaining"], after["credits_held"], after["credits_charged"]) == (
        before["credits_remaining"],
        before["credits_held"],
        before["credits_charged"],
    )


def test_a_team_without_credits_gets_402_and_the_upstream_is_not_called(
    shared_proxy: Proxy, upstream: FakeUpstream, module_database_url: str
) -> None:
    state = snapshot(shared_proxy, module_database_url, upstream, "team-d")
    with pytest.raises(openai.APIStatusError) as info:
        client(shared_proxy, "sk-team-d").chat.completions.create(
            model="ChatAgent", messages=MESSAGES, extra_body=tag("never-runs")
        )
    assert info.value.status_code == 402
    body: Any = info.value.body
    assert (body["type"], body["code"]) == ("insufficient_credits", "402")
    assert "needs 1 credit" in body["message"]
    assert "0 left" in body["message"]
    assert snapshot(shared_proxy, module_database_url, upstream, "team-d") == state
    assert error_of(post(shared_proxy, "/api/jobs/create", {"job_type": "x"}, "sk-team-d")) == (
        402,
        "insufficient_credits",
        "402",
    )


def test_only_the_admin_grants_credits_and_grants_are_idempotent(shared_proxy: Proxy) -> None:
    body = {"amount": "5", "idempotency_key": f"k-{uuid.uuid4().hex}"}
    assert error_of(post(shared_proxy, "/api/teams/team-e/credits", body, "sk-team-e")) == (403, "forbidden", "403")
    first = post(shared_proxy, "/api/teams/team-e/credits", body, "sk-master").json()
    second = post(shared_proxy, "/api/teams/team-e/credits", body, "sk-master").json()
    assert first == second
    assert first["credits_allocated"] == 5
    # A team reads only its own balance; the admin reads any.
    assert error_of(get(shared_proxy, "/api/teams/team-e", TEAM_A)) == (403, "forbidden", "403")
    assert get(shared_proxy, "/api/teams/team-e", "sk-master").json()["credits_remaining"] == 5


@pytest.mark.parametrize(
    "body",
    [
        [],
        None,
        "text",
        42,
        {"job_type": 5},
        {"job_type": "bad type"},
        {"job_type": "ok", "max_calls": 0},
        {"job_type": "ok", "max_cost_usd": "-1"},
        {"job_type": "ok", "job_id": "x" * 200},
    ],
)
def test_bad_create_bodies_are_400s_that_change_nothing(
    shared_proxy: Proxy, upstream: FakeUpstream, module_database_url: str, body: Any
) -> None:
    state = snapshot(shared_proxy, module_database_url, upstream)
    r = post(shared_proxy, "/api/jobs/create", body)
    status, type_, code = error_of(r)
    assert (status, type_, code) == (400, "invalid_job_metadata", "400"), r.text
    assert snapshot(shared_proxy, module_database_url, upstream) == state


def test_jobs_are_listed_newest_first_with_a_cursor(shared_proxy: Proxy) -> None:
    kind = f"listing{uuid.uuid4().hex[:6]}"
    ids = [post(shared_proxy, "/api/jobs/create", {"job_type": kind}).json()["job_id"] for _ in range(5)]
    seen: list[str] = []
    cursor = None
    for _ in range(5):
        params = f"?job_type={kind}&limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = get(shared_proxy, f"/api/jobs{params}").json()
        seen += [j["job_id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(ids)
    assert len(seen) == 5
    assert all(j["status"] == "pending" for j in get(shared_proxy, f"/api/jobs?job_type={kind}").json()["jobs"])
    assert error_of(get(shared_proxy, "/api/jobs?status=bogus")) == (400, "invalid_job_metadata", "400")


def test_a_forged_stash_in_a_rejected_request_changes_nothing(
    shared_proxy: Proxy, upstream: FakeUpstream, module_database_url: str
) -> None:
    job = post(shared_proxy, "/api/jobs/create", {"job_type": "victim"}).json()
    state = snapshot(shared_proxy, module_database_url, upstream)
    forged = {
        "job_id": job["job_id"],
        "team_id": "team-a",
        "job_type": "victim",
        "single_call": True,
        "_secret": "guess",
    }
    r = httpx.post(
        f"{shared_proxy.url}/chat/completions",
        headers={"Authorization": "Bearer sk-wrong"},
        json={"model": "ChatAgent", "messages": MESSAGES, "metadata": {"litellm_jobs": forged}},
        timeout=30,
    )
    assert r.status_code == 401
    assert snapshot(shared_proxy, module_database_url, upstream) == state
    assert get(shared_proxy, f"/api/jobs/{job['job_id']}").json()["status"] == "pending"


def test_nul_characters_are_400s(shared_proxy: Proxy, upstream: FakeUpstream, module_database_url: str) -> None:
    state = snapshot(shared_proxy, module_database_url, upstream)
    expect_openai_error(
        lambda: client(shared_proxy).chat.completions.create(
            model="ChatAgent", messages=MESSAGES, extra_body=tag("nul-job", job_metadata={"x": "a\u0000b"})
        ),
        400,
        "invalid_job_metadata",
    )
    r = post(shared_proxy, "/api/jobs/create", {"job_type": "nul", "metadata": {"x": "a\u0000b"}})
    assert error_of(r) == (400, "invalid_job_metadata", "400")
    assert snapshot(shared_proxy, module_database_url, upstream) == state
