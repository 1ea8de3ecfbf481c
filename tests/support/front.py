"""A round-robin HTTP front for two (or more) proxy replicas, as a load balancer would put them behind one URL.

Each request goes to the next replica in turn, whatever connection it came on (the OpenAI SDK keeps its
connections alive: a per-connection balancer would send a test's every call to one replica). Status,
headers and body pass unchanged, the body chunk by chunk as the replica sends it (an SSE stream stays a
stream); only the hop-by-hop headers are the front's own. A replica that refuses the connection (stopped)
is skipped, as a load balancer's health check would; a request that reached a replica is never sent twice.

Run as ``python -m tests.support.front --port-file FILE http://127.0.0.1:PORT ...``; it writes its port
to FILE once it listens, and stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import signal
from pathlib import Path

from aiohttp import ClientConnectorError, ClientSession, ClientTimeout, TCPConnector, web
from multidict import CIMultiDict
from yarl import URL

#: Headers of one connection (RFC 9110 §7.6.1), never forwarded; Host is forwarded as the client sent it.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
#: Headers the client would add on its own: left to the caller, never invented by the front.
NO_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")
#: Request lines and headers as long as a replica itself takes (uvicorn/h11 has no small limit).
MAX_HEADER = 1024 * 1024


def forwarded(headers: CIMultiDict[str] | object) -> CIMultiDict[str]:
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():  # type: ignore[attr-defined]
        if name.lower() not in HOP_BY_HOP:
            out.add(name, value)
    return out


class Front:
    """Every request to the next backend in turn; no routing (any path, any method, any byte in it)."""

    def __init__(self, backends: list[str]) -> None:
        self.backends = backends
        self.turn = itertools.count()
        self.session: ClientSession | None = None

    async def open(self) -> None:
        self.session = ClientSession(
            # A pooled connection is dropped well before a replica's own keep-alive timeout (uvicorn: 5 s)
            # would close it under a request.
            connector=TCPConnector(limit=0, keepalive_timeout=2),
            auto_decompress=False,  # the bytes as the replica sent them, with their Content-Encoding
            timeout=ClientTimeout(total=None, sock_connect=10),
            skip_auto_headers=NO_AUTO_HEADERS,
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        assert self.session is not None
        body = await request.content.read()  # all of it (no size limit: the replica applies its own)
        first = next(self.turn)
        for attempt in range(len(self.backends)):
            backend = self.backends[(first + attempt) % len(self.backends)]
            try:
                upstream = await self.session.request(
                    request.method,
                    URL(backend + request.raw_path, encoded=True),  # the path and query as sent
                    headers=forwarded(request.headers),
                    data=body or None,
                    allow_redirects=False,
                )
            except ClientConnectorError:
                continue  # not connected: nothing was sent; the next replica takes it
            async with upstream:
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                response.headers.extend(forwarded(upstream.headers))
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)  # SSE: each chunk as it comes
                await response.write_eof()
                return response
        return web.json_response(
            {"error": {"message": "no proxy replica is reachable", "type": "bad_gateway"}}, status=502
        )


async def serve(backends: list[str], port_file: Path, port: int) -> None:
    front = Front(backends)
    await front.open()
    server = web.Server(front.handle, max_line_size=MAX_HEADER, max_field_size=MAX_HEADER)
    runner = web.ServerRunner(server, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=1024)
    await site.start()
    bound = runner.addresses[0][1]
    tmp = port_file.with_suffix(".tmp")
    tmp.write_text(str(bound))
    os.replace(tmp, port_file)  # the port file appears whole
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    with contextlib.suppress(Exception):
        await runner.cleanup()
        await front.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port-file", type=Path, required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("backends", nargs="+")
    args = parser.parse_args()
    asyncio.run(serve([b.rstrip("/") for b in args.backends], args.port_file, args.port))


if __name__ == "__main__":
    main()
