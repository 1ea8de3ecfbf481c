"""The journal: a Redis stream holding the writer's items from the moment they are recorded until
PostgreSQL has committed them.

With Redis configured, a logging event is appended (``XADD``) before anything else happens to it, and
a job's hold is appended by the very Lua script that takes it (``open_job.lua``). Every replica's
writer reads the stream through one consumer group (``XREADGROUP``), writes a batch in one
PostgreSQL transaction, and only then acknowledges and deletes its entries (``XACK`` + ``XDEL``, sent
in the same round trip as its next ``XREADGROUP``). A call of an open job is appended by the script
that adds its cost to the job (``add_cost.lua``), so the record and the cost go together. A
replica that dies leaves its unacknowledged entries pending; any live replica claims them once they
have been idle for ``JOBS_JOURNAL_CLAIM_IDLE_S`` (``XAUTOCLAIM``) and writes them. The store is
idempotent (event ids, ledger idempotency keys), so an entry written twice counts once.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ClusterError, RedisClusterException

from .errors import StoreUnavailable
from .models import (
    CallContext,
    CallEvent,
    CallStatus,
    JobStatus,
    LedgerEntry,
    LedgerKind,
    closure_entries,
    from_micro,
    hold_entry,
)
from .redis_channel import RedisChannel

Item = CallEvent | LedgerEntry
#: A single Redis or a Redis Cluster: the plugin uses the commands both have, one hash slot per command.
Client = aioredis.Redis | RedisCluster
#: What a Redis (or a cluster) that does not answer raises: the caller turns it into StoreUnavailable (503).
UNAVAILABLE: tuple[type[BaseException], ...] = (
    aioredis.ConnectionError,
    aioredis.TimeoutError,
    ClusterError,
    RedisClusterException,
)
_UNAVAILABLE_OR_REFUSED: tuple[type[BaseException], ...] = (*UNAVAILABLE, aioredis.ResponseError)
#: (stream, encoded call record, team_id, job_id, cost): appends the record and adds the cost in one script.
AppendWithCost = Callable[[str, str, str, str, Decimal], Awaitable[object]]
#: Makes a reader's own pipelined connection (``redis_channel``; a single Redis only).
ReaderChannel = Callable[[], RedisChannel]

GROUP = "writers"

_EVENT_FIELDS = (
    "event_id",
    "call_id",
    "call_type",
    "model_group",
    "model",
    "model_id",
    "provider",
    "prompt_tokens",
    "completion_tokens",
    "cache_hit",
    "stream",
    "latency_ms",
    "error_type",
    "error_code",
)


# -- the codec: one JSON document per entry (field "v"), or the compact hold record of open_job.lua --


def encode(item: Item) -> str:
    if isinstance(item, CallEvent):
        doc: dict[str, Any] = {name: getattr(item, name) for name in _EVENT_FIELDS}
        doc.update(
            t="call",
            context=item.context.to_stash(),
            status=item.status.value,
            cost_usd=str(item.cost_usd),
            started_at=item.started_at,  # orjson writes it as isoformat() does, several times faster
            ended_at=item.ended_at,
        )
    else:
        doc = {
            "t": "ledger",
            "team_id": item.team_id,
            "kind": item.kind.value,
            "amount": str(item.amount),
            "idempotency_key": item.idempotency_key,
            "job_id": item.job_id,
            "job_type": item.job_type,
            "single_call": item.single_call,
            "note": item.note,
            "closes": None if item.closes is None else item.closes.value,
        }
    return orjson.dumps(doc).decode()


def decode_entry(fields: dict[str, str]) -> tuple[Item, ...]:
    """An entry's items: one, or a closure's ledger entries (the compact record of close_job.lua).

    Raises ValueError (or KeyError, TypeError) for an entry it cannot read.
    """
    if fields.get("k") != "close":
        return (decode(fields),)
    return tuple(
        closure_entries(
            fields["t"],
            fields["j"],
            fields["y"],
            from_micro(fields["m"]),
            fields["i"],
            JobStatus(fields["c"]),
            single_call=fields["s"] == "1",
            closes_row=True,
            charged=from_micro(fields["g"]) if fields.get("g") else None,
        )
    )


def decode(fields: dict[str, str]) -> Item:
    """An entry's item (not a closure's: :func:`decode_entry`); raises ValueError (or KeyError, TypeError)."""
    if fields.get("k") == "hold":  # written by open_job.lua, in the same script as the hold
        return hold_entry(
            fields["t"], fields["j"], fields["y"], from_micro(fields["m"]), fields["s"] == "1", fields["i"]
        )
    doc = orjson.loads(fields["v"])
    if doc.pop("t") == "ledger":
        return LedgerEntry(
            team_id=doc["team_id"],
            kind=LedgerKind(doc["kind"]),
            amount=Decimal(doc["amount"]),
            idempotency_key=doc["idempotency_key"],
            job_id=doc["job_id"],
            job_type=doc["job_type"],
            single_call=bool(doc["single_call"]),
            note=doc["note"],
            closes=None if doc.get("closes") is None else JobStatus(doc["closes"]),
        )
    return CallEvent(
        **{name: doc[name] for name in _EVENT_FIELDS},
        context=CallContext.from_stash(doc["context"]),
        status=CallStatus(doc["status"]),
        cost_usd=Decimal(doc["cost_usd"]),
        started_at=datetime.fromisoformat(doc["started_at"]),
        ended_at=datetime.fromisoformat(doc["ended_at"]),
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def consumer_name() -> str:
    """This process's name in the consumer group: unique per process, readable in XINFO."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _team_of(item: Item) -> str:
    return (item.context.team_id if isinstance(item, CallEvent) else item.team_id) or ""


