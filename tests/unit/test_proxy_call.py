"""The in-process call and the stream relay, against a small ASGI app (no proxy)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from litellm_jobs_plugin.call_routes import check_structured
from litellm_jobs_plugin.errors import InvalidStructuredOutput
from litellm_jobs_plugin.proxy_call import SSE_DONE, ProxyCall, Relay, sse_data, sse_event


class Gate:
    """Lets a test step a streaming endpoint one chunk at a time."""

    def __init__(self) -> None:
        self.open: asyncio.Queue[None] = asyncio.Queue()
        self.sent = 0
        self.finished = asyncio.Event()
        self.seen_headers: dict[str, str] = {}
        self.seen_body: Any = None


def app_for(gate: Gate) -> Starlette:
    async def chat(request: Request) -> StreamingResponse | JSONResponse:
        gate.seen_headers = dict(request.headers)
        gate.seen_body = await request.json()
        if not gate.seen_body.get("stream"):
            return JSONResponse({"ok": True}, headers={"x-litellm-call-id": request.headers["x-litellm-call-id"]})

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(3):
                await gate.open.get()
                gate.sent += 1
                yield sse_event({"n": i})
            gate.finished.set()

        return StreamingResponse(chunks(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


PARENT_SCOPE: dict[str, Any] = {"scheme": "http", "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 4000)}


async def test_a_call_forwards_the_key_names_the_call_and_drops_job_headers() -> None:
    gate = Gate()
    tasks: set[asyncio.Task[Any]] = set()
    headers = [
        (b"authorization", b"Bearer sk-team-a"),
        (b"x-job-id", b"from-the-client"),
        (b"content-length", b"999"),
        (b"x-litellm-call-id", b"client-chosen"),
    ]
    call = ProxyCall(
        app_for(gate),
        PARENT_SCOPE,
        {"model": "m", "messages": []},
        headers=headers,
        extra_headers=[(b"x-litellm-call-id", b"ours")],
        tasks=tasks,
    )
    status, response_headers = await call.head()
    assert status == 200
    assert await call.read_json() == {"ok": True}
    assert response_headers["x-litellm-call-id"] == "ours"
    assert gate.seen_headers["authorization"] == "Bearer sk-team-a"
    assert "x-job-id" not in gate.seen_headers
    assert gate.seen_headers["content-length"] == str(
        len(json.dumps({"model": "m", "messages": []}, separators=(",", ":")))
    )
    assert gate.seen_body == {"model": "m", "messages": []}


async def test_a_streamed_call_hands_on_each_chunk_as_the_app_sends_it() -> None:
    gate = Gate()
    tasks: set[asyncio.Task[Any]] = set()
    call = ProxyCall(app_for(gate), PARENT_SCOPE, {"stream": True}, headers=[], tasks=tasks)
    assert (await call.head())[0] == 200
    events = sse_data(call.body())
    for i in range(3):
        gate.open.put_nowait(None)
        assert json.loads(await anext(events)) == {"n": i}
        assert gate.sent == i + 1  # the next chunk is not produced yet: nothing was buffered ahead
    with pytest.raises(StopAsyncIteration):
        await anext(events)
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=5)
    assert not tasks


async def test_a_call_runs_to_its_end_when_nobody_reads_it() -> None:
    gate = Gate()
    tasks: set[asyncio.Task[Any]] = set()
    ProxyCall(app_for(gate), PARENT_SCOPE, {"stream": True}, headers=[], tasks=tasks)
    for _ in range(3):
        gate.open.put_nowait(None)
    await asyncio.wait_for(gate.finished.wait(), timeout=5)
    assert gate.sent == 3


async def test_a_failing_app_gives_a_500_head() -> None:
    async def broken(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    call = ProxyCall(broken, PARENT_SCOPE, {}, headers=[], tasks=set())
    assert await call.head() == (500, {})
    assert await call.read() == b""


async def test_the_relay_producer_goes_on_after_the_client_hangs_up() -> None:
    step = asyncio.Event()
    produced: list[int] = []
    after_stream = asyncio.Event()

    async def produce(emit: Any) -> None:
        for i in range(3):
            emit(sse_event({"n": i}))
            produced.append(i)
            await step.wait()
        after_stream.set()  # e.g. closing a job

    tasks: set[asyncio.Task[Any]] = set()
    relay = Relay(produce, tasks=tasks)
    events = relay.events()
    assert await anext(events) == sse_event({"n": 0})
    await events.aclose()  # the client hung up
    step.set()
    await asyncio.wait_for(after_stream.wait(), timeout=5)
    assert produced == [0, 1, 2]


async def test_a_failing_producer_ends_the_stream_with_an_error_event() -> None:
    async def produce(emit: Any) -> None:
        emit(sse_event({"n": 0}))
        raise RuntimeError("boom")

    relay = Relay(produce, tasks=set())
    received = [e async for e in relay.events()]
    assert received[0] == sse_event({"n": 0})
    assert json.loads(received[1][5:])["error"]["type"] == "server_error"
    assert received[-1] == SSE_DONE


async def test_sse_data_reassembles_events_split_anywhere() -> None:
    raw = b'data: {"a": 1}\n\ndata:{"b":\ndata: 2}\r\n\r\n: comment\n\ndata: [DONE]\n\n'

    async def pieces(size: int) -> AsyncIterator[bytes]:
        for i in range(0, len(raw), size):
            yield raw[i : i + size]

    for size in (1, 2, 3, 7, len(raw)):
        assert [d async for d in sse_data(pieces(size))] == ['{"a": 1}', '{"b":\n2}', "[DONE]"]


def test_done_is_skipped_by_seed_style_parsers_and_read_by_sse_parsers() -> None:
    line = SSE_DONE.strip()
    assert not line.startswith(b"data: ")  # the seed's examples json.loads every "data: " line
    assert line.removeprefix(b"data:").removeprefix(b" ") == b"[DONE]"  # SSE: one optional space


SCHEMA = {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}


@pytest.mark.parametrize(
    ("fmt", "content", "expected"),
    [
        (None, "plain text", None),
        ({"type": "text"}, "plain text", None),
        ({"type": "json_object"}, '{"a": 1}', {"a": 1}),
        ({"type": "json_schema", "json_schema": {"name": "P", "schema": SCHEMA}}, '{"age": 3}', {"age": 3}),
        # A schema the validator cannot read is not held against the answer.
        ({"type": "json_schema", "json_schema": {"name": "P", "schema": {"type": 12}}}, '{"x": 1}', {"x": 1}),
    ],
)
def test_structured_answers_are_parsed(fmt: Any, content: str, expected: Any) -> None:
    assert check_structured(fmt, content) == expected


@pytest.mark.parametrize(
    ("fmt", "content", "message"),
    [
        ({"type": "json_object"}, "{name: Ada", "not JSON"),
        ({"type": "json_schema", "json_schema": {"name": "P", "schema": SCHEMA}}, '{"age": "three"}', "at age"),
        ({"type": "json_schema", "json_schema": {"name": "P", "schema": SCHEMA}}, "{}", "(root)"),
        ({"type": "json_object"}, None, "no text"),
    ],
)
def test_invalid_structured_answers_are_a_clear_error(fmt: Any, content: Any, message: str) -> None:
    with pytest.raises(InvalidStructuredOutput, match=message) as info:
        check_structured(fmt, content)
    assert info.value.status == 502
