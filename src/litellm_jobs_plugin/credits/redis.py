"""Credits in Redis: holds taken atomically by Lua scripts, shared by every replica.

Balances live in Redis as integer micro-credits; PostgreSQL keeps the ledger. The scripts return
what changed and the caller makes it durable (hold entries through the writer's buffer, closures
synchronously). Grants go to PostgreSQL first, then to Redis, at most once per ledger entry id.

A Redis that loses its data (a restart without persistence, a FLUSHDB) loses the sentinel key
:meth:`RedisCredits.rebuild` writes once the state is loaded. Every script that decides checks it
first and answers ``rebuild`` without it; the caller then waits (bounded) while one replica, under a
Redis lock, loads every account and every open job from PostgreSQL again (:meth:`RedisCredits.ensure_loaded`).
No admission is ever decided on a state that is not loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from decimal import Decimal
from importlib import resources
from typing import Any

from redis.exceptions import NoScriptError

from .. import redis_channel
from ..errors import StoreUnavailable
from ..journal import UNAVAILABLE, Client, RedisJournal, consumer_name
from ..models import Balance, JobStatus, from_micro, to_micro
from ..store.postgres import PostgresStore
from . import rules
from .base import Admission, Closure, OpenJob
from .redis_layout import DEFAULT_SHARDS, RedisKeys, connect, is_cluster_url

_log = logging.getLogger(__name__)


def _script(name: str) -> str:
    return resources.files(__package__).joinpath("lua", f"{name}.lua").read_text("utf-8")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


SINGLE_CALL_CLOSED_TTL_S = 3600
#: How long a call waits for another replica's rebuild of a Redis that lost its data before a 503.
REBUILD_WAIT_S = 15.0
#: The rebuild lock's lifetime, renewed while the rebuild runs (a replica dying mid-rebuild frees it).
REBUILD_LOCK_MS = 10_000
#: How long the rebuild waits for the writers' batches in flight to reach PostgreSQL first.
REBUILD_SETTLE_S = 5.0
#: ... and, for other replicas' writers (which it cannot observe), a grace period.
REBUILD_GRACE_S = 0.5
#: How long a rebuild waits for the previous layout's journal to be written (after an upgrade).
LEGACY_DRAIN_S = 120.0
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


class RedisCredits:
    emits_ledger = True
    journals_holds = True
    journals_closures = True

    def __init__(
        self,
        url: str,
        store: PostgresStore,
        *,
        prefix: str = "ljp",
        closed_ttl_s: int = 7 * 24 * 3600,
        max_connections: int = 50,
        shards: int | None = None,
    ) -> None:
        self.cluster = is_cluster_url(url)
        self.client: Client = connect(url, max_connections=max_connections)
        #: The scripts on a call's path go over a pipelined connection of their own (a single Redis).
        self._channel = redis_channel.RedisChannel(url) if not self.cluster and redis_channel.supports(url) else None
        self._url = url
        #: The journal readers' connections (one per stream: a blocking read holds its connection).
        self._reader_channels: list[redis_channel.RedisChannel] = []
        self.store = store
        self.keys = RedisKeys(prefix, DEFAULT_SHARDS[self.cluster] if shards is None else shards)
        self.closed_ttl_s = closed_ttl_s
        self._open = self.client.register_script(_script("open_job"))
        self._close = self.client.register_script(_script("close_job"))
        self._load = self.client.register_script(_script("load_account"))
        self._apply_grant = self.client.register_script(_script("apply_grant"))
        self._add_cost = self.client.register_script(_script("add_cost"))
        self._load_job = self.client.register_script(_script("load_job"))
        self._release = self.client.register_script(_RELEASE)
        #: Awaited before a rebuild reads PostgreSQL: this process's writer writes what it holds.
        self.settle: Callable[[float], Awaitable[object]] | None = None
        self.rebuild_wait_s = REBUILD_WAIT_S
        self.rebuilds = 0  # rebuilds this process ran (tests, logs)
        self._rebuilding = asyncio.Lock()

    def journal(self, *, claim_idle_s: float = 30.0) -> RedisJournal:
        """The writer's journal on this Redis (the stream open_job.lua appends holds to)."""
        return RedisJournal(
            self.client,
            self.keys.journals,
            consumer=consumer_name(),
            claim_idle_s=claim_idle_s,
            append_with_cost=self._append_with_cost,
            shard_of=self.keys.shard,
            retiring=[self.keys.legacy_journal],
            reader_channel=self._reader_channel if self._channel is not None else None,
        )

    def _reader_channel(self) -> redis_channel.RedisChannel:
        channel = redis_channel.RedisChannel(self._url)
        self._reader_channels.append(channel)
        return channel

    async def _append_with_cost(self, stream: str, record: str, team_id: str, job_id: str, cost_usd: Decimal) -> None:
        """add_cost.lua with the journal: append a call's record and add its cost in one script."""
        keys, args = self._cost_update(team_id, job_id, cost_usd)
        await self._decide(team_id, self._add_cost, [*keys, stream], [*args, record])

    def _cost_update(self, team_id: str, job_id: str, cost_usd: Decimal) -> tuple[list[str], list[Any]]:
        """add_cost.lua's keys and arguments for one call's cost."""
        keys = [self.keys.job(team_id, job_id), self.keys.open_jobs_for(team_id), self.keys.loaded(team_id)]
        return keys, [str(cost_usd), int(time.time() * 1000), self.keys.member(team_id, job_id)]

    async def _decide(self, team_id: str, script: Any, keys: list[str], args: list[Any]) -> list[str]:
        """Run a script that decides; if Redis lost the team's state, rebuild it (bounded wait) and run it again."""
        result = await self._call(script, keys, args)
        if result and result[0] == "rebuild":
            await self.ensure_loaded([self.keys.covered_by(team_id)])
            result = await self._call(script, keys, args)
            if result and result[0] == "rebuild":  # lost again meanwhile: never decide without the state
                raise StoreUnavailable("Redis lost its data; the credit state is being rebuilt: retry shortly.")
        return result

    async def _call(self, script: Any, keys: list[str], args: list[Any]) -> list[str]:
        try:
            try:
                # EVALSHA straight away (redis-py's Script object re-checks its SHA on every call)
                if self._channel is not None:
                    result = await self._channel.evalsha(script.sha, keys, args)
                else:
                    result = await self.client.evalsha(script.sha, len(keys), *keys, *args)
            except NoScriptError:  # a Redis that restarted or flushed its scripts: load it, run it
                result = await script(keys=keys, args=args)
        except UNAVAILABLE as exc:
            raise StoreUnavailable(f"Redis is unavailable ({type(exc).__name__}); retry shortly.") from exc
        if not isinstance(result, list):
            return [] if result is None else [_text(result)]
        return [_text(v) for v in result]

    async def load_accounts(self, team_id: str | None = None) -> int:
        """Load accounts Redis does not have yet from PostgreSQL (one team's; without a team: make sure
        the whole state is loaded, rebuilding it if Redis lost it — see :meth:`ensure_loaded`)."""
        if team_id is None:
            await self.ensure_loaded()
            return 0
        rows = await self.store.fetch_all("account_snapshot", {"team_id": team_id})
        if team_id is not None and not rows:
            rows = [{"team_id": team_id, "credits_remaining": Decimal(0), "credits_held": Decimal(0), "grant_ids": []}]
        for row in rows:
            await self._call(
                self._load,
                [self.keys.account(row["team_id"]), self.keys.grants(row["team_id"])],
                [to_micro(row["credits_remaining"]), to_micro(row["credits_held"]), *row["grant_ids"]],
            )
        return len(rows)

    # -- a Redis that lost its data -----------------------------------------------------------

    async def _missing(self, sentinels: Iterable[str]) -> list[str]:
        wanted = list(sentinels)
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for key in wanted:
                    pipe.exists(key)
                found = await pipe.execute()
        except UNAVAILABLE as exc:
            raise StoreUnavailable(f"Redis is unavailable ({type(exc).__name__}); retry shortly.") from exc
        return [key for key, n in zip(wanted, found, strict=True) if not n]

    async def ensure_loaded(self, sentinels: Iterable[str] | None = None) -> None:
        """Return once the state behind ``sentinels`` (default: all of it) is loaded in Redis.

        What is missing is rebuilt from PostgreSQL by one replica at a time (a Redis ``SET NX`` lock);
        the others wait for it, at most :attr:`rebuild_wait_s`, then raise StoreUnavailable (a 503).
        """
        wanted = list(self.keys.sentinels if sentinels is None else sentinels)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.rebuild_wait_s
        while True:
            if not await self._missing(wanted):
                return
            async with self._rebuilding:  # one coroutine per process tries; the others wait for it
                missing = await self._missing(self.keys.sentinels)
                if not missing:
                    continue
                token = uuid.uuid4().hex
                try:
                    locked = await self.client.set(self.keys.rebuild_lock, token, nx=True, px=REBUILD_LOCK_MS)
                except UNAVAILABLE as exc:
                    raise StoreUnavailable(f"Redis is unavailable ({type(exc).__name__}); retry shortly.") from exc
                if locked:
                    try:
                        await self._rebuild(missing, token)
                    finally:
                        with contextlib.suppress(Exception):
                            await self._release(keys=[self.keys.rebuild_lock], args=[token])
                    continue
            if loop.time() >= deadline:
                raise StoreUnavailable("Redis lost its data; the credit state is being rebuilt: retry shortly.")
            await asyncio.sleep(0.05)

    async def _renew(self, token: str) -> None:
        """Keep the rebuild lock while the rebuild runs."""
        while True:
            await asyncio.sleep(REBUILD_LOCK_MS / 3000)
            with contextlib.suppress(Exception):
                if _text(await self.client.get(self.keys.rebuild_lock) or b"") == token:
                    await self.client.pexpire(self.keys.rebuild_lock, REBUILD_LOCK_MS)

    async def _rebuild(self, sentinels: list[str], token: str) -> None:
        """Load every account and open job PostgreSQL knows into Redis (those under ``sentinels``).

        The writers first write what they can (this process's writer: what it holds, bounded; other
        replicas': a grace period). Records that were only in the journal Redis lost are lost: a hold
        PostgreSQL never saw is not held, a closure it never saw leaves the job open (under-charging,
        never over-charging).
        """
        renew = asyncio.get_running_loop().create_task(self._renew(token))
        started = time.monotonic()
        try:
            _log.warning(
                "litellm-jobs: the credit state is not in Redis (%d of %d shards: a first start, or Redis lost"
                " its data); loading it from PostgreSQL",
                len(sentinels),
                self.keys.shards,
            )
            await self._legacy_drained()
            if self.settle is not None:
                await self.settle(REBUILD_SETTLE_S)
            await asyncio.sleep(REBUILD_GRACE_S)
            accounts, jobs = await self._snapshot()
            wanted = set(sentinels)
            held: dict[str, int] = {}
            for job in jobs:
                if self.keys.covered_by(job["team_id"]) in wanted:
                    held[job["team_id"]] = held.get(job["team_id"], 0) + to_micro(job["credits_held"])
            loads: list[Awaitable[Any]] = []
            for row in accounts:
                team = row["team_id"]
                if self.keys.covered_by(team) in wanted:
                    keys = [self.keys.account(team), self.keys.grants(team)]
                    args = [to_micro(row["credits_remaining"]), held.get(team, 0), *row["grant_ids"]]
                    loads.append(self._call(self._load, keys, args))
            for job in jobs:
                team, job_id = job["team_id"], job["job_id"]
                if self.keys.covered_by(team) not in wanted:
                    continue
                member = self.keys.member(team, job_id)
                keys = [self.keys.job(team, job_id), self.keys.open_jobs_for(team)]
                args = [
                    job["status"],
                    job["job_type"],
                    to_micro(job["credits_held"]),
                    job["admitted_calls"],
                    job["max_calls"] or 0,
                    str(job["max_cost_usd"] or 0),
                    str(job["total_cost_usd"] or 0),
                    int(job["last_activity_at"].timestamp() * 1000),
                    (job["hold_key"] or "").partition("@")[2],
                    member,
                ]
                loads.append(self._call(self._load_job, keys, args))
            for i in range(0, len(loads), 64):
                await asyncio.gather(*loads[i : i + 64])
            try:
                async with self.client.pipeline(transaction=False) as pipe:
                    for key in sentinels:
                        pipe.set(key, str(int(time.time() * 1000)))
                    await pipe.execute()
            except UNAVAILABLE as exc:
                raise StoreUnavailable(f"Redis is unavailable ({type(exc).__name__}); retry shortly.") from exc
            self.rebuilds += 1
            _log.warning(
                "litellm-jobs: loaded the credit state from PostgreSQL: %d accounts, %d open jobs in %.2fs",
                len(accounts),
                len(jobs),
                time.monotonic() - started,
            )
        finally:
            renew.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renew

    async def _legacy_drained(self) -> None:
        """After an upgrade from the unsharded layout: the old journal stream (holds and closures
        PostgreSQL may not have yet) must be written first; the writers read it until it is empty."""
        deadline = time.monotonic() + LEGACY_DRAIN_S
        while await self.client.xlen(self.keys.legacy_journal):
            if time.monotonic() >= deadline:
                raise StoreUnavailable("The previous version's journal is not written yet; retry shortly.")
            await asyncio.sleep(0.1)

    async def _snapshot(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Every account and open job, as one consistent view of PostgreSQL."""
        async with self.store.transaction() as conn:
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            accounts = await self.store.fetch_all("account_snapshot", {"team_id": None}, conn)
            jobs = await self.store.fetch_all("open_jobs", {}, conn)
        return accounts, jobs

    def join_open(self, team_id: str, job_id: str, requested_type: str | None) -> Admission | None:
        return None  # every admission is decided where the job's state lives, in one round trip

    async def open_job(self, request: OpenJob) -> Admission:
        keys = [
            self.keys.account(request.team_id),
            self.keys.job(request.team_id, request.job_id),
            self.keys.open_jobs_for(request.team_id),
            self.keys.journal_for(request.team_id),
            self.keys.loaded(request.team_id),
        ]
        caps = request.caps
        args = [
            int(time.time() * 1000),
            request.requested_type or "",
            request.new_type,
            to_micro(request.price),
            caps.max_calls or 0,
            str(caps.max_cost_usd or 0),
            "1" if request.create_only else "0",
            "1" if request.count_call else "0",
            self.keys.member(request.team_id, request.job_id),
            (JobStatus.IN_PROGRESS if request.count_call else JobStatus.PENDING).value,
            request.team_id,
            request.job_id,
            "1" if request.single_call else "0",
            "1" if request.refusal is None else "0",
        ]
        result = await self._decide(request.team_id, self._open, keys, args)
        if result[0] == "not_loaded":
            # A team Redis has not seen since it started: one PostgreSQL read, then never again.
            await self.load_accounts(request.team_id)
            result = await self._call(self._open, keys, args)
        outcome = result[0]
        if outcome == "refused" and request.refusal is not None:
            raise request.refusal
        if outcome == "closed":
            raise rules.closed(request.job_id, result[1])
        if outcome == "type_mismatch":
            raise rules.type_mismatch(request.job_id, result[2], request.requested_type)
        if outcome == "over_calls":
            raise rules.over_calls(request.job_id, int(result[3]))
        if outcome == "over_cost":
            raise rules.over_cost(request.job_id, result[3])
        if outcome == "insufficient":
            raise rules.insufficient(request.team_id, request.price, from_micro(result[3]))
        if outcome not in ("ok", "exists"):
            raise StoreUnavailable(f"unexpected answer from Redis: {result!r}")
        return Admission(
            created=outcome == "ok" and result[5] == "1",
            status=JobStatus(result[1]),
            job_type=result[2],
            hold=from_micro(result[4]),
            credits_remaining=from_micro(result[3]),
            incarnation=result[6] if len(result) > 6 else "",
        )

    async def close_job(
        self,
        team_id: str,
        job_id: str,
        status: JobStatus,
        *,
        idle_cutoff_s: float | None = None,
        single_call: bool = False,
        journal_records: Sequence[str] | None = None,
        charge: Decimal | None = None,
    ) -> Closure | None:
        now_ms = int(time.time() * 1000)
        cutoff = "" if idle_cutoff_s is None else str(now_ms - int(idle_cutoff_s * 1000))
        keys = [
            self.keys.account(team_id),
            self.keys.job(team_id, job_id),
            self.keys.open_jobs_for(team_id),
            self.keys.loaded(team_id),
        ]
        member, ttl = self.keys.member(team_id, job_id), self._closed_ttl(single_call)
        charged = "" if charge is None or status is not JobStatus.COMPLETED else str(to_micro(charge))
        args: list[Any] = [status.value, now_ms, cutoff, member, ttl, charged]
        if journal_records is not None:  # the closure's entries (and these records) go to the journal here
            keys.append(self.keys.journal_for(team_id))
            args += [team_id, job_id, "1" if single_call else "0", *journal_records]
        result = await self._decide(team_id, self._close, keys, args)
        outcome = result[0]
        if outcome in ("unknown", "active"):
            return None
        if outcome == "conflict":
            raise rules.conflict(job_id, result[1])
        return Closure(
            status=status,
            repeated=outcome == "same",
            job_type=result[4],
            hold=from_micro(result[2]),
            admitted_calls=int(result[3]),
            credits_remaining=from_micro(result[5]),
            incarnation=result[6] if len(result) > 6 else "",
            charge=from_micro(result[7]) if len(result) > 7 and result[7] else None,
        )

    def _closed_ttl(self, single_call: bool) -> int:
        """How long Redis remembers a closed job: a single-call job's id (its call id) is never
        opened again, so it is kept an hour, not JOBS_CLOSED_JOB_TTL_S (Redis would grow by a key per call)."""
        return min(self.closed_ttl_s, SINGLE_CALL_CLOSED_TTL_S) if single_call else self.closed_ttl_s

    async def grant(
        self, team_id: str, amount: Decimal, *, kind: str, idempotency_key: str, note: str | None
    ) -> Balance:
        entry_id = await self.store.grant(team_id, amount, kind=kind, idempotency_key=idempotency_key, note=note)
        keys = [self.keys.account(team_id), self.keys.grants(team_id), self.keys.loaded(team_id)]
        result = await self._decide(team_id, self._apply_grant, keys, [entry_id, to_micro(amount)])
        if result[0] == "not_loaded":
            await self.load_accounts(team_id)  # the snapshot includes this grant if it committed first
            await self._call(self._apply_grant, keys, [entry_id, to_micro(amount)])
        return await self.balance(team_id)

    async def balance(self, team_id: str) -> Balance:
        try:
            avail, held = await self.client.hmget(self.keys.account(team_id), ["avail", "held"])
        except UNAVAILABLE as exc:
            raise StoreUnavailable("Redis is unavailable; retry shortly.") from exc
        durable = await self.store.balance(team_id)
        if avail is None:
            return durable
        remaining, on_hold = from_micro(avail), from_micro(held or 0)
        return Balance(
            team_id=team_id,
            credits_allocated=durable.credits_allocated,
            credits_remaining=remaining,
            credits_held=on_hold,
            credits_charged=durable.credits_allocated - remaining - on_hold,
        )

    async def idle_jobs(self, idle_s: float, limit: int) -> list[tuple[str, str]]:
        # The reaper runs on every replica: it also notices a Redis that lost its data when no call does.
        await self.ensure_loaded()
        cutoff = int((time.time() - idle_s) * 1000)
        try:  # every shard's index, in one round trip
            async with self.client.pipeline(transaction=False) as pipe:
                for key in self.keys.open_sets:
                    pipe.zrangebyscore(key, "-inf", cutoff, start=0, num=limit)
                found = await pipe.execute()
        except UNAVAILABLE as exc:
            raise StoreUnavailable(f"Redis is unavailable ({type(exc).__name__}); retry shortly.") from exc
        members = [m for shard in found for m in shard]
        return [RedisKeys.parse_member(_text(m)) for m in members[:limit]]

    async def add_cost(self, team_id: str, job_id: str, cost_usd: Decimal) -> None:
        await self._decide(team_id, self._add_cost, *self._cost_update(team_id, job_id, cost_usd))

    async def admitted_calls(self, team_id: str, job_id: str) -> int | None:
        try:
            calls = await self.client.hget(self.keys.job(team_id, job_id), "calls")
        except UNAVAILABLE as exc:
            raise StoreUnavailable("Redis is unavailable; retry shortly.") from exc
        return None if calls is None else int(calls)

    async def knows(self, team_id: str, job_id: str) -> bool:
        try:
            return bool(await self.client.exists(self.keys.job(team_id, job_id)))
        except UNAVAILABLE:
            return False

    def closing(self) -> contextlib.AbstractAsyncContextManager[None]:
        return contextlib.nullcontext()

    async def aclose(self) -> None:
        for channel in [self._channel, *self._reader_channels]:
            if channel is not None:
                await channel.aclose()
        await self.client.aclose()
