"""The client's plumbing on httpx.MockTransport: error mapping, retries, exports."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

import litellm_jobs_plugin.client as client_module
from litellm_jobs_plugin.client import (
    APIError,
    InsufficientCredits,
    JobClosed,
    JobsClient,
    JobsError,
    StoreUnavailable,
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
