"""Pipelined connections to a single Redis, for the commands on a call's path and the journal's reads.

Every tracked call runs two Lua scripts before its answer leaves (its admission, then its record
with the job's cost or the job's closure), and the journal's reader reads (and acknowledges) once per
batch. Through redis-py each command costs several times Redis's own work in client machinery (a
pooled connection checked out and back, a retry wrapper, a timeout context, the reply parser) — the
largest part of what Redis credits add to a call. A channel sends commands on one connection of its
own: packed by hiredis and written at once, replies come back in the order the commands were sent
(Redis answers one connection in order) and are matched to their waiters first in, first out, so
concurrent calls share the socket without waiting for each other's round trips. Credits use one
channel for their ``EVALSHA`` commands; each journal stream's reader has its own (its blocking
``XREADGROUP`` holds the connection while it waits).

A waiter that gives up (cancelled, or past ``timeout_s``) keeps its place in the queue: its reply,
when it comes, is dropped, so later replies still find their own waiters. A timeout also drops the
connection (Redis is not answering), which fails every waiter on it with
:class:`redis.exceptions.ConnectionError`, the error redis-py raises, which the callers already turn
into ``503``. The next command connects again.

Used for a single Redis over TCP or a Unix socket without TLS (``redis://``, ``unix://``); a Redis
Cluster or ``rediss://`` keeps redis-py's client for everything.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Sequence
from typing import Any, cast

import hiredis
from redis.asyncio.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError


def supports(url: str) -> bool:
    """A URL this channel can serve (a single Redis, no TLS)."""
    return url.split("://", 1)[0].lower() in ("redis", "unix")


def _arg(value: Any) -> Any:
    """What hiredis packs as is (str, bytes, int, float); anything else as its text, as redis-py does."""
    return value if isinstance(value, (str, bytes, int, float)) else str(value)


class _Line(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader()
        self.waiting: collections.deque[asyncio.Future[Any]] = collections.deque()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError as exc:  # the stream cannot be trusted any more
                self._fail(RedisConnectionError(f"Redis protocol error: {exc}"))
                if self.transport is not None:
                    self.transport.close()
                return
            if reply is False:
                return
            if not self.waiting:  # a reply nobody sent a command for: never happens with Redis
                continue
            waiter = self.waiting.popleft()
            if waiter.done():  # its caller gave up; the reply is dropped, the order kept
                continue
            if isinstance(reply, hiredis.ReplyError):
                message = str(reply)
                error = NoScriptError if message.startswith("NOSCRIPT") else ResponseError
                waiter.set_exception(error(message))
            else:
                waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._fail(RedisConnectionError(f"Connection to Redis lost ({exc or 'closed'})."))

    def _fail(self, error: Exception) -> None:
        while self.waiting:
            waiter = self.waiting.popleft()
            if not waiter.done():
                waiter.set_exception(error)


def _expire(line: _Line, waiters: Sequence[asyncio.Future[Any]], limit: float) -> None:
    """Redis did not answer in time: the waiters fail with a timeout, and the connection is dropped
    (its late replies must not reach the commands sent after), which fails every other waiter on it;
    the next command reconnects."""
    late = [waiter for waiter in waiters if not waiter.done()]
    if not late:  # the replies came in the same turn of the loop as the timer: nothing timed out
        return
    error = RedisTimeoutError(f"Redis did not answer within {limit:g} s.")
    for waiter in late:
        waiter.set_exception(error)
    if line.transport is not None:
        line.transport.close()


class RedisChannel:
    """``EVALSHA`` over one pipelined connection (see the module docstring).

    Example::

        channel = RedisChannel("redis://127.0.0.1:6379/0")
        reply = await channel.evalsha(sha, ["key"], ["arg"])
        await channel.aclose()
    """

    def __init__(self, url: str, *, connect_timeout_s: float = 2.0, timeout_s: float = 5.0) -> None:
        self._params = parse_url(url)
        self.connect_timeout_s = connect_timeout_s
        self.timeout_s = timeout_s
        self._line: _Line | None = None
        self._connecting: asyncio.Lock | None = None

    async def evalsha(self, sha: str, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """Run a loaded script; raises NoScriptError if Redis does not have it (it restarted or flushed)."""
        line = self._line
        if line is None or line.transport is None:
            line = await self._connect()
        return await self._on(line, ("evalsha", sha, len(keys), *keys, *(_arg(a) for a in args)))

    async def _on(self, line: _Line, parts: tuple[Any, ...]) -> Any:
        """One command on ``line`` (the channel's, or one still being set up by :meth:`_connect`)."""
        if line.transport is None:
            raise RedisConnectionError("Connection to Redis lost.")
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Any] = loop.create_future()
        line.waiting.append(waiter)
        line.transport.write(hiredis.pack_command(parts))
        # a timer handle, not asyncio.timeout(): this runs twice on every tracked call's path
        timer = loop.call_later(self.timeout_s, _expire, line, (waiter,), self.timeout_s)
        try:
            return await waiter
        finally:
            timer.cancel()

    async def pipeline(self, commands: Sequence[Sequence[Any]], *, timeout_s: float | None = None) -> list[Any]:
        """Send ``commands`` in one write and wait for their replies (in order); the first error reply raises.

        ``timeout_s`` (default: the channel's) bounds the wait for the last reply; a blocking command
        (``XREADGROUP … BLOCK``) needs one longer than its block, and a connection of its own: Redis
        answers nothing else on a connection while a command there blocks.
        """
        line = self._line
        if line is None or line.transport is None:
            line = await self._connect()
        if line.transport is None:
            raise RedisConnectionError("Connection to Redis lost.")
        loop = asyncio.get_running_loop()
        waiters: list[asyncio.Future[Any]] = [loop.create_future() for _ in commands]
        line.waiting.extend(waiters)
        line.transport.write(b"".join([hiredis.pack_command(tuple(c)) for c in commands]))
        limit = self.timeout_s if timeout_s is None else timeout_s
        timer = loop.call_later(limit, _expire, line, waiters, limit)
        try:
            # Redis answers in order: once the last reply is in, every reply is
            await waiters[-1]
        except asyncio.CancelledError:
            for w in waiters:
                if w.done() and not w.cancelled():
                    w.exception()  # read: an error reply already in is not "never retrieved"
                w.cancel()  # their replies, if they come, are dropped; their places kept
            if line.transport is not None:
                # a blocking read given up (shutdown) would go on blocking, and take entries
                # another reader should get: the connection goes instead
                line.transport.close()
            raise
        except Exception:
            pass  # an error reply, a timeout, a lost connection: raised below, in the commands' order
        finally:
            timer.cancel()
        errors = [error for w in waiters if (error := w.exception()) is not None]
        if errors:
            raise errors[0]
        return [w.result() for w in waiters]

    async def _connect(self) -> _Line:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._line is not None and self._line.transport is not None:
                return self._line
            loop = asyncio.get_running_loop()
            p = self._params
            try:
                async with asyncio.timeout(self.connect_timeout_s):
                    if p.get("path"):
                        _, line = await loop.create_unix_connection(_Line, p["path"])
                    else:
                        _, line = await loop.create_connection(
                            _Line, p.get("host") or "localhost", int(p.get("port") or 6379)
                        )
            except (OSError, TimeoutError) as exc:
                raise RedisConnectionError(f"Cannot connect to Redis ({exc!r}).") from exc
            try:
                # on the new line itself: it is the channel's (other commands may use it) once set up
                if p.get("password"):
                    auth = (p["username"], p["password"]) if p.get("username") else (p["password"],)
                    await self._on(line, ("auth", *auth))
                if int(p.get("db") or 0):
                    await self._on(line, ("select", int(p["db"])))  # Redis commands are case-blind
            except BaseException:
                if line.transport is not None:
                    line.transport.close()
                raise
            self._line = line
            return line

    def _close(self) -> None:
        line, self._line = self._line, None
        if line is not None and line.transport is not None:
            line.transport.close()

    async def aclose(self) -> None:
        self._close()
        await asyncio.sleep(0)  # the transport's connection_lost runs
