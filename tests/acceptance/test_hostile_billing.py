"""A client that tries not to pay for what it gets: reused call ids, self-chosen prices, endless
free failures. Each test runs against a real proxy in every credit mode where the rule applies.

What must hold: every answered call is one record with its cost, whatever call id the client
sends; prices come from the operator only; failed jobs are free only up to an allowance.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest

from tests.acceptance.helpers import TEAM_A, api, client, cost_header, tag, wait_for_job
from tests.conftest import query
from tests.support.services import Proxy

MASTER = "sk-master"
PROMPT = [{"role": "user", "content": "the same prompt every time"}]


def create_job(proxy: Proxy, body: dict[str, Any], key: str = TEAM_A) -> httpx.Response:
    return httpx.post(f"{proxy.url}/api/jobs/create", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def call(proxy: Proxy, job_id: str, *, call_id: str, job_type: str = "document_analysis") -> Any:
    """One tracked call with a client-chosen ``x-litellm-call-id``: the raw response."""
    return client(proxy).chat.completions.with_raw_response.create(
        model="ChatAgent",
        messages=PROMPT,
        extra_body=tag(job_id, job_type),
        extra_headers={"x-litellm-call-id": call_id},
    )


def test_a_reused_call_id_never_hides_an_answered_call(
    start_proxy: Callable[..., Proxy], database_url: str, credit_mode: dict[str, str]
) -> None:
    proxy = start_proxy(database_url, env=credit_mode)
    proxy.grant("team-a", 100)
    job = f"reuse-{uuid.uuid4().hex[:8]}"
    costs: list[Decimal] = []
    record_ids: set[str] = set()
    for _ in range(6):
        raw = call(proxy, job, call_id="same-1")
        costs.append(cost_header(raw.headers))
        record_ids.add(raw.headers["x-job-call-id"])
        assert raw.headers["x-job-call-id"].startswith("same-1~")
    assert len(record_ids) == 6
    body = wait_for_job(proxy, job, calls=6)
    assert body["total_calls"] == 6
    calls = api(proxy, f"/api/jobs/{job}/calls").json()["calls"]
    assert {c["call_id"] for c in calls} == record_ids
    assert sum(Decimal(str(c["cost_usd"])) for c in calls) == sum(costs)
    rows = query(database_url, "SELECT count(*) AS n FROM calls WHERE job_id = %s", job)
    assert rows[0]["n"] == 6

    # Untagged calls with one reused call id: each is its own single-call job, each charged.
    before = Decimal(str(api(proxy, "/api/teams/team-a").json()["credits_remaining"]))
    for _ in range(3):
        client(proxy).chat.completions.create(
            model="ChatAgent", messages=PROMPT, extra_headers={"x-litellm-call-id": "untagged-same"}
        )
    after = Decimal(str(api(proxy, "/api/teams/team-a").json()["credits_remaining"]))
    assert before - after == 3  # the default price, once per answered call


def test_a_job_cost_cap_holds_with_a_reused_call_id_and_across_a_restart(
    start_proxy: Callable[..., Proxy], database_url: str, credit_mode: dict[str, str]
) -> None:
    proxy = start_proxy(database_url, env=credit_mode)
    proxy.grant("team-a", 100)
    # What one call of PROMPT costs: the cap is three of them.
    probe = f"probe-{uuid.uuid4().hex[:8]}"
    one = cost_header(call(proxy, probe, call_id="probe").headers)
    assert one > 0
    job = f"cap-{uuid.uuid4().hex[:8]}"
    assert (
        create_job(proxy, {"job_type": "document_analysis", "job_id": job, "max_cost_usd": str(one * 3)}).status_code
        == 201
    )
    answered = 0
    refused: list[str] = []
    for _ in range(8):
        try:
            call(proxy, job, call_id="same-cap")
            answered += 1
            wait_for_job(proxy, job, calls=answered)  # the cost is known before the next call
        except openai.APIStatusError as exc:
            refused.append(exc.body["type"] if isinstance(exc.body, dict) else str(exc.body))
    assert answered == 3
    assert set(refused) == {"job_budget_exceeded"}
    proxy.stop()
    proxy = start_proxy(database_url, env=credit_mode)
    for _ in range(3):
        with pytest.raises(openai.APIStatusError) as info:
            call(proxy, job, call_id="same-cap")
        assert info.value.status_code == 402
    job_body = api(proxy, f"/api/jobs/{job}").json()
    assert job_body["total_calls"] == 3
    assert Decimal(str(job_body["total_cost_usd"])) == one * 3


def post(proxy: Proxy, path: str, body: dict[str, Any], key: str = TEAM_A) -> httpx.Response:
    return httpx.post(f"{proxy.url}{path}", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def put_policy(proxy: Proxy, team: str, body: dict[str, Any], key: str = MASTER) -> httpx.Response:
    return httpx.put(
        f"{proxy.url}/api/teams/{team}/policy", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )


def balance(proxy: Proxy, team: str = "team-a") -> dict[str, Any]:
    body: dict[str, Any] = api(proxy, f"/api/teams/{team}", MASTER).json()
    return body


def error_type(exc: openai.APIStatusError) -> str:
    return str(exc.body["type"]) if isinstance(exc.body, dict) else ""


PRICES = {"JOBS_JOB_PRICES": '{"document_analysis": 5, "chat": 0.5, "free": 0}'}


def test_the_operator_sets_every_price_never_the_client(
    start_proxy: Callable[..., Proxy], database_url: str, credit_mode: dict[str, str]
) -> None:
    proxy = start_proxy(database_url, env={**credit_mode, **PRICES, "JOBS_JOB_TYPE_CAPS": '{"chat": {"max_calls": 2}}'})
    proxy.grant("team-a", 100)
    proxy.grant("team-b", 100)
    before = balance(proxy)
    # Job types the operator has not priced, however they are spelled, open nothing.
    for job_type in ("Document_Analysis", "zzz", "document_analysis "):
        with pytest.raises(openai.APIStatusError) as info:
            client(proxy).chat.completions.create(
                model="ChatAgent", messages=PROMPT, extra_body=tag(f"u-{uuid.uuid4().hex[:6]}", job_type)
            )
        assert info.value.status_code == 400
        assert error_type(info.value) in ("unknown_job_type", "invalid_job_metadata")
    refused = post(proxy, "/api/jobs/create", {"job_type": "zzz"})
    assert refused.status_code == 400
    assert refused.json()["error"]["type"] == "unknown_job_type"
    assert balance(proxy)["credits_remaining"] == before["credits_remaining"]
    assert query(database_url, "SELECT count(*) AS n FROM jobs WHERE team_id = 'team-a'")[0]["n"] == 0

    # A type the operator made free opens and closes (Redis once refused a hold of -0).
    free = f"free-{uuid.uuid4().hex[:6]}"
    client(proxy).chat.completions.create(model="ChatAgent", messages=PROMPT, extra_body=tag(free, "free"))
    assert post(proxy, f"/api/jobs/{free}/complete", {"status": "completed"}).status_code == 200
    assert Decimal(str(balance(proxy)["credits_charged"])) == 0

    # The priced type costs its price.
    job = f"doc-{uuid.uuid4().hex[:6]}"
    client(proxy).chat.completions.create(model="ChatAgent", messages=PROMPT, extra_body=tag(job))
    assert post(proxy, f"/api/jobs/{job}/complete", {"status": "completed"}).status_code == 200
    assert Decimal(str(balance(proxy)["credits_charged"])) == 5

    # The operator's caps for a type apply to every job of it.
    chat = f"chat-{uuid.uuid4().hex[:6]}"
    for _ in range(2):
        client(proxy).chat.completions.create(model="ChatAgent", messages=PROMPT, extra_body=tag(chat, "chat"))
    with pytest.raises(openai.APIStatusError) as info:
        client(proxy).chat.completions.create(model="ChatAgent", messages=PROMPT, extra_body=tag(chat, "chat"))
    assert error_type(info.value) == "job_budget_exceeded"

    # A team policy: the admin's price override and allowed job types; a team key cannot set one.
    assert put_policy(proxy, "team-a", {"job_prices": {"chat": 9}}, key=TEAM_A).status_code == 403
    set_ = put_policy(proxy, "team-a", {"job_prices": {"chat": 2}, "allowed_job_types": ["chat"]})
    assert set_.status_code == 200, set_.text
    assert set_.json()["job_prices"] == {"chat": "2"}
    with pytest.raises(openai.APIStatusError) as info:
        client(proxy).chat.completions.create(model="ChatAgent", messages=PROMPT, extra_body=tag("doc-2"))
    assert (info.value.status_code, error_type(info.value)) == (403, "job_type_not_allowed")
    charged = Decimal(str(balance(proxy)["credits_charged"]))
    chat2 = f"chat-{uuid.uuid4().hex[:6]}"
    client(proxy).chat.completions.create(model="ChatAgent", messages=PROMPT, extra_body=tag(chat2, "chat"))
    assert post(proxy, f"/api/jobs/{chat2}/complete", {"status": "completed"}).status_code == 200
    assert Decimal(str(balance(proxy)["credits_charged"])) - charged == 2
    # Another team keeps the operator's price.
    chat3 = f"chat-{uuid.uuid4().hex[:6]}"
    client(proxy, "sk-team-b").chat.completions.create(
        model="ChatAgent", messages=PROMPT, extra_body=tag(chat3, "chat")
    )
    assert post(proxy, f"/api/jobs/{chat3}/complete", {"status": "completed"}, key="sk-team-b").status_code == 200
    assert Decimal(str(balance(proxy, "team-b")["credits_charged"])) == Decimal("0.5")
    # Hostile policy bodies are a 400 and change nothing.
    for bad in (
        {"job_prices": {"chat": -1}},
        {"job_prices": {"chat": "1e400"}},
        {"allowed_job_types": ["a b"]},
        {"failure_allowance_usd": "-1"},
        {"job_prices": {"chat": "0.0000001"}},
    ):
        r = put_policy(proxy, "team-a", bad)
        assert r.status_code == 400, (bad, r.text)
    assert api(proxy, "/api/teams/team-a/policy").json()["job_prices"] == {"chat": "2"}
    # Another team reads neither this team's policy nor its allowance.
    assert api(proxy, "/api/teams/team-a/policy", "sk-team-b").status_code == 403
    assert api(proxy, "/api/teams/team-b/policy", "sk-team-b").json()["job_prices"] == {}


def test_failed_jobs_are_free_only_up_to_the_failure_allowance(
    start_proxy: Callable[..., Proxy], database_url: str, credit_mode: dict[str, str]
) -> None:
    env = {**credit_mode, "JOBS_FAILURE_ALLOWANCE_USD": "0.00004", "JOBS_POLICY_REFRESH_S": "0.2"}
    proxy = start_proxy(database_url, env=env)
    proxy.grant("team-a", 2)  # one job held open, one job at a time failing: nothing is ever charged
    open_job = f"open-{uuid.uuid4().hex[:6]}"
    assert post(proxy, "/api/jobs/create", {"job_type": "document_analysis", "job_id": open_job}).status_code == 201
    cycles, cost_one = 0, Decimal(0)
    refusal: dict[str, Any] = {}
    for _ in range(30):
        job = f"fail-{uuid.uuid4().hex[:6]}"
        created = post(proxy, "/api/jobs/create", {"job_type": "document_analysis", "job_id": job})
        if created.status_code != 201:
            refusal = created.json()["error"]
            assert created.status_code == 402
            break
        cost_one = cost_header(call(proxy, job, call_id=f"c-{job}").headers)
        assert post(proxy, f"/api/jobs/{job}/complete", {"status": "failed"}).status_code == 200
        cycles += 1
    assert refusal.get("type") == "failure_allowance_exhausted", refusal
    assert "USD" in refusal["message"]
    # Never more than the allowance plus one job's cost went uncharged.
    assert cost_one * cycles <= Decimal("0.00004") + cost_one
    assert cost_one * cycles >= Decimal("0.00004")
    allowance = balance(proxy)["failure_allowance"]
    assert allowance["exhausted"] is True
    assert Decimal(allowance["used_usd"]) == cost_one * cycles
    assert allowance["frees_at"] is not None
    # Nothing was charged, and the job opened before goes on.
    assert Decimal(str(balance(proxy)["credits_charged"])) == 0
    call(proxy, open_job, call_id="still-open")
    # The admin lifts the limit for this team: new jobs open again.
    assert put_policy(proxy, "team-a", {"failure_allowance_usd": "1"}).status_code == 200
    assert post(proxy, "/api/jobs/create", {"job_type": "document_analysis"}).status_code == 201


def test_a_cost_based_price_charges_the_jobs_cost_and_never_runs_past_its_hold(
    start_proxy: Callable[..., Proxy], database_url: str, credit_mode: dict[str, str]
) -> None:
    # Ten credits per cent of provider cost, at least half a credit, at most 5 held per job.
    rule = '{"research": {"credits_per_usd": 1000, "minimum": "0.5", "maximum": 5}, "chat": 1}'
    proxy = start_proxy(database_url, env={**credit_mode, "JOBS_JOB_PRICES": rule})
    proxy.grant("team-a", 100)
    job = f"research-{uuid.uuid4().hex[:6]}"
    costs = [cost_header(call(proxy, job, call_id=f"r{n}", job_type="research").headers) for n in range(3)]
    assert balance(proxy)["credits_held"] == 5  # the maximum is held while the job runs
    done = post(proxy, f"/api/jobs/{job}/complete", {"status": "completed"})
    assert done.status_code == 200, done.text
    expected = max(Decimal("0.5"), (sum(costs) * 1000).quantize(Decimal("0.000001"), rounding="ROUND_CEILING"))
    after = balance(proxy)
    assert Decimal(str(after["credits_charged"])) == expected
    assert Decimal(str(after["credits_held"])) == 0
    assert Decimal(str(after["credits_remaining"])) == 100 - expected
    assert Decimal(str(done.json()["costs"]["credits_charged"])) == expected
    ledger = query(database_url, "SELECT kind, amount FROM credit_ledger WHERE job_id = %s ORDER BY entry_id", job)
    assert [(r["kind"], r["amount"]) for r in ledger] == [("hold", 5), ("capture", expected), ("release", 5 - expected)]
    # Completing again changes nothing; a failed cost-priced job is free.
    assert post(proxy, f"/api/jobs/{job}/complete", {"status": "completed"}).status_code == 200
    assert Decimal(str(balance(proxy)["credits_charged"])) == expected
    free = f"research-{uuid.uuid4().hex[:6]}"
    call(proxy, free, call_id="f1", job_type="research")
    assert post(proxy, f"/api/jobs/{free}/complete", {"status": "failed"}).status_code == 200
    assert Decimal(str(balance(proxy)["credits_charged"])) == expected
    # The job stops taking calls once its cost reaches what its hold covers (5 credits = 0.005 USD).
    capped = f"research-{uuid.uuid4().hex[:6]}"
    assert (
        post(proxy, "/api/jobs/create", {"job_type": "research", "job_id": capped}).json()["max_cost_usd"] is not None
    )
    # An untagged call is a single-call job of the default type: unaffected.
    client(proxy).chat.completions.create(model="ChatAgent", messages=PROMPT)
