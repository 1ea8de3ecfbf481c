"""The round-robin front of the two-replica credit modes (tests/support/front.py), against two small backends:
it alternates request by request on one kept-alive connection, passes status, headers, raw paths and bodies
unchanged and a stream chunk by chunk, and skips a replica that is not listening."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest
from aiohttp import web

from tests.support.front import Front
from tests.support.services import free_port


@dataclass
class Backend:
    name: str
    #: Set by the test: the stream's second chunk may go.
    go_on: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.path == "/stream":
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await response.write(f"data: first from {self.name}\n\n".encode())
            await self.go_on.wait()
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            return response
        body = await request.read()
        response = web.Response(
            status=418 if request.path == "/teapot" else 200,
            reason="I'm a teapot" if request.path == "/teapot" else None,
            body=body,
            headers={"X-Backend": self.name, "X-Raw-Path": request.raw_path, "X-Method": request.method},
        )
        response.headers.add("Set-Cookie", "a=1")
        response.headers.add("Set-Cookie", "b=2")
        return response


async def serve(handler: web.Server) -> tuple[web.ServerRunner, str]:
    runner = web.ServerRunner(handler)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


@pytest.fixture
async def fleet() -> AsyncIterator[tuple[list[Backend], str]]:
    backends = [Backend("a"), Backend("b")]
    runners, urls = [], []
    for backend in backends:
        runner, url = await serve(web.Server(backend.handle))
        runners.append(runner)
        urls.append(url)
    front = Front(urls)
    await front.open()
    runner, url = await serve(web.Server(front.handle))
    runners.append(runner)
    try:
        yield backends, url
    finally:
        for r in runners:
            await r.cleanup()
        await front.close()


async def test_requests_alternate_on_one_connection_unchanged(fleet: tuple[list[Backend], str]) -> None:
    _, url = fleet
    async with httpx.AsyncClient(base_url=url, limits=httpx.Limits(max_connections=1)) as client:
        answers = [await client.post("/echo/job%0Aid?x=%2F&y=1", content=b"\x00body") for _ in range(4)]
        teapot = await client.get("/teapot")
    assert [a.headers["x-backend"] for a in answers] == ["a", "b", "a", "b"]
    for answer in answers:
        assert answer.status_code == 200
        assert answer.content == b"\x00body"
        assert (answer.headers["x-method"], answer.headers["x-raw-path"]) == ("POST", "/echo/job%0Aid?x=%2F&y=1")
        assert answer.headers.get_list("set-cookie") == ["a=1", "b=2"]
    assert (teapot.status_code, teapot.reason_phrase) == (418, "I'm a teapot")


async def test_a_stream_passes_chunk_by_chunk(fleet: tuple[list[Backend], str]) -> None:
    backends, url = fleet
    async with httpx.AsyncClient(base_url=url) as client, client.stream("GET", "/stream") as response:
        assert response.headers["content-type"] == "text/event-stream"
        chunks = response.aiter_raw()
        first = await asyncio.wait_for(anext(chunks), timeout=10)  # before the backend sends the rest
        assert first == b"data: first from a\n\n"
        backends[0].go_on.set()
        assert b"".join([c async for c in chunks]) == b"data: [DONE]\n\n"


async def test_a_replica_that_is_not_listening_is_skipped() -> None:
    backend = Backend("up")
    runner, up = await serve(web.Server(backend.handle))
    front = Front([f"http://127.0.0.1:{free_port()}", up])  # the first: nothing listens there
    await front.open()
    front_runner, url = await serve(web.Server(front.handle))
    try:
        async with httpx.AsyncClient(base_url=url) as client:
            assert [(await client.get("/x")).headers["x-backend"] for _ in range(3)] == ["up"] * 3
    finally:
        await front_runner.cleanup()
        await runner.cleanup()
        await front.close()
