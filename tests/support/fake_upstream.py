"""A fake OpenAI-compatible upstream for the tests, run as its own process on 127.0.0.1.

``/{scenario}/v1/chat/completions`` answers like OpenAI (streaming with usage too), and
``/{scenario}/v1/embeddings`` with one small vector per input. A user
message containing ``[fail:500]`` or ``[fail:429]`` makes it fail, unless the scenario path
is ``nofail``; ``[delay:0.5]`` delays the answer; ``[chunks:5:0.2]`` streams 5 chunks 0.2 s apart.
A request with a JSON-schema ``response_format`` gets an answer that fits the schema (built from
it), unless a message contains ``[bad-json]``, or ``[long-json:N]`` (``{"answer": "..."}``, the
string N characters of ``LONG-ANSWER-`` over and over, whatever the schema).
``GET /_stats`` counts the requests received per scenario, and streams started and finished
(``stream_started`` / ``stream_finished``, by a ``[tag:NAME]`` marker too); ``POST /_reset`` zeroes them.

Run: ``python -m tests.support.fake_upstream --port 0 --port-file PATH``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

REPLY = "Hello from the fake upstream"
LONG_ANSWER = "LONG-ANSWER-"
_counts: Counter[str] = Counter()


def _text_of(body: dict[str, Any]) -> str:
    parts: list[str] = []
    for message in body.get("messages") or []:
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "\n".join(parts)


def instance_of(schema: dict[str, Any], defs: dict[str, Any] | None = None) -> Any:
    """A small value that fits a JSON schema (the subset Pydantic emits)."""
    defs = defs if defs is not None else schema.get("$defs", {})
    if "$ref" in schema:
        return instance_of(defs.get(schema["$ref"].rsplit("/", 1)[-1], {"type": "object"}), defs)
    if "enum" in schema:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            return instance_of(schema[key][0], defs)
    kind = schema.get("type", "object")
    kind = kind[0] if isinstance(kind, list) else kind
    if kind == "object":
        props = schema.get("properties", {})
        return {name: instance_of(props[name], defs) for name in props}
    if kind == "array":
        return [instance_of(schema.get("items", {"type": "string"}), defs)]
    if kind == "string":
        return "user@example.com" if schema.get("format") == "email" else "Ada Lovelace"
    return {"integer": 36, "number": 1.5, "boolean": True, "null": None}.get(kind, "x")


def _reply_for(body: dict[str, Any], prompt: str) -> str:
    fmt = body.get("response_format")
    if not isinstance(fmt, dict) or fmt.get("type") not in ("json_schema", "json_object"):
        return REPLY
    if "[bad-json]" in prompt:
        return "Sure! Here is the person: {name: Ada"
    long_json = re.search(r"\[long-json:(\d+)\]", prompt)
    if long_json:
        size = int(long_json[1])
        return json.dumps({"answer": (LONG_ANSWER * (size // len(LONG_ANSWER) + 1))[:size]})
    schema = (fmt.get("json_schema") or {}).get("schema") or {"type": "object", "properties": {}}
    return json.dumps(instance_of(schema))


def _usage(prompt: str, completion: str) -> dict[str, int]:
    p, c = max(1, len(prompt.split())), max(1, len(completion.split()))
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


async def chat(request: Request) -> Response:
    scenario = request.path_params["scenario"]
    _counts[scenario] += 1
    _counts["_total"] += 1
    body = await request.json()
    prompt = _text_of(body)
    if scenario != "nofail":
        fail = re.search(r"\[fail:(\d{3})\]", prompt)
        if fail:
            code = int(fail[1])
            return JSONResponse(
                {"error": {"message": f"fake upstream failure {code}", "type": "server_error", "code": str(code)}},
                status_code=code,
            )
    delay = re.search(r"\[delay:([0-9.]+)\]", prompt)
    if delay:
        await asyncio.sleep(float(delay[1]))
    model = body.get("model", "fake")
    cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    reply = _reply_for(body, prompt)
    if not body.get("stream"):
        return JSONResponse(
            {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
                "usage": _usage(prompt, reply),
            }
        )
    tag = re.search(r"\[tag:([A-Za-z0-9_-]+)\]", prompt)
    counters = ["stream_started", *([f"stream_started:{tag[1]}"] if tag else [])]
    chunks_spec = re.search(r"\[chunks:(\d+):([0-9.]+)\]", prompt)
    n_chunks, gap = (int(chunks_spec[1]), float(chunks_spec[2])) if chunks_spec else (3, 0.0)
    words = reply.split() + [f"w{i}" for i in range(max(0, n_chunks - len(reply.split())))]
    bounds = [round(i * len(words) / n_chunks) for i in range(n_chunks + 1)]
    pieces = [" ".join(words[bounds[i] : bounds[i + 1]]) for i in range(n_chunks)]
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

    for name in counters:
        _counts[name] += 1

    async def events() -> AsyncIterator[bytes]:
        def chunk(delta: dict[str, Any], finish: str | None = None, usage: Any = None) -> bytes:
            payload: dict[str, Any] = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            if usage is not None:
                payload["choices"] = []
                payload["usage"] = usage
            return f"data: {json.dumps(payload)}\n\n".encode()

        yield chunk({"role": "assistant", "content": ""})
        for i, piece in enumerate(pieces):
            if i and gap:
                await asyncio.sleep(gap)
            yield chunk({"content": piece if i == 0 else " " + piece})
        yield chunk({}, finish="stop")
        if include_usage:
            yield chunk({}, usage=_usage(prompt, " ".join(pieces)))
        yield b"data: [DONE]\n\n"
        for name in counters:
            _counts[name.replace("started", "finished")] += 1

    return StreamingResponse(events(), media_type="text/event-stream")


async def embeddings(request: Request) -> Response:
    """One 3-number vector per input text; a token per word."""
    body = await request.json()
    _counts[request.path_params["scenario"]] += 1
    texts = body.get("input")
    texts = [texts] if isinstance(texts, str) else [str(t) for t in texts or []]
    tokens = sum(len(t.split()) or 1 for t in texts)
    return JSONResponse(
        {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]} for i in range(len(texts))],
            "model": body.get("model", "fake-embedder"),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


async def sink(request: Request) -> Response:
    """A receiver of webhooks and usage events (the bench's billing variant): counted, answered 204."""
    await request.body()
    _counts[f"sink:{request.path_params['name']}"] += 1
    return Response(status_code=204)


async def stats(request: Request) -> Response:
    return JSONResponse(dict(_counts))


async def reset(request: Request) -> Response:
    _counts.clear()
    return JSONResponse({})


app = Starlette(
    routes=[
        Route("/{scenario}/v1/chat/completions", chat, methods=["POST"]),
        Route("/{scenario}/chat/completions", chat, methods=["POST"]),
        Route("/{scenario}/v1/embeddings", embeddings, methods=["POST"]),
        Route("/{scenario}/embeddings", embeddings, methods=["POST"]),
        Route("/_sink/{name}", sink, methods=["POST"]),
        Route("/_stats", stats, methods=["GET"]),
        Route("/_reset", reset, methods=["POST"]),
    ]
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file")
    args = parser.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    if args.port_file:
        with open(args.port_file + ".tmp", "w") as f:
            f.write(str(sock.getsockname()[1]))
        import os

        os.replace(args.port_file + ".tmp", args.port_file)
    # Keep idle connections longer than LiteLLM's client does (its aiohttp pool: AIOHTTP_KEEPALIVE_TIMEOUT,
    # 120 s; uvicorn's default is 5 s): reusing one the server has just closed fails the attempt ("Server
    # disconnected"), which LiteLLM retries — extra work and noise no real upstream causes (bench/RESULTS.md run 3).
    config = uvicorn.Config(app, log_level="warning", access_log=False, backlog=2048, timeout_keep_alive=300)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
