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
