"""The store watch's verdict on PostgreSQL: a real server, a refused port, a server that never answers, and a
connection cut under it (a restart), through a forwarding port the test opens and closes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import psycopg

from litellm_jobs_plugin.store.watch import StoreWatch
from tests.support.services import free_port


class Forwarder:
    """A loopback port that forwards to PostgreSQL, answers nothing (``silent``), or is closed."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)  # a host, or a Unix socket's directory
        self.port = free_port()
        self.silent = False
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        if self.silent:
            await reader.read()  # holds the connection open, says nothing
            return
        host, port = self.target
        if host.startswith("/"):
            up_reader, up_writer = await asyncio.open_unix_connection(f"{host}/.s.PGSQL.{port}")
        else:
            up_reader, up_writer = await asyncio.open_connection(host, port)
        self._writers.add(up_writer)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def close(self) -> None:
        """Stop listening and cut every connection (what a restarting server does)."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()


@contextlib.asynccontextmanager
async def forwarder_to(database_url: str) -> AsyncIterator[tuple[Forwarder, str]]:
    params = psycopg.conninfo.conninfo_to_dict(database_url)
    forwarder = Forwarder(str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432))
    params.update(host="127.0.0.1", port=str(forwarder.port))
    try:
        yield forwarder, psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in params.items() if v is not None})
    finally:
        await forwarder.close()


async def test_the_verdict_follows_a_server_that_refuses_hangs_and_comes_back(database_url: str) -> None:
    async with forwarder_to(database_url) as (forwarder, url):
        watch = StoreWatch(url, interval_s=60, timeout_s=0.5, failures_to_down=2)
        try:
            assert await watch.check() is False  # nothing listens: refused, down at once

            await forwarder.open()
            assert await watch.check() is True  # back

            await forwarder.close()  # a restart: the watch's connection is cut, the port refuses
            assert await watch.check() is False

            await forwarder.open()
            assert await watch.check() is True
            await forwarder.close()
            await forwarder.open()  # cut and back before the next ping: the reused connection fails,
            assert await watch.check() is True  # a fresh one answers, so no outage is reported

            forwarder.silent = True
            await forwarder.close()
            await forwarder.open()  # accepts, never answers: one timeout is no verdict, two are
            assert await watch.check() is True
            assert await watch.check() is False

            forwarder.silent = False
            await forwarder.close()
            await forwarder.open()
            assert await watch.check() is True
        finally:
            await watch.aclose()
