"""The clients' plumbing on httpx.MockTransport: error mapping, retries, exports, and the sync twin
sending what the async client sends."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest

import litellm_jobs_plugin.client as client_module
from litellm_jobs_plugin.client import (
    APIError,
    InsufficientCredits,
    JobClosed,
    JobNotFound,
    JobsClient,
    JobsError,
    StoreUnavailable,
    SyncJobsClient,
    error_from,
)
from litellm_jobs_plugin.errors import ERRORS_BY_TYPE

CREATED = {
    "job_id": "j-1",
    "team_id": "team-a",
    "job_type": "chat",
    "status": "pending",
    "created_at": "2026-12-02T06:00:00+00:00",
}


def client_on(handler: Callable[[httpx.Request], httpx.Response], **kwargs: Any) -> JobsClient:
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return JobsClient("http://proxy", "sk-team-a", http_client=http, **kwargs)


def test_every_error_type_maps_back_to_its_class() -> None:
    for kind, cls in ERRORS_BY_TYPE.items():
        exc = error_from(cls.status, {"error": {"message": "m", "type": kind, "param": "p", "code": str(cls.status)}})
        assert type(exc) is cls
        assert (exc.message, exc.param, exc.status_code) == ("m", "p", cls.status)
    other = error_from(500, {"error": {"message": "upstream down", "type": "internal_server_error"}})
    assert isinstance(other, APIError)
    assert isinstance(other, JobsError)
    assert (other.error_type, other.status_code) == ("internal_server_error", 500)
    assert error_from(502, None).message == "HTTP 502"


def test_the_package_exports_what_it_documents() -> None:
    assert sorted(client_module.__all__) == client_module.__all__
    for name in client_module.__all__:
        assert hasattr(client_module, name), name


async def test_idempotent_requests_are_retried_on_503_and_connection_errors() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content)["job_id"])
        if len(seen) == 1:
            raise httpx.ReadError("reset", request=request)
        if len(seen) == 2:
            return httpx.Response(503, json={"error": {"type": "jobs_store_unavailable", "message": "later"}})
        return httpx.Response(201, json=CREATED)

    async with client_on(handler, max_retries=2) as client:
        created = await client.create_job("chat")
    assert created.job_id == "j-1"
    # Every try named the same job: the client chose its id, so a retry is the same job.
    assert len(seen) == 3
    assert len(set(seen)) == 1


async def test_retries_stop_at_max_retries() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(503, json={"error": {"type": "jobs_store_unavailable", "message": "later"}})

    async with client_on(handler, max_retries=1) as client:
        with pytest.raises(StoreUnavailable):
            await client.get_job("j-1")
    assert calls == 2


async def test_calls_are_not_retried_once_they_may_have_reached_the_proxy() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        raise httpx.ReadTimeout("lost", request=request)

    async with client_on(handler, max_retries=3) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.llm_call("j-1", [{"role": "user", "content": "x"}])
    assert calls == 1


async def test_calls_that_never_left_are_retried() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(402, json={"error": {"type": "insufficient_credits", "message": "no credits"}})

    async with client_on(handler, max_retries=3) as client:
        with pytest.raises(InsufficientCredits):
            await client.llm_call("j-1", [{"role": "user", "content": "x"}])
    assert calls == 2  # the 402 is an answer, not retried


async def test_4xx_answers_are_never_retried() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(409, json={"error": {"type": "job_closed", "message": "closed"}})

    async with client_on(handler, max_retries=3) as client:
        with pytest.raises(JobClosed):
            await client.complete_job("j-1", "failed")
    assert calls == 1


async def test_team_id_goes_with_every_request() -> None:
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        if request.method == "POST":
            return httpx.Response(201, json=CREATED)
        return httpx.Response(404, json={"error": {"type": "job_not_found", "message": "no"}})

    async with client_on(handler, team_id="team-a") as client:
        await client.create_job("chat", job_id="j-1")
        with pytest.raises(JobsError):
            await client.get_job("j-1")
    assert json.loads(requests[0].content)["team_id"] == "team-a"
    assert requests[1].url.params["team_id"] == "team-a"


async def test_a_closed_client_cannot_be_used_again() -> None:
    client = client_on(lambda r: httpx.Response(200, json={}))
    async with client:
        pass
    with pytest.raises(RuntimeError, match="closed"):
        await client.get_job("j-1")
    with pytest.raises(RuntimeError, match="reopened"):
        await client.__aenter__()


COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "ChatAgent",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
}


async def test_chat_is_resent_only_when_it_never_reached_the_proxy() -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        if len(seen) == 1:
            raise httpx.ConnectError("refused", request=request)
        if len(seen) == 2:
            return httpx.Response(503, json={"error": {"type": "jobs_store_unavailable", "message": "starting"}})
        return httpx.Response(200, json=COMPLETION)

    async with client_on(handler, max_retries=2, default_model="ChatAgent") as client:
        job = client.job("chat", job_id="j-1")
        reply = await job.chat(messages=[{"role": "user", "content": "x"}], purpose="p")
    assert reply.choices[0].message.content == "hi"
    assert len(seen) == 3
    assert seen[0]["metadata"] == {"job_id": "j-1", "job_type": "chat", "purpose": "p"}


async def test_chat_is_not_resent_after_it_may_have_reached_an_upstream() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise httpx.ReadTimeout("slow", request=request)
        return httpx.Response(500, json={"error": {"type": "internal_server_error", "message": "boom"}})

    async with client_on(handler, max_retries=3, default_model="ChatAgent") as client:
        job = client.job("chat", job_id="j-1")
        with pytest.raises(openai.APITimeoutError):
            await job.chat(messages=[{"role": "user", "content": "x"}])
        with pytest.raises(APIError):
            await job.chat(messages=[{"role": "user", "content": "x"}])
    assert calls == 2


async def test_streams_do_not_change_the_clients_headers() -> None:
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        if request.url.path.endswith("llm-call-stream"):
            return httpx.Response(
                200, headers={"content-type": "text/event-stream"}, content=b'data: {"content": "a"}\n\ndata:[DONE]\n\n'
            )
        return httpx.Response(404, json={"error": {"type": "job_not_found", "message": "no"}})

    async with client_on(handler) as client:
        events = [e async for e in client.llm_call_stream("j-1", [{"role": "user", "content": "x"}])]
        with pytest.raises(JobsError):
            await client.get_job("j-1")
    assert [e.content for e in events] == ["a"]
    assert requests[0].headers["accept"] == "text/event-stream"
    assert requests[1].headers.get("accept") != "text/event-stream"


async def test_create_and_call_streams_only_through_its_stream_method() -> None:
    async with client_on(lambda r: httpx.Response(200, json={})) as client:
        with pytest.raises(ValueError, match="create_and_call_stream"):
            await client.create_and_call("chat", [{"role": "user", "content": "x"}], stream=True)


# -- the sync twin ---------------------------------------------------------------------------------------


def sync_client_on(handler: Callable[[httpx.Request], httpx.Response], **kwargs: Any) -> SyncJobsClient:
    http = httpx.Client(transport=httpx.MockTransport(handler))
    return SyncJobsClient("http://proxy", "sk-team-a", http_client=http, **kwargs)


COMPLETED = {
    "job_id": "j-1",
    "status": "completed",
    "completed_at": "2026-12-02T06:01:00+00:00",
    "costs": {
        "total_calls": 1,
        "successful_calls": 1,
        "failed_calls": 0,
        "prompt_tokens": 1,
        "completion_tokens": 1,
        "total_tokens": 2,
        "total_cost_usd": "0.001",
        "avg_latency_ms": 1.0,
        "credits_charged": "1",
        "credit_applied": True,
        "credits_remaining": "9",
    },
}
STREAM = b'data: {"content": "a"}\n\ndata: {"content": "b", "call_id": "c-1"}\n\ndata: [DONE]\n\n'
CHUNKS = (
    b'data: {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": '
    b'[{"index": 0, "delta": {"content": "hi"}}]}\n\n'
    b'data: {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [], '
    b'"usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}\n\ndata: [DONE]\n\n'
)


def answer(request: httpx.Request) -> httpx.Response:
    """A proxy in miniature: enough of every route for both clients to go through each operation."""
    path = request.url.path
    if path.endswith("/llm-call-stream") or (path.endswith("create-and-call") and b'"stream"' in request.content):
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=STREAM)
    if path == "/v1/chat/completions":
        if json.loads(request.content).get("stream"):
            headers = {"content-type": "text/event-stream", "x-litellm-call-id": "c-2"}
            return httpx.Response(200, headers=headers, content=CHUNKS)
        return httpx.Response(200, json=COMPLETION)
    if path.endswith("/complete"):
        return httpx.Response(200, json=COMPLETED)
    if path == "/api/jobs/create":
        return httpx.Response(201, json=CREATED)
    if path.startswith("/api/teams/"):
        return httpx.Response(
            200, json={"team_id": "team-a", "credits_allocated": 10, "credits_remaining": 9, "credits_held": 0}
        )
    if path == "/api/jobs":
        return httpx.Response(200, json={"jobs": [], "next_cursor": None})
    if path.endswith("/costs"):
        return httpx.Response(404, json={"error": {"type": "job_not_found", "message": "no"}})
    return httpx.Response(200, json={"calls": []})


def recorded(requests: list[httpx.Request]) -> list[tuple[str, str, str, Any]]:
    """What the proxy saw, job ids chosen at random replaced."""
    out = []
    for r in requests:
        body = json.loads(r.content) if r.content else None
        if isinstance(body, dict) and str(body.get("job_id", "")).startswith("job-"):
            body["job_id"] = "<random>"
        out.append((r.method, r.url.path, str(r.url.params), body))
    return out


async def test_the_sync_client_sends_what_the_async_one_sends() -> None:
    seen: dict[str, list[httpx.Request]] = {"async": [], "sync": []}
    messages = [{"role": "user", "content": "x"}]

    async with client_on(lambda r: seen["async"].append(r) or answer(r), team_id="team-a", default_model="M") as a:
        async with a.job("chat", job_id="j-1", metadata={"k": 1}) as job:
            await job.chat(messages=messages, purpose="p")
            async_deltas = [d async for d in job.chat_stream(messages=messages)]
        created = await a.create_job("chat", max_cost_usd=Decimal("0.5"))
        async_events = [e async for e in a.llm_call_stream(created.job_id, messages)]
        async_events += [e async for e in a.create_and_call_stream("chat", messages)]
        await a.get_calls("j-1")
        await a.list_jobs(status="completed", limit=5)
        team = await a.get_team()
        with pytest.raises(JobNotFound):
            await a.get_costs("j-2")
        await a.complete_job("j-1", "failed", error_message="e")

    with sync_client_on(lambda r: seen["sync"].append(r) or answer(r), team_id="team-a", default_model="M") as s:
        with s.job("chat", job_id="j-1", metadata={"k": 1}) as sync_job:
            sync_job.chat(messages=messages, purpose="p")
            stream = sync_job.chat_stream(messages=messages)
            sync_deltas = list(stream)
        created = s.create_job("chat", max_cost_usd=Decimal("0.5"))
        sync_events = list(s.llm_call_stream(created.job_id, messages))
        sync_events += list(s.create_and_call_stream("chat", messages))
        s.get_calls("j-1")
        s.list_jobs(status="completed", limit=5)
        assert s.get_team() == team
        with pytest.raises(JobNotFound):
            s.get_costs("j-2")
        s.complete_job("j-1", "failed", error_message="e")

    assert recorded(seen["sync"]) == recorded(seen["async"])
    assert len(seen["sync"]) == 12
    assert sync_deltas == async_deltas == ["hi"]
    assert (stream.text, stream.call_id, stream.usage and stream.usage.total_tokens) == ("hi", "c-2", 3)
    assert sync_events == async_events
    assert [e.content for e in sync_events] == ["a", "b", "a", "b"]
    assert sync_job.result == job.result
    assert sync_job.costs.credits_remaining == Decimal(9)


def test_the_sync_client_retries_as_the_async_one() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content)["job_id"])
        if len(seen) == 1:
            raise httpx.ReadError("reset", request=request)
        if len(seen) == 2:
            return httpx.Response(503, json={"error": {"type": "jobs_store_unavailable", "message": "later"}})
        return httpx.Response(201, json=CREATED)

    with sync_client_on(handler, max_retries=2) as client:
        assert client.create_job("chat").job_id == "j-1"
    assert len(seen) == 3
    assert len(set(seen)) == 1

    calls = 0

    def lost(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise httpx.ConnectError("refused", request=request)
        raise httpx.ReadTimeout("lost", request=request)

    with sync_client_on(lost, max_retries=3) as client, pytest.raises(httpx.ReadTimeout):
        client.llm_call("j-1", [{"role": "user", "content": "x"}])
    assert calls == 2  # resent once it never left, not after it may have reached the proxy

    with sync_client_on(lambda r: httpx.Response(503, json={}), max_retries=1) as client, pytest.raises(APIError):
        client.get_job("j-1")


def test_the_sync_clients_chat_is_resent_only_when_it_never_reached_the_proxy() -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        if len(seen) == 1:
            raise httpx.ConnectError("refused", request=request)
        if len(seen) == 2:
            return httpx.Response(503, json={"error": {"type": "jobs_store_unavailable", "message": "starting"}})
        if len(seen) == 3:
            return httpx.Response(200, json=COMPLETION)
        return httpx.Response(402, json={"error": {"type": "insufficient_credits", "message": "no credits"}})

    with sync_client_on(handler, max_retries=2, default_model="ChatAgent") as client:
        job = client.job("chat", job_id="j-1")
        assert job.chat(messages=[{"role": "user", "content": "x"}]).choices[0].message.content == "hi"
        with pytest.raises(InsufficientCredits):
            job.chat(messages=[{"role": "user", "content": "x"}])
    assert len(seen) == 4
    assert seen[0]["metadata"] == {"job_id": "j-1", "job_type": "chat"}


def test_a_sync_job_block_fails_the_job_when_it_raises() -> None:
    bodies: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return answer(request)

    with sync_client_on(handler) as client:
        job = client.job("chat", job_id="j-1")
        with pytest.raises(RuntimeError, match="parsing"), job:
            raise RuntimeError("parsing failed")
    assert bodies[-1] == {"status": "failed", "error_message": "RuntimeError: parsing failed"}
    assert job.result is not None


def test_a_closed_sync_client_cannot_be_used_again() -> None:
    client = sync_client_on(answer)
    with client:
        pass
    with pytest.raises(RuntimeError, match="SyncJobsClient is closed"):
        client.get_job("j-1")
    with pytest.raises(RuntimeError, match="reopened"):
        client.__enter__()


def test_the_twins_show_the_same_signatures_and_docs() -> None:
    public = [n for n in dir(JobsClient) if not n.startswith("_") and callable(getattr(JobsClient, n))]
    for name in set(public) - {"aclose"}:
        a, s = getattr(JobsClient, name), getattr(SyncJobsClient, name)
        assert inspect.signature(a) == inspect.signature(s), name
        assert a.__doc__ == s.__doc__, name
    assert "job_type" in inspect.signature(SyncJobsClient("http://p", "k").create_job).parameters
    assert callable(SyncJobsClient.close)
