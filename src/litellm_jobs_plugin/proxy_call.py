"""Calls to the proxy's own ``/v1/chat/completions``, in process, streamed as the proxy answers.

The seed routes (``llm-call``, ``llm-call-stream``, ``create-and-call``) must take the proxy's own
completion path — auth, our hooks, routing, fallbacks, cache, budgets, logging — exactly as a
client calling ``/v1/chat/completions`` would, without an HTTP hop to ourselves. Driving the ASGI
app directly does that. ``httpx.ASGITransport`` would too, but it collects the whole body before
returning (it runs the app to its end first), so a stream would reach the client all at the end; here each
``http.response.body`` message is handed on as the app sends it.

The app runs as a task of its own that outlives the request that started it: a client that hangs
up mid-stream does not cancel the upstream call, which runs to its end and is logged (and so
recorded) like any other. :class:`ProxyCall` never reports a disconnect to the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from . import money

_log = logging.getLogger("litellm_jobs_plugin")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]

CHAT_COMPLETIONS_PATH = "/v1/chat/completions"
#: Request headers not passed on to the in-process call: hop-by-hop, body framing, and our job
#: headers (the route's path names the job; a header naming another would only confuse).
_DROPPED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "content-type",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "accept-encoding",
        "expect",
        "upgrade",
        "x-job-id",
        "x-job-type",
        "x-litellm-call-id",
        "x-litellm-jobs-call-proof",
    }
)
_END = object()


class ProxyCall:
    """One POST to the proxy's own app, run as a task; read its head, then its body as it comes.

    ``headers`` are the client's request headers (its key: the call is authorised as the client's
    own); hop-by-hop, body and job headers are dropped. ``tasks`` keeps a strong reference to the
    running app task until it ends (the plugin waits for them at shutdown).
    """

    def __init__(
        self,
        app: ASGIApp,
        parent_scope: Scope,
        body: dict[str, Any],
        *,
        headers: Iterable[tuple[bytes, bytes]],
        extra_headers: Iterable[tuple[bytes, bytes]] = (),
        tasks: set[asyncio.Task[Any]],
        path: str = CHAT_COMPLETIONS_PATH,
    ) -> None:
        self._body = json.dumps(body, separators=(",", ":")).encode()
        self._scope: Scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": parent_scope.get("scheme", "http"),
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": [
                *((k, v) for k, v in headers if k.decode("latin-1").lower() not in _DROPPED_HEADERS),
                *extra_headers,
                (b"content-type", b"application/json"),
                (b"content-length", str(len(self._body)).encode()),
            ],
            "client": parent_scope.get("client"),
            "server": parent_scope.get("server"),
        }
        if "state" in parent_scope:
            self._scope["state"] = dict(parent_scope["state"])
        self._app = app
        self._request_sent = False
        self._finished = asyncio.Event()
        self._head: asyncio.Future[tuple[int, dict[str, str]]] = asyncio.get_running_loop().create_future()
        self._chunks: asyncio.Queue[object] = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="litellm-jobs-proxy-call")
        tasks.add(self._task)
        self._task.add_done_callback(tasks.discard)

    async def _run(self) -> None:
        try:
            await self._app(self._scope, self._receive, self._send)
        except Exception:
            # The app's own error middleware has answered (500) if it could; the head is set below.
            _log.exception("litellm-jobs: the in-process call to %s failed", self._scope["path"])
        finally:
            self._finished.set()
            if not self._head.done():
                self._head.set_result((500, {}))
            self._chunks.put_nowait(_END)

    async def _receive(self) -> Message:
        if not self._request_sent:
            self._request_sent = True
            return {"type": "http.request", "body": self._body, "more_body": False}
        # No disconnect is reported while the app runs: the call outlives its client.
        await self._finished.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in message.get("headers", ())}
            if not self._head.done():
                self._head.set_result((int(message["status"]), headers))
        elif message["type"] == "http.response.body":
            body = message.get("body", b"")
            if body:
                self._chunks.put_nowait(bytes(body))

    async def head(self) -> tuple[int, dict[str, str]]:
        """The response's status and headers (lower-case names)."""
        return await asyncio.shield(self._head)

    async def body(self) -> AsyncIterator[bytes]:
        """The response body, piece by piece as the app sends it."""
        while True:
            item = await self._chunks.get()
            if item is _END:
                return
            assert isinstance(item, bytes)
            yield item

    async def read(self) -> bytes:
        return b"".join([piece async for piece in self.body()])

    async def read_json(self) -> Any:
        raw = await self.read()
        with contextlib.suppress(ValueError):
            return json.loads(raw)
        return None


async def sse_data(pieces: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """The ``data`` field of each Server-Sent Event in a byte stream (events may span pieces)."""
    buffer = b""
    async for piece in pieces:
        # Normalised on the whole buffer: a CRLF may be split between two pieces.
        buffer = (buffer + piece).replace(b"\r\n", b"\n")
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            data = [line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
            if data:
                yield b"\n".join(data).decode()
    tail = [line[5:].removeprefix(b" ") for line in buffer.split(b"\n") if line.startswith(b"data:")]
    if tail:
        yield b"\n".join(tail).decode()


class Relay:
    """Bytes from a producer task to a streaming response, while the client listens.

    The producer runs as a task of its own: when the client hangs up, the response's generator
    stops and the producer goes on alone (its output dropped), so what it does after the stream —
    waiting for the call's cost, closing a job — happens whether anybody still listens or not.
    """

    def __init__(
        self, produce: Callable[[Callable[[bytes], None]], Awaitable[None]], *, tasks: set[asyncio.Task[Any]]
    ) -> None:
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._listening = True
        self._task = asyncio.get_running_loop().create_task(self._run(produce), name="litellm-jobs-relay")
        tasks.add(self._task)
        self._task.add_done_callback(tasks.discard)

    def _emit(self, data: bytes) -> None:
        if self._listening:
            self._queue.put_nowait(data)

    async def _run(self, produce: Callable[[Callable[[bytes], None]], Awaitable[None]]) -> None:
        try:
            await produce(self._emit)
        except Exception:
            _log.exception("litellm-jobs: a streamed call's relay failed")
            self._emit(sse_event({"error": {"message": "The stream failed inside the proxy.", "type": "server_error"}}))
            self._emit(SSE_DONE)
        finally:
            self._queue.put_nowait(_END)

    async def events(self) -> AsyncIterator[bytes]:
        try:
            while True:
                item = await self._queue.get()
                if item is _END:
                    return
                assert isinstance(item, bytes)
                yield item
        finally:
            # The stream ended or the client hung up: the producer finishes on its own.
            self._listening = False


#: The end of a stream. Written without the optional space after the colon: to an SSE parser
#: (the OpenAI SDK's, httpx-sse, browsers) it is the usual ``[DONE]``, while code written for the
#: seed system — which parses every line starting with ``data: `` as JSON — skips it.
SSE_DONE = b"data:[DONE]\n\n"


def sse_event(payload: object) -> bytes:
    return b"data: " + money.dumps(payload, separators=(",", ":"), fallback=str).encode() + b"\n\n"
