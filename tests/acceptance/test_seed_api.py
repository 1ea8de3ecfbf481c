"""The seed system's job API, served by the proxy: clients written from its documented request and
response shapes, SSE delivery chunk by chunk, create-and-call, team rules."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from litellm_jobs_plugin.client import SaasLiteLLMClient
from tests.acceptance.helpers import api, wait_for_job
from tests.conftest import query
from tests.support import seed_style_client
from tests.support.services import FakeUpstream, Proxy, proxy_config, wait_for

ACME = "sk-acme"  # test_auth maps it to team acme-corp


@pytest.fixture(scope="module")
def proxy(
    tmp_path_factory: pytest.TempPathFactory,
    upstream: FakeUpstream,
    module_database_url: str,
    start_in_mode: Callable[..., Proxy],
) -> Iterator[Proxy]:
    proxy = start_in_mode(
        tmp_path_factory.mktemp("proxy"), proxy_config(upstream), env={"JOBS_DATABASE_URL": module_database_url}
    )
    for team in ("acme-corp", "team-a", "team-b"):
        proxy.grant(team, 1000)
    yield proxy
    proxy.stop(timeout=30)


def post(proxy: Proxy, path: str, body: Any, key: str = "sk-team-a") -> httpx.Response:
    return httpx.post(f"{proxy.url}{path}", headers={"Authorization": f"Bearer {key}"}, json=body, timeout=60)


def balance(proxy: Proxy, team: str) -> dict[str, Any]:
    body: dict[str, Any] = api(proxy, f"/api/teams/{team}", "sk-master").json()
    return body


# -- the seed system's documented shapes, used by the smallest clients a user would write -------------


@pytest.mark.parametrize("metadata", [None, {"test": True}])
def test_create_call_complete_with_nothing_but_the_documented_fields(
    proxy: Proxy, metadata: dict[str, Any] | None
) -> None:
    before = Decimal(str(balance(proxy, "acme-corp")["credits_remaining"]))
    out = seed_style_client.job_with_one_call(
        f"{proxy.url}/api", ACME, team_id="acme-corp", job_type="document_analysis", metadata=metadata
    )
    assert out["content"] == "Hello from the fake upstream"
    assert Decimal(str(out["credits_remaining"])) == before - 1  # one job, one credit
    job = wait_for_job(proxy, out["job_id"], calls=1, key=ACME)
    assert (job["team_id"], job["status"], Decimal(job["credits_charged"])) == ("acme-corp", "completed", 1)
    assert Decimal(job["total_cost_usd"]) > 0
    if metadata is not None:
        assert job["metadata"] == metadata


def test_a_reader_that_decodes_every_data_line_reads_the_stream_and_its_job_is_tracked(proxy: Proxy) -> None:
    out = seed_style_client.stream_reading_every_data_line(
        f"{proxy.url}/api", ACME, team_id="acme-corp", job_type="chat"
    )
    assert out["text"] == "Hello from the fake upstream"
    job = wait_for_job(proxy, out["job_id"], calls=1, key=ACME)
    assert job["status"] == "in_progress"
    calls = api(proxy, f"/api/jobs/{job['job_id']}/calls", ACME).json()["calls"]
    assert [(c["stream"], c["status"]) for c in calls] == [(True, "success")]
    assert Decimal(calls[0]["cost_usd"]) > 0


class Person(BaseModel):
    name: str
    age: int
    email: str


async def test_the_seed_style_typed_client_creates_calls_structures_and_completes(proxy: Proxy) -> None:
    before = Decimal(str(balance(proxy, "acme-corp")["credits_remaining"]))
    async with SaasLiteLLMClient(base_url=proxy.url, team_id="acme-corp", virtual_key=ACME) as client:
        job = await client.create_job("document_analysis")
        response = await client.llm_call(job_id=job.job_id, messages=[{"role": "user", "content": "Analyze..."}])
        person = await client.structured_call(
            job_id=job.job_id, messages=[{"role": "user", "content": "Extract person info"}], response_model=Person
        )
        result = await client.complete_job(job.job_id, "completed")
    assert response.response.content == "Hello from the fake upstream"
    assert isinstance(person, Person)
    assert (person.name, person.age) == ("Ada Lovelace", 36)
    assert Decimal(str(result.credits_remaining)) == before - 1
    done = wait_for_job(proxy, job.job_id, calls=2, key=ACME)
    assert (done["team_id"], done["status"]) == ("acme-corp", "completed")


# -- a client written for the seed system, independently of ours -------------------------------------


def test_a_seed_style_client_works_unchanged(proxy: Proxy) -> None:
    client = seed_style_client.SeedStyleClient(f"{proxy.url}/api", ACME, team_id="acme-corp")
    report = client.analyse_document("The quarterly report")
    assert report["summary_from_content"] == "Hello from the fake upstream"
    assert report["summary_from_choices"] == "Hello from the fake upstream"
    assert report["stream_text_from_content"] == "Hello from the fake upstream"
    assert report["stream_text_from_chunks"] == "Hello from the fake upstream"
    assert report["entities"] == {"name": "Ada Lovelace", "age": 36}
    assert report["complete"]["status"] == "completed"
    assert report["complete"]["costs"]["credit_applied"] is True
    job_id = report["job_id"]
    calls = api(proxy, f"/api/jobs/{job_id}/costs", ACME).json()
    assert sorted(c["purpose"] for c in calls["calls"]) == ["entities", "stream", "summary"]
    # The model group the client asked for is the one recorded.
    assert {c["model_group"] for c in calls["calls"]} == {"Summarizer"}
    # Exact sums (the float fields are for seed clients; *_exact are the numeric values).
    assert Decimal(calls["total_cost_usd_exact"]) == sum(Decimal(c["cost_usd_exact"]) for c in calls["calls"])
    assert calls["total_cost_usd"] == float(calls["total_cost_usd_exact"])
    assert Decimal(str(report["complete"]["costs"]["total_cost_usd"])) == Decimal(str(calls["total_cost_usd"]))


# -- SSE ----------------------------------------------------------------------------------------------


def sse_events(response: httpx.Response, ends: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """The JSON events of an SSE response (data field as the SSE spec reads it); ``[DONE]`` goes to ``ends``."""
    for line in response.iter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].removeprefix(" ")
        if data == "[DONE]":
            if ends is not None:
                ends.append(data)
            continue
        yield json.loads(data)


def test_stream_chunks_reach_the_client_before_the_upstream_has_finished(
    proxy: Proxy, upstream: FakeUpstream, module_database_url: str
) -> None:
    tag = f"slow{uuid.uuid4().hex[:8]}"
    job_id = f"sse-{uuid.uuid4().hex[:8]}"
    body = {"messages": [{"role": "user", "content": f"Tell a story [chunks:5:0.4] [tag:{tag}]"}]}
    events: list[dict[str, Any]] = []
    ends: list[str] = []
    finished_at_first_text: int | None = None
    with httpx.stream(
        "POST",
        f"{proxy.url}/api/jobs/{job_id}/llm-call-stream",
        headers={"Authorization": "Bearer sk-team-a"},
        json=body,
        timeout=60,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for event in sse_events(response, ends):
            if event["content"] and finished_at_first_text is None:
                finished_at_first_text = upstream.stats().get(f"stream_finished:{tag}", 0)
            events.append(event)
    # The upstream had not sent its last chunk when the first text reached us.
    assert finished_at_first_text == 0
    assert upstream.stats()[f"stream_finished:{tag}"] == 1
    assert ends == ["[DONE]"]
    # Every event is an OpenAI chunk with a top-level content; the last carries usage and cost.
    for event in events:
        assert {"id", "created", "model", "choices", "content"} <= set(event)
        assert event["object"] == "chat.completion.chunk"
    text = "".join(e["content"] for e in events)
    assert text == "Hello from the fake upstream"
    final = events[-1]
    assert final["usage"]["completion_tokens"] > 0
    assert final["cost_usd"] > 0
    assert final["call_id"]
    assert final["job_id"] == job_id
    # The job's cost includes the streamed call, with the cost the final event announced.
    job = wait_for_job(proxy, job_id, calls=1)
    assert Decimal(job["total_cost_usd"]) == Decimal(str(final["cost_usd"]))
    rows = query(module_database_url, "SELECT call_id, stream, cost_usd FROM calls WHERE job_id = %s", job_id)
    assert [(r["call_id"], r["stream"]) for r in rows] == [(final["call_id"], True)]


def test_a_client_hanging_up_mid_stream_still_records_the_call(
    proxy: Proxy, upstream: FakeUpstream, module_database_url: str
) -> None:
    tag = f"hangup{uuid.uuid4().hex[:8]}"
    job_id = f"sse-{uuid.uuid4().hex[:8]}"
    body = {"messages": [{"role": "user", "content": f"Tell a story [chunks:6:0.3] [tag:{tag}]"}]}
    with httpx.stream(
        "POST",
        f"{proxy.url}/api/jobs/{job_id}/llm-call-stream",
        headers={"Authorization": "Bearer sk-team-a"},
        json=body,
        timeout=60,
    ) as response:
        first = next(e for e in sse_events(response) if e["content"])
        assert first["content"] == "Hello"
    # Hung up after the first text. The call runs to its end and is recorded with LiteLLM's cost.
    assert upstream.stats().get(f"stream_finished:{tag}", 0) == 0
    wait_for(lambda: upstream.stats().get(f"stream_finished:{tag}") == 1, timeout=30, what="the upstream stream")
    job = wait_for_job(proxy, job_id, calls=1)
    rows = query(
        module_database_url, "SELECT status, stream, cost_usd, completion_tokens FROM calls WHERE job_id = %s", job_id
    )
    assert len(rows) == 1
    assert (rows[0]["status"], rows[0]["stream"]) == ("success", True)
    assert rows[0]["cost_usd"] > 0
    assert rows[0]["completion_tokens"] >= 6
    assert Decimal(job["total_cost_usd"]) == rows[0]["cost_usd"]


def test_an_error_before_the_stream_is_plain_error_json(proxy: Proxy) -> None:
    r = post(proxy, "/api/jobs/nope-1/llm-call-stream", {"messages": []})
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_job_metadata"


# -- create-and-call ------------------------------------------------------------------------------------


def test_create_and_call_completes_and_charges_one_credit(proxy: Proxy) -> None:
    before = balance(proxy, "team-a")
    r = post(
        proxy,
        "/api/jobs/create-and-call",
        {"job_type": "chat", "model": "ChatAgent", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["response"]["content"] == "Hello from the fake upstream"
    assert body["choices"][0]["message"]["content"] == "Hello from the fake upstream"
    assert body["status"] == "completed"
    assert body["costs"]["total_calls"] == 1
    assert body["costs"]["credit_applied"] is True
    assert body["costs"]["total_cost_usd"] == body["cost_usd"] > 0
    after = balance(proxy, "team-a")
    assert after["credits_remaining"] == before["credits_remaining"] - 1
    assert after["credits_held"] == before["credits_held"]


def test_create_and_call_whose_call_fails_leaves_the_job_failed_and_uncharged(proxy: Proxy) -> None:
    before = balance(proxy, "team-a")
    job_id = f"cac-{uuid.uuid4().hex[:8]}"
    r = post(
        proxy,
        "/api/jobs/create-and-call",
        {
            "job_type": "chat",
            "job_id": job_id,
            "model": "Summarizer",  # no fallback
            "messages": [{"role": "user", "content": "hi [fail:500]"}],
        },
    )
    assert r.status_code == 500
    assert r.json()["error"]["message"]
    assert (r.json()["job_id"], r.json()["status"]) == (job_id, "failed")
    job = api(proxy, f"/api/jobs/{job_id}").json()
    assert (job["status"], job["credits_charged"], job["failed_calls"]) == ("failed", "0", 1)
    after = balance(proxy, "team-a")
    assert (after["credits_remaining"], after["credits_held"]) == (before["credits_remaining"], before["credits_held"])


def test_create_and_call_streams_and_closes_the_job_at_the_end(proxy: Proxy) -> None:
    events: list[dict[str, Any]] = []
    with httpx.stream(
        "POST",
        f"{proxy.url}/api/jobs/create-and-call",
        headers={"Authorization": "Bearer sk-team-a"},
        json={"job_type": "chat", "stream": True, "messages": [{"role": "user", "content": "hi [chunks:3:0]"}]},
        timeout=60,
    ) as response:
        assert response.status_code == 200
        events = list(sse_events(response))
    final = events[-1]
    assert "".join(e["content"] for e in events) == "Hello from the fake upstream"
    assert final["status"] == "completed"
    assert final["costs"]["total_calls"] == 1
    assert final["costs"]["total_cost_usd"] == final["cost_usd"] > 0
    job = api(proxy, f"/api/jobs/{final['job_id']}").json()
    assert (job["status"], job["credits_charged"]) == ("completed", "1")


def test_create_and_call_without_credits_is_402_and_calls_nobody(proxy: Proxy, upstream: FakeUpstream) -> None:
    before = upstream.stats().get("_total", 0)
    r = post(
        proxy,
        "/api/jobs/create-and-call",
        {"job_type": "chat", "messages": [{"role": "user", "content": "hi"}]},
        key="sk-broke",
    )
    assert r.status_code == 402
    assert r.json()["error"]["type"] == "insufficient_credits"
    assert upstream.stats().get("_total", 0) == before


# -- team rules, structured outputs, bad input ---------------------------------------------------------


def test_a_team_id_in_the_body_must_be_the_keys_team(proxy: Proxy, module_database_url: str) -> None:
    job_id = f"other-{uuid.uuid4().hex[:8]}"
    for path, body in [
        ("/api/jobs/create", {"job_type": "chat", "job_id": job_id, "team_id": "team-b"}),
        (f"/api/jobs/{job_id}/llm-call", {"team_id": "team-b", "messages": [{"role": "user", "content": "x"}]}),
        (
            "/api/jobs/create-and-call",
            {"job_type": "chat", "job_id": job_id, "team_id": "team-b", "messages": [{"role": "user", "content": "x"}]},
        ),
    ]:
        r = post(proxy, path, body)
        assert r.status_code == 403, (path, r.text)
        assert r.json()["error"]["type"] == "forbidden"
    assert query(module_database_url, "SELECT job_id FROM jobs WHERE job_id = %s", job_id) == []
    # Naming one's own team is fine; the proxy admin may act for any team.
    assert post(proxy, "/api/jobs/create", {"job_type": "chat", "team_id": "team-a"}).status_code == 201
    r = post(
        proxy,
        f"/api/jobs/{job_id}/llm-call",
        {"team_id": "team-b", "messages": [{"role": "user", "content": "x"}]},
        key="sk-master",
    )
    assert r.status_code == 200, r.text
    assert wait_for_job(proxy, job_id, calls=1, key="sk-team-b")["team_id"] == "team-b"


def test_structured_output_is_validated(proxy: Proxy, module_database_url: str) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "Person", "schema": schema}}
    job_id = f"struct-{uuid.uuid4().hex[:8]}"
    ok = post(
        proxy,
        f"/api/jobs/{job_id}/llm-call",
        {"messages": [{"role": "user", "content": "Extract"}], "response_format": fmt},
    )
    assert ok.status_code == 200, ok.text
    assert ok.json()["response"]["parsed"] == {"name": "Ada Lovelace", "age": 36}
    bad = post(
        proxy,
        f"/api/jobs/{job_id}/llm-call",
        {"messages": [{"role": "user", "content": "Extract [bad-json]"}], "response_format": fmt},
    )
    assert bad.status_code == 502
    error = bad.json()["error"]
    assert error["type"] == "invalid_structured_output"
    assert "not JSON" in error["message"]
    # The invalid answer was still an upstream call, and it is recorded with its cost.
    job = wait_for_job(proxy, job_id, calls=2)
    assert job["successful_calls"] == 2
    assert bad.headers["x-litellm-call-id"] in {
        r["call_id"] for r in query(module_database_url, "SELECT call_id FROM calls WHERE job_id = %s", job_id)
    }


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/api/jobs/ok-1/llm-call", {}, "messages"),
        ("/api/jobs/ok-1/llm-call", {"messages": "hi"}, "messages"),
        ("/api/jobs/ok-1/llm-call", [1, 2], "body"),
        ("/api/jobs/bad%20id/llm-call", {"messages": [{"role": "user", "content": "x"}]}, "job_id"),
        ("/api/jobs/ok-1/llm-call", {"messages": [{"role": "user", "content": "x"}], "purpose": "a\nb"}, "purpose"),
        ("/api/jobs/ok-1/llm-call", {"messages": [{"role": "user", "content": "x"}], "model": ""}, "model"),
        ("/api/jobs/create-and-call", {"messages": [{"role": "user", "content": "x"}]}, "job_type"),
        (
            "/api/jobs/create-and-call",
            {"job_type": "bad type", "messages": [{"role": "user", "content": "x"}]},
            "job_type",
        ),
    ],
)
def test_bad_input_is_a_400_and_changes_nothing(
    proxy: Proxy, upstream: FakeUpstream, path: str, body: Any, param: str
) -> None:
    before = upstream.stats().get("_total", 0)
    r = httpx.post(
        f"{proxy.url}{path}",
        headers={"Authorization": "Bearer sk-team-a"},
        content=json.dumps(body),
        timeout=30,
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_job_metadata"
    assert r.json()["error"]["param"] == param
    assert upstream.stats().get("_total", 0) == before
    assert api(proxy, "/api/jobs/ok-1").status_code == 404


def test_seed_call_routes_go_through_the_proxys_own_path(proxy: Proxy) -> None:
    """Fallbacks and LiteLLM's headers apply as for /v1/chat/completions: it is the same path."""
    job_id = f"fb-{uuid.uuid4().hex[:8]}"
    r = post(
        proxy,
        f"/api/jobs/{job_id}/llm-call",
        {"model_group": "ChatAgent", "purpose": "fallback", "messages": [{"role": "user", "content": "x [fail:500]"}]},
    )
    assert r.status_code == 200, r.text
    assert r.headers["x-litellm-model-group"] == "ChatAgent-fallback"
    assert r.headers["x-litellm-attempted-fallbacks"] == "1"
    assert r.json()["metadata"]["model_group"] == "ChatAgent"
    assert r.json()["metadata"]["model_used"] == "ChatAgent-fallback"
    # The failed attempt and the answer are two events, possibly written in two batches: wait for both.
    calls = wait_for(
        lambda: [c for c in api(proxy, f"/api/jobs/{job_id}/calls").json()["calls"] if c["attempts"] == 2] or None,
        timeout=30,
        what="the call row with both attempts",
    )
    assert [(c["call_id"], c["attempts"], c["purpose"]) for c in calls] == [(r.json()["call_id"], 2, "fallback")]
    assert r.headers["x-job-id"] == job_id
    assert r.headers["x-credits-remaining"]


