"""Credits in Redis: holds taken atomically by Lua scripts, shared by every replica.

Balances live in Redis as integer micro-credits; PostgreSQL keeps the ledger. The scripts return
what changed and the caller makes it durable (hold entries through the writer's buffer, closures
synchronously). Grants go to PostgreSQL first, then to Redis, at most once per ledger entry id.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from decimal import Decimal
from importlib import resources
from typing import Any

import redis.asyncio as aioredis

from ..errors import StoreUnavailable
from ..journal import RedisJournal, consumer_name
from ..models import Balance, JobStatus, from_micro, to_micro
from ..store.postgres import PostgresStore
from . import rules
from .base import Admission, Closure, OpenJob


def _script(name: str) -> str:
    return resources.files(__package__).joinpath("lua", f"{name}.lua").read_text("utf-8")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


SINGLE_CALL_CLOSED_TTL_S = 3600


class RedisKeys:
    """Every Redis key the plugin uses, in one place. Ids are length-prefixed: they may hold ':'."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def account(self, team_id: str) -> str:
        return f"{self.prefix}:acct:{team_id}"

    def grants(self, team_id: str) -> str:
        return f"{self.prefix}:grants:{team_id}"

    def job(self, team_id: str, job_id: str) -> str:
        return f"{self.prefix}:job:{self.member(team_id, job_id)}"

    @property
    def open_jobs(self) -> str:
        return f"{self.prefix}:open"

    @property
    def journal(self) -> str:
        return f"{self.prefix}:journal"

    @staticmethod
    def member(team_id: str, job_id: str) -> str:
        return f"{len(team_id)}:{team_id}:{job_id}"

    @staticmethod
    def parse_member(member: str) -> tuple[str, str]:
        length, rest = member.split(":", 1)
        n = int(length)
        return rest[:n], rest[n + 1 :]


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
    ) -> None:
        # A blocking pool: under a burst, calls wait for a connection instead of failing. Short socket
        # timeouts: an unreachable Redis fails a call in seconds (503), never hangs it.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=10,
            socket_connect_timeout=2,
            socket_timeout=5,
            retry_on_timeout=False,
        )
        self.client: aioredis.Redis = aioredis.Redis(connection_pool=pool)
        self.store = store
        self.keys = RedisKeys(prefix)
        self.closed_ttl_s = closed_ttl_s
        self._open = self.client.register_script(_script("open_job"))
        self._close = self.client.register_script(_script("close_job"))
        self._load = self.client.register_script(_script("load_account"))
        self._apply_grant = self.client.register_script(_script("apply_grant"))
        self._add_cost = self.client.register_script(_script("add_cost"))

    def journal(self, *, claim_idle_s: float = 30.0) -> RedisJournal:
        """The writer's journal on this Redis (the stream open_job.lua appends holds to)."""
        return RedisJournal(
            self.client,
            self.keys.journal,
            consumer=consumer_name(),
            claim_idle_s=claim_idle_s,
            append_with_cost=self._append_with_cost,
        )

    async def _append_with_cost(self, stream: str, record: str, team_id: str, job_id: str, cost_usd: Decimal) -> None:
        """add_cost.lua with the journal: append a call's record and add its cost in one script."""
        keys, args = self._cost_update(team_id, job_id, cost_usd)
        await self._add_cost(keys=[*keys, stream], args=[*args, record])

    def _cost_update(self, team_id: str, job_id: str, cost_usd: Decimal) -> tuple[list[str], list[Any]]:
        """add_cost.lua's keys and arguments for one call's cost."""
        keys = [self.keys.job(team_id, job_id), self.keys.open_jobs]
        return keys, [str(cost_usd), int(time.time() * 1000), self.keys.member(team_id, job_id)]

    async def _call(self, script: Any, keys: list[str], args: list[Any]) -> list[str]:
        try:
            result = await script(keys=keys, args=args)
        except (aioredis.ConnectionError, aioredis.TimeoutError) as exc:
            raise StoreUnavailable(f"Redis is unavailable ({type(exc).__name__}); retry shortly.") from exc
        if not isinstance(result, list):
            return [] if result is None else [_text(result)]
        return [_text(v) for v in result]

    async def load_accounts(self, team_id: str | None = None) -> int:
        """Load accounts Redis does not have yet from PostgreSQL (all of them, or one team's)."""
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

    async def open_job(self, request: OpenJob) -> Admission:
        keys = [
            self.keys.account(request.team_id),
            self.keys.job(request.team_id, request.job_id),
            self.keys.open_jobs,
            self.keys.journal,
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
        result = await self._call(self._open, keys, args)
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
        keys = [self.keys.account(team_id), self.keys.job(team_id, job_id), self.keys.open_jobs]
        member, ttl = self.keys.member(team_id, job_id), self._closed_ttl(single_call)
        charged = "" if charge is None or status is not JobStatus.COMPLETED else str(to_micro(charge))
        args: list[Any] = [status.value, now_ms, cutoff, member, ttl, charged]
        if journal_records is not None:  # the closure's entries (and these records) go to the journal here
            keys.append(self.keys.journal)
            args += [team_id, job_id, "1" if single_call else "0", *journal_records]
        result = await self._call(self._close, keys, args)
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
        keys = [self.keys.account(team_id), self.keys.grants(team_id)]
        result = await self._call(self._apply_grant, keys, [entry_id, to_micro(amount)])
        if result[0] == "not_loaded":
            await self.load_accounts(team_id)  # the snapshot includes this grant if it committed first
            await self._call(self._apply_grant, keys, [entry_id, to_micro(amount)])
        return await self.balance(team_id)

    async def balance(self, team_id: str) -> Balance:
        try:
            avail, held = await self.client.hmget(self.keys.account(team_id), ["avail", "held"])
        except (aioredis.ConnectionError, aioredis.TimeoutError) as exc:
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
        cutoff = int((time.time() - idle_s) * 1000)
        members = await self.client.zrangebyscore(self.keys.open_jobs, "-inf", cutoff, start=0, num=limit)
        return [RedisKeys.parse_member(_text(m)) for m in members]

    async def add_cost(self, team_id: str, job_id: str, cost_usd: Decimal) -> None:
        await self._call(self._add_cost, *self._cost_update(team_id, job_id, cost_usd))

    async def admitted_calls(self, team_id: str, job_id: str) -> int | None:
        try:
            calls = await self.client.hget(self.keys.job(team_id, job_id), "calls")
        except (aioredis.ConnectionError, aioredis.TimeoutError) as exc:
            raise StoreUnavailable("Redis is unavailable; retry shortly.") from exc
        return None if calls is None else int(calls)

    async def knows(self, team_id: str, job_id: str) -> bool:
        try:
            return bool(await self.client.exists(self.keys.job(team_id, job_id)))
        except (aioredis.ConnectionError, aioredis.TimeoutError):
            return False

    def closing(self) -> contextlib.AbstractAsyncContextManager[None]:
        return contextlib.nullcontext()

    async def aclose(self) -> None:
        await self.client.aclose()
