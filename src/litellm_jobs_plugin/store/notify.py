"""Waiting on a PostgreSQL connection for a NOTIFY (or its loss) without polling.

psycopg's ``notifies(timeout=...)`` wakes every 0.1 s while it waits; an idle proxy should not. These
helpers wait for the connection's socket to turn readable — a notification arrived, or the server
closed the connection — then take what arrived without waiting.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
from psycopg import sql

from .sql import query


async def listen(conn: psycopg.AsyncConnection[Any], channel: str) -> None:
    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))


async def notify(conn: psycopg.AsyncConnection[Any], channel: str) -> None:
    await conn.execute(query("notify"), {"channel": channel})


async def wait_for_notify(conn: psycopg.AsyncConnection[Any], timeout_s: float) -> int:
    """Wait until something arrives on ``conn`` or ``timeout_s`` pass; the notifications received (consumed).

    A connection the server closed wakes this too (with 0): the caller's next query on it fails, which is
    how it learns of the loss. Only while nothing else uses ``conn``.
    """
    if timeout_s <= 0:
        return 0
    loop = asyncio.get_running_loop()
    readable: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not readable.done():
            readable.set_result(None)

    fd = conn.fileno()
    loop.add_reader(fd, ready)
    try:
        await asyncio.wait_for(readable, timeout_s)
    except TimeoutError:
        return 0
    finally:
        loop.remove_reader(fd)
    received = 0
    try:
        async for _ in conn.notifies(timeout=0):
            received += 1
    except psycopg.Error:
        pass  # the connection is gone: the caller's next query says so
    return received