def test_a_rejected_create_and_call_opens_no_job_and_holds_nothing(proxy: Proxy) -> None:
    before = balance(proxy, "team-a")
    for body in (
        {"purpose": "bad\npurpose"},
        {"model": ""},
        {"user_id": "nul\u0000"},
        {"metadata": []},
        {"team_id": "team-b"},
    ):
        job_id = f"rejected-{uuid.uuid4().hex[:8]}"
        r = post(
            proxy,
            "/api/jobs/create-and-call",
            {"job_type": "chat", "job_id": job_id, "messages": [{"role": "user", "content": "x"}], **body},
        )
        assert r.status_code in (400, 403), (body, r.text)
        assert api(proxy, f"/api/jobs/{job_id}").status_code == 404
    after = balance(proxy, "team-a")
    assert (after["credits_held"], after["credits_remaining"]) == (before["credits_held"], before["credits_remaining"])


def test_create_and_call_headers_tell_the_closed_job(proxy: Proxy) -> None:
    r = post(proxy, "/api/jobs/create-and-call", {"job_type": "chat", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 200
    assert r.headers["x-job-status"] == "completed"
    assert Decimal(r.headers["x-credits-remaining"]) == Decimal(str(r.json()["costs"]["credits_remaining"]))


def test_a_schema_that_cannot_be_checked_is_passed_through(proxy: Proxy) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "P", "schema": {"$ref": "#/$defs/Missing"}}}
    r = post(
        proxy,
        f"/api/jobs/ref-{uuid.uuid4().hex[:8]}/llm-call",
        {"messages": [{"role": "user", "content": "x"}], "response_format": fmt},
    )
    assert r.status_code == 200, r.text
    assert r.json()["response"]["parsed"] is not None


def test_the_admin_names_the_team_in_metadata_too(proxy: Proxy) -> None:
    job_id = f"meta-team-{uuid.uuid4().hex[:8]}"
    body = {"metadata": {"team_id": "team-b"}, "messages": [{"role": "user", "content": "x"}]}
    assert post(proxy, f"/api/jobs/{job_id}/llm-call", body, key="sk-master").status_code == 200
    assert wait_for_job(proxy, job_id, calls=1, key="sk-team-b")["team_id"] == "team-b"
    clash = {**body, "team_id": "team-a"}
    r = post(proxy, f"/api/jobs/{job_id}/llm-call", clash, key="sk-master")
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "team_id"
