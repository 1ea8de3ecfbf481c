"""Calls through a real `litellm` proxy with the plugin, made with the official OpenAI SDK."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import openai
import pytest

from tests.acceptance.helpers import TEAM_A, TEAM_B, api, client, cost_header, tag, wait_for_job
from tests.conftest import query
from tests.support.services import FakeUpstream, Proxy, wait_for

MESSAGES: list[Any] = [{"role": "user", "content": "Summarise the attached contract"}]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def test_three_call_job_with_a_stream_and_a_fallback(shared_proxy: Proxy, module_database_url: str) -> None:
    job_id = new_id("doc")
    oai = client(shared_proxy)
    plain = oai.chat.completions.with_raw_response.create(model="ChatAgent", messages=MESSAGES, extra_body=tag(job_id))
    streamed = oai.chat.completions.with_raw_response.create(
        model="ChatAgent", messages=MESSAGES, stream=True, extra_body=tag(job_id)
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in streamed.parse() if chunk.choices)
    assert text == "Hello from the fake upstream"
    fallback = oai.chat.completions.with_raw_response.create(
        model="ChatAgent",
        messages=[{"role": "user", "content": "Summarise [fail:500] the contract"}],
        extra_body=tag(job_id),
    )
    assert fallback.headers["x-litellm-model-group"] == "ChatAgent-fallback"
    for raw in (plain, streamed, fallback):
        assert raw.headers["x-job-id"] == job_id
        assert raw.headers["x-job-status"] == "in_progress"

    # The fallback's failed attempt and its answer are two events (maybe two batches): wait for the answer.
    job = wait_for(
        lambda: (j := wait_for_job(shared_proxy, job_id, calls=3))["successful_calls"] == 3 and j,
        timeout=30,
        what="the job's three successful calls",
    )
    calls = {c["call_id"]: c for c in api(shared_proxy, f"/api/jobs/{job_id}/calls").json()["calls"]}
    ids = [r.headers["x-litellm-call-id"] for r in (plain, streamed, fallback)]
    assert sorted(calls) == sorted(ids)
    assert (job["total_calls"], job["successful_calls"], job["failed_calls"]) == (3, 3, 0)
    assert job["status"] == "in_progress"
    assert job["job_type"] == "document_analysis"

    # Cost per row is what LiteLLM reported; the streamed call (same prompt and answer as the
    # plain one) carries no cost header, but LiteLLM computed the same cost for it.
    assert Decimal(calls[ids[0]]["cost_usd"]) == cost_header(plain.headers) > 0
    assert Decimal(calls[ids[1]]["cost_usd"]) == cost_header(plain.headers)
    assert Decimal(calls[ids[2]]["cost_usd"]) == cost_header(fallback.headers) > 0
    assert calls[ids[1]]["stream"] is True
    assert calls[ids[0]]["stream"] is False

    fb = calls[ids[2]]
    assert (fb["status"], fb["requested_model"], fb["model_group"], fb["model"]) == (
        "success",
        "ChatAgent",
        "ChatAgent-fallback",
        "openai/gpt-4o",
    )
    assert (fb["attempts"], fb["failed_attempts"]) == (2, 1)
    assert "openai/gpt-4o" in job["models_used"]
    assert "openai/gpt-4o-mini" in job["models_used"]
    assert all(c["provider"] == "openai" and c["latency_ms"] >= 0 and c["cache_hit"] is False for c in calls.values())

    # The job's aggregates are the sums over its call rows, in PostgreSQL itself.
    (row,) = query(
        module_database_url,
        """
        SELECT j.total_cost_usd, j.prompt_tokens, j.completion_tokens,
               sum(c.cost_usd) AS cost, sum(c.prompt_tokens) AS p, sum(c.completion_tokens) AS c
        FROM jobs j JOIN calls c USING (team_id, job_id) WHERE j.job_id = %s
        GROUP BY j.team_id, j.job_id""",
        job_id,
    )
    assert row["total_cost_usd"] == row["cost"] == sum(Decimal(c["cost_usd"]) for c in calls.values())
    assert (row["prompt_tokens"], row["completion_tokens"]) == (row["p"], row["c"])
    assert row["prompt_tokens"] == sum(c["prompt_tokens"] for c in calls.values()) > 0


@pytest.mark.parametrize(
    ("marker", "error"), [("[fail:500]", openai.InternalServerError), ("[fail:429]", openai.RateLimitError)]
)
def test_a_failed_call_is_recorded(shared_proxy: Proxy, marker: str, error: type[Exception]) -> None:
    job_id = new_id("fail")
    with pytest.raises(error):
        client(shared_proxy).chat.completions.create(
            model="Summarizer", messages=[{"role": "user", "content": f"go {marker}"}], extra_body=tag(job_id)
        )
    job = wait_for_job(shared_proxy, job_id, calls=1)
    assert (job["total_calls"], job["successful_calls"], job["failed_calls"]) == (1, 0, 1)
    (call,) = api(shared_proxy, f"/api/jobs/{job_id}/calls").json()["calls"]
    assert call["status"] == "failure"
    assert call["error_type"]
    assert Decimal(call["cost_usd"]) == 0
    assert call["model_group"] == "Summarizer"


BAD_METADATA = [
    ({"job_id": "has space", "job_type": "doc"}, "metadata.job_id"),
    ({"job_id": 12345, "job_type": "doc"}, "metadata.job_id"),
    ({"job_id": "x" * 129, "job_type": "doc"}, "metadata.job_id"),
    ({"job_id": "ok-id", "job_type": "t" * 65}, "metadata.job_type"),
    ({"job_id": "ok-id", "job_type": "doc; DROP TABLE jobs"}, "metadata.job_type"),
    ({"job_id": "ok-id", "job_type": "doc", "job_metadata": {"blob": "x" * 9000}}, "metadata.job_metadata"),
    ({"job_id": "ok-id", "job_type": "doc", "job_metadata": ["not", "an", "object"]}, "metadata.job_metadata"),
]


@pytest.mark.parametrize(("metadata", "param"), BAD_METADATA)
def test_bad_job_metadata_is_rejected_before_routing(
    shared_proxy: Proxy, upstream: FakeUpstream, module_database_url: str, metadata: dict[str, Any], param: str
) -> None:
    before = upstream.stats().get("_total", 0)
    with pytest.raises(openai.BadRequestError) as info:
        client(shared_proxy).chat.completions.create(
            model="ChatAgent", messages=MESSAGES, extra_body={"metadata": metadata}
        )
    assert info.value.status_code == 400
    body: Any = info.value.body
    assert body["type"] == "invalid_job_metadata"
    assert body["param"] == param
    assert body["code"] == "400"
    assert body["message"]
    assert upstream.stats().get("_total", 0) == before
    assert query(module_database_url, "SELECT job_id FROM jobs WHERE job_id = 'ok-id'") == []


def test_a_key_without_team_gets_team_required(shared_proxy: Proxy, upstream: FakeUpstream) -> None:
    before = upstream.stats().get("_total", 0)
    with pytest.raises(openai.AuthenticationError) as info:
        client(shared_proxy, "sk-noteam").chat.completions.create(
            model="ChatAgent", messages=MESSAGES, extra_body=tag(new_id("x"))
        )
    assert info.value.status_code == 401
    assert info.value.body["type"] == "team_required"  # type: ignore[index]
    assert upstream.stats().get("_total", 0) == before


def test_only_the_admin_may_act_for_another_team(shared_proxy: Proxy, upstream: FakeUpstream) -> None:
    job_id = new_id("for-b")
    before = upstream.stats().get("_total", 0)
    with pytest.raises(openai.PermissionDeniedError) as info:
        client(shared_proxy, TEAM_A).chat.completions.create(
            model="ChatAgent", messages=MESSAGES, extra_body=tag(job_id, team_id="team-b")
        )
    assert info.value.body["type"] == "forbidden"  # type: ignore[index]
    assert upstream.stats().get("_total", 0) == before

    client(shared_proxy, "sk-master").chat.completions.create(
        model="ChatAgent", messages=MESSAGES, extra_body=tag(job_id, team_id="team-b")
    )
    job = wait_for_job(shared_proxy, job_id, calls=1, key=TEAM_B)
    assert job["team_id"] == "team-b"
    # Job ids are per team: team A does not see team B's job.
    missing = api(shared_proxy, f"/api/jobs/{job_id}", TEAM_A)
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "job_not_found"
    # The admin reads it by naming the team.
    assert api(shared_proxy, f"/api/jobs/{job_id}", "sk-master", team_id="team-b").status_code == 200


def test_job_headers_are_an_alternative_to_metadata(shared_proxy: Proxy) -> None:
    job_id = new_id("hdr")
    raw = client(shared_proxy).chat.completions.with_raw_response.create(
        model="ChatAgent", messages=MESSAGES, extra_headers={"x-job-id": job_id, "x-job-type": "triage"}
    )
    assert raw.headers["x-job-id"] == job_id
    job = wait_for_job(shared_proxy, job_id, calls=1)
    assert job["job_type"] == "triage"


def test_an_untagged_call_is_its_own_job(shared_proxy: Proxy) -> None:
    raw = client(shared_proxy).chat.completions.with_raw_response.create(model="ChatAgent", messages=MESSAGES)
    call_id = raw.headers["x-litellm-call-id"]
    assert raw.headers["x-job-id"] == f"call-{call_id}"
    assert raw.headers["x-job-status"] == "completed"
    job = wait_for_job(shared_proxy, f"call-{call_id}", calls=1)
    assert (job["status"], job["single_call"], job["job_type"]) == ("completed", True, "default")
    assert job["completed_at"] is not None


def test_a_cache_hit_is_recorded_with_the_cost_litellm_reports(shared_proxy: Proxy) -> None:
    job_id = new_id("cache")
    messages = [{"role": "user", "content": f"cache me {job_id}"}]
    # The test config's cache is LiteLLM's local one, each process's own: both calls to one replica.
    raws = [
        client(shared_proxy.replicas[0]).chat.completions.with_raw_response.create(
            model="ChatAgent", messages=messages, extra_body={**tag(job_id), "cache": {"use-cache": True}}
        )
        for _ in range(2)
    ]
    wait_for_job(shared_proxy, job_id, calls=2)
    calls = {c["call_id"]: c for c in api(shared_proxy, f"/api/jobs/{job_id}/calls").json()["calls"]}
    first, second = (calls[r.headers["x-litellm-call-id"]] for r in raws)
    assert (first["cache_hit"], second["cache_hit"]) == (False, True)
    assert Decimal(first["cost_usd"]) == cost_header(raws[0].headers) > 0
    # LiteLLM's cost of a cache hit is 0 (cost_calculator: cache_hit -> 0.0; its spend logs say
    # the same). The header of a cached answer repeats the original's cost on 1.106, is absent on
    # 1.108 and is 0 on 1.110: we record LiteLLM's cost, not the header.
    assert Decimal(second["cost_usd"]) == 0
    cached = raws[1].headers.get("x-litellm-response-cost")
    assert cached is None or Decimal(cached) in (cost_header(raws[0].headers), Decimal(0))