class RedisJournal:
    """The writer's durable queue in Redis streams (its shards), shared by every replica.

    With several streams a record goes to the stream of its team's shard (``shard_of``), and the
    writer reads each stream on its own (:attr:`shards`: one single-stream journal per stream; what
    :meth:`read`, :meth:`claim` and :meth:`ack` of a journal act on is its first stream only).
    ``retiring``: streams only read until they are empty, never appended to (an older layout's).

    Example::

        journal = RedisJournal(client, "ljp:journal", consumer=consumer_name(), claim_idle_s=30)
        await journal.setup()
        await journal.append(event)                 # durable from here on
        for entry_id, item in await journal.read(500, block_ms=1000):
            ...                                     # write to PostgreSQL, commit
        await journal.ack([entry_id, ...])          # then forget (or: read(..., ack=[...]))
    """

    def __init__(
        self,
        client: Client,
        stream: str | Sequence[str],
        *,
        consumer: str,
        claim_idle_s: float = 30.0,
        append_with_cost: AppendWithCost | None = None,
        shard_of: Callable[[str], int] | None = None,
        retiring: Sequence[str] = (),
        reader_channel: ReaderChannel | None = None,
    ) -> None:
        self.client = client
        self.streams = [stream] if isinstance(stream, str) else list(stream)
        self.stream = self.streams[0]
        self.consumer = consumer
        self.claim_idle_ms = max(1, int(claim_idle_s * 1000))
        self._claim_cursor = "0-0"
        self._append_with_cost = append_with_cost
        self._shard_of = shard_of
        #: A single Redis: :meth:`read` goes over a pipelined connection of this stream's own, made on
        #: first use, instead of redis-py's pool (a read per batch, the reader's share of a call's cost).
        self._reader_channel = reader_channel
        self._channel: RedisChannel | None = None
        #: This journal only drains its stream (a retiring one): the writer stops reading it once empty.
        self.retiring = False
        self._shards = [self] if len(self.streams) == 1 and not retiring else []
        if not self._shards:
            for name in [*self.streams, *retiring]:
                shard = RedisJournal(
                    client, name, consumer=consumer, claim_idle_s=claim_idle_s, reader_channel=reader_channel
                )
                shard.retiring = name in retiring
                self._shards.append(shard)

    @property
    def shards(self) -> list[RedisJournal]:
        """One single-stream journal per stream, each read by its own task of the writer."""
        return list(self._shards)

    def stream_for(self, team_id: str) -> str:
        """The stream a team's records go to."""
        if self._shard_of is None or len(self.streams) == 1:
            return self.stream
        return self.streams[self._shard_of(team_id)]

    @property
    def claim_scan_done(self) -> bool:
        """The last :meth:`claim` reached the end of the pending list (the next one starts over)."""
        return self._claim_cursor == "0-0"

    async def setup(self) -> None:
        """Create the consumer groups (from the streams' start: holds appended before count too)."""
        if self._shards != [self]:
            for shard in self._shards:
                await shard.setup()
            return
        try:
            await self.client.xgroup_create(self.stream, GROUP, id="0", mkstream=not self.retiring)
        except aioredis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc) and not self.retiring:
                raise
        except UNAVAILABLE as exc:
            raise StoreUnavailable(f"Redis is unavailable ({type(exc).__name__}).") from exc

    async def append(self, item: Item) -> None:
        try:
            await self.client.xadd(self.stream_for(_team_of(item)), {"v": encode(item)})
        except UNAVAILABLE as exc:
            raise StoreUnavailable(f"Redis is unavailable ({type(exc).__name__}).") from exc

    @property
    def adds_costs(self) -> bool:
        """:meth:`append_call` adds a call's cost to its job in the same script (Redis credits)."""
        return self._append_with_cost is not None

    async def append_call(self, event: CallEvent, team_id: str, job_id: str) -> None:
        """Append a call of an open job and add its cost to the job, atomically (one round trip)."""
        assert self._append_with_cost is not None, "append_call needs Redis credits (adds_costs)"
        try:
            await self._append_with_cost(self.stream_for(team_id), encode(event), team_id, job_id, event.cost_usd)
        except UNAVAILABLE as exc:
            raise StoreUnavailable(f"Redis is unavailable ({type(exc).__name__}).") from exc

    async def append_many(self, items: Sequence[Item]) -> None:
        """Append several records in one round trip (a pipeline, in order; not atomic)."""
        if len(items) == 1:
            await self.append(items[0])
            return
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for item in items:
                    pipe.xadd(self.stream_for(_team_of(item)), {"v": encode(item)})
                await pipe.execute()
        except UNAVAILABLE as exc:
            raise StoreUnavailable(f"Redis is unavailable ({type(exc).__name__}).") from exc

    async def read(
        self, count: int, *, block_ms: int | None, ack: Sequence[str] = ()
    ) -> list[tuple[str, dict[str, str]]]:
        """Entries never delivered to any replica, up to ``count``, waiting up to ``block_ms`` (None: not at all).

        ``ack``: entries to :meth:`ack` first, in the same round trip (Redis runs them before the
        read blocks). If this raises, they may or may not be acknowledged: ack them again.
        """
        if self._reader_channel is not None:
            answer = await self._read_side(self._read_lean(count, block_ms, ack))
            return [(_text(i), _flat_fields(f)) for _, entries in answer or () for i, f in entries]
        answer = await self._read_side(self._read_pooled(count, block_ms, ack))
        return [(_text(i), _fields(f)) for _, entries in answer or () for i, f in entries]

    async def _read_side(self, command: Awaitable[Any]) -> Any:
        """``command``'s answer; Redis away is StoreUnavailable; a missing group (a Redis that lost its
        data) is created again and the answer is None."""
        try:
            return await command
        except UNAVAILABLE as exc:
            raise StoreUnavailable(f"Redis is unavailable ({type(exc).__name__}).") from exc
        except aioredis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self.setup()
            return None

    async def _read_pooled(self, count: int, block_ms: int | None, ack: Sequence[str]) -> Any:
        if not ack:
            return await self.client.xreadgroup(GROUP, self.consumer, {self.stream: ">"}, count=count, block=block_ms)
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.xack(self.stream, GROUP, *ack)
            pipe.xdel(self.stream, *ack)
            pipe.xreadgroup(GROUP, self.consumer, {self.stream: ">"}, count=count, block=block_ms)
            return (await pipe.execute())[-1]

    async def _read_lean(self, count: int, block_ms: int | None, ack: Sequence[str]) -> Any:
        """The read over this stream's own connection (hiredis answers: flat field lists, bytes)."""
        if self._channel is None:
            assert self._reader_channel is not None
            self._channel = self._reader_channel()
        commands: list[tuple[Any, ...]] = []
        if ack:
            commands += [("xack", self.stream, GROUP, *ack), ("xdel", self.stream, *ack)]
        block = () if block_ms is None else ("block", block_ms)
        commands.append(
            ("xreadgroup", "group", GROUP, self.consumer, "count", count, *block, "streams", self.stream, ">")
        )
        # a blocking read is answered after its block at the latest: the channel's timeout counts from there
        timeout_s = None if block_ms is None else block_ms / 1000 + self._channel.timeout_s
        return (await self._channel.pipeline(commands, timeout_s=timeout_s))[-1]

    async def claim(self, count: int) -> list[tuple[str, dict[str, str]]]:
        """Entries another consumer (a dead replica) has held unacknowledged for too long."""
        answer = await self._read_side(
            self.client.xautoclaim(
                self.stream, GROUP, self.consumer, self.claim_idle_ms, start_id=self._claim_cursor, count=count
            )
        )
        if answer is None:
            return []
        cursor, entries = _text(answer[0]), answer[1]
        self._claim_cursor = cursor  # "0-0" once the whole pending list has been scanned
        return [(_text(i), _fields(f)) for i, f in entries if f]

    async def ack(self, entry_ids: Sequence[str]) -> None:
        """Forget entries whose items PostgreSQL has committed."""
        if not entry_ids:
            return
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.xack(self.stream, GROUP, *entry_ids)
                pipe.xdel(self.stream, *entry_ids)
                await pipe.execute()
        except UNAVAILABLE as exc:
            raise StoreUnavailable(f"Redis is unavailable ({type(exc).__name__}).") from exc

    async def backlog(self) -> tuple[int, float]:
        """(entries not yet written, age in seconds of the oldest), for the health route: over every stream."""
        streams = [shard.stream for shard in self._shards]
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for stream in streams:
                    pipe.xlen(stream)
                    pipe.xrange(stream, count=1)
                answers = await pipe.execute()
        except UNAVAILABLE as exc:
            raise StoreUnavailable(f"Redis is unavailable ({type(exc).__name__}).") from exc
        length, age = 0, 0.0
        for n, first in zip(answers[::2], answers[1::2], strict=True):
            length += int(n)
            if first:
                millis = int(_text(first[0][0]).split("-", 1)[0])
                age = max(age, time.time() - millis / 1000)
        return length, age

    async def forget_idle_consumers(self, idle_s: float = 3600.0) -> int:
        """Remove consumers of dead processes that hold nothing (their names only clutter XINFO)."""
        if self._shards != [self]:
            return sum([await shard.forget_idle_consumers(idle_s) for shard in self._shards])
        removed = 0
        try:
            for info in await self.client.xinfo_consumers(self.stream, GROUP):
                name, pending, idle_ms = _text(info["name"]), int(info["pending"]), int(info["idle"])
                if name != self.consumer and pending == 0 and idle_ms > idle_s * 1000:
                    await self.client.xgroup_delconsumer(self.stream, GROUP, name)
                    removed += 1
        except _UNAVAILABLE_OR_REFUSED:
            return removed
        return removed


def _fields(raw: Any) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in (raw or {}).items()}


def _flat_fields(raw: Any) -> dict[str, str]:
    """An entry's fields as Redis sends them: ``[field, value, field, value, …]``."""
    items = [_text(x) for x in raw or ()]
    return dict(zip(items[::2], items[1::2], strict=True))
