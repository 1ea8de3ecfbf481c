"""The PostgreSQL store: a psycopg 3 async pool, the named queries, one transaction per batch."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Sequence
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from ..errors import StoreUnavailable
from ..models import Balance, Call, CallEvent, Job, LedgerEntry
from .migrations import apply_migrations
from .sql import query

_log = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def wrap_errors() -> AsyncIterator[None]:
    """The one seam where driver errors become :class:`StoreUnavailable` (cause chained)."""
    try:
        yield
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        raise StoreUnavailable(f"The jobs store is unavailable ({type(exc).__name__}); retry shortly.") from exc
    except TimeoutError as exc:
        raise StoreUnavailable("The jobs store did not answer in time; retry shortly.") from exc


def _batch_params(events: Sequence[CallEvent]) -> dict[str, list[Any]]:
    return {
        "event_ids": [e.event_id for e in events],
        "call_ids": [e.call_id for e in events],
        "team_ids": [e.context.team_id for e in events],
        "job_ids": [e.context.job_id for e in events],
        "job_types": [e.context.job_type for e in events],
        "single_calls": [e.context.single_call for e in events],
        "key_hashes": [e.context.key_hash for e in events],
        "user_ids": [e.context.user_id for e in events],
        "call_types": [e.call_type for e in events],
        "requested_models": [e.context.requested_model for e in events],
        "statuses": [e.status.value for e in events],
        "model_groups": [e.model_group for e in events],
        "models": [e.model for e in events],
        "model_ids": [e.model_id for e in events],
        "providers": [e.provider for e in events],
        "prompt_tokens": [e.prompt_tokens for e in events],
        "completion_tokens": [e.completion_tokens for e in events],
        "costs": [e.cost_usd for e in events],
        "cache_hits": [e.cache_hit for e in events],
        "streams": [e.stream for e in events],
        "latencies": [e.latency_ms for e in events],
        "error_types": [e.error_type for e in events],
        "error_codes": [e.error_code for e in events],
        "started_ats": [e.started_at for e in events],
        "ended_ats": [e.ended_at for e in events],
        "purposes": [e.context.purpose for e in events],
    }


class PostgresStore:
    """Job and call storage in one PostgreSQL schema.

    Example::

        store = PostgresStore("postgresql://postgres@127.0.0.1/litellm", schema="litellm_jobs")
        await store.open()          # connects and applies pending migrations
        job = await store.get_job("team-a", "doc-7f3a")
        await store.close()
    """

    def __init__(
        self, url: str, *, schema: str = "litellm_jobs", min_size: int = 1, max_size: int = 5, timeout_s: float = 30.0
    ) -> None:
        self.url = url
        self.schema = schema
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[dict[str, Any]]] = AsyncConnectionPool(
            url,
            min_size=min_size,
            max_size=max_size,
            open=False,
            timeout=timeout_s,
            connection_class=psycopg.AsyncConnection[dict[str, Any]],
            kwargs={"autocommit": True, "row_factory": dict_row, "options": f"-c search_path={schema}"},
        )

    async def open(self, *, migrate: bool = True, timeout_s: float = 60.0) -> None:
        async with wrap_errors():
            await self._pool.open(wait=True, timeout=timeout_s)
            if migrate:
                await self.migrate()

    async def close(self) -> None:
        await self._pool.close()

    async def migrate(self, *, until: int | None = None) -> list[int]:
        """Apply pending migrations (up to version ``until``, for upgrade tests); returns those applied."""
        async with wrap_errors(), self._pool.connection() as conn:
            applied = await apply_migrations(conn, self.schema, until=until)
        if applied:
            _log.info("litellm-jobs: applied migrations %s in schema %s", applied, self.schema)
        return applied

    async def ping(self) -> None:
        async with wrap_errors(), self._pool.connection() as conn:
            await conn.execute(query("ping"))

    async def write_events(self, events: Sequence[CallEvent]) -> int:
        """Record a batch of call events; returns how many were new (replays change nothing)."""
        return await self.write_batch(events)

    async def write_batch(self, items: Sequence[CallEvent | LedgerEntry]) -> int:
        """Record call events and ledger entries in one transaction; returns how many were new."""
        events = [i for i in items if isinstance(i, CallEvent)]
        entries = [i for i in items if isinstance(i, LedgerEntry)]
        # The first item of a job in the batch opens it (type, metadata); keys sorted so that
        # concurrent writers lock jobs in one order.
        opening: dict[tuple[str, str], tuple[str, bool, dict[str, Any] | None]] = {}
        for entry in entries:
            if entry.job_key is not None:
                opening.setdefault(entry.job_key, (entry.job_type or "default", entry.single_call, None))
        for event in events:
            key = event.context.job_key
            if key is not None:
                c = event.context
                opening.setdefault(key, (c.job_type or "default", c.single_call, c.job_metadata))
        keys = sorted(opening)
        job_keys = {"team_ids": [k[0] for k in keys], "job_ids": [k[1] for k in keys]}
        new = 0
        async with wrap_errors(), self._pool.connection() as conn, conn.transaction():
            if keys:
                await conn.execute(
                    query("ensure_jobs"),
                    {
                        **job_keys,
                        "job_types": [opening[k][0] for k in keys],
                        "single_calls": [opening[k][1] for k in keys],
                        "metadatas": [json.dumps(opening[k][2] or {}) for k in keys],
                    },
                )
                await conn.execute(query("lock_jobs"), job_keys)
            if entries:
                new += len(await self._apply_ledger(conn, entries))
                closing = sorted({(e.team_id, e.job_id, e.closes.value) for e in entries if e.closes and e.job_id})
                if closing:
                    await conn.execute(
                        query("close_jobs"),
                        {
                            "team_ids": [c[0] for c in closing],
                            "job_ids": [c[1] for c in closing],
                            "statuses": [c[2] for c in closing],
                        },
                    )
            if events:
                new += await self._insert_events(conn, events)
        return new

    async def _insert_events(self, conn: psycopg.AsyncConnection[dict[str, Any]], events: Sequence[CallEvent]) -> int:
        cur = await conn.execute(query("insert_call_events"), _batch_params(events))
        inserted = [(row["team_id"], row["call_id"]) for row in await cur.fetchall()]
        if not inserted:
            return 0
        new_calls = sorted(set(inserted))
        await conn.execute(
            query("upsert_calls"), {"team_ids": [k[0] for k in new_calls], "call_ids": [k[1] for k in new_calls]}
        )
        touched = sorted(
            {
                k
                for e in events
                if (e.context.team_id or "", e.call_id) in set(new_calls) and (k := e.context.job_key) is not None
            }
        )
        if touched:
            await conn.execute(
                query("refresh_job_aggregates"),
                {"team_ids": [t[0] for t in touched], "job_ids": [t[1] for t in touched]},
            )
        return len(inserted)

    async def apply_ledger_in(
        self, conn: psycopg.AsyncConnection[dict[str, Any]], entries: Sequence[LedgerEntry]
    ) -> list[dict[str, Any]]:
        """Append ledger entries inside the caller's transaction (whose job rows it has locked)."""
        return await self._apply_ledger(conn, entries)

    async def grant(self, team_id: str, amount: Decimal, *, kind: str, idempotency_key: str, note: str | None) -> int:
        """Append a grant/adjust under the account lock; returns its ledger entry id (also on replay)."""
        from ..models import LedgerKind

        key = f"{kind}:{len(team_id)}:{team_id}:{idempotency_key}"
        async with self.transaction() as conn:
            await self.fetch_all("ensure_account", {"team_id": team_id}, conn)
            await self.fetch_all("lock_account", {"team_id": team_id}, conn)
            await self._apply_ledger(
                conn,
                [LedgerEntry(team_id=team_id, kind=LedgerKind(kind), amount=amount, idempotency_key=key, note=note)],
            )
            row = await self.fetch_one("ledger_entry_id", {"key": key}, conn)
        assert row is not None
        return int(row["entry_id"])

    @staticmethod
    async def _apply_ledger(
        conn: psycopg.AsyncConnection[dict[str, Any]], entries: Sequence[LedgerEntry]
    ) -> list[dict[str, Any]]:
        cur = await conn.execute(
            query("apply_ledger"),
            {
                "team_ids": [e.team_id for e in entries],
                "kinds": [e.kind.value for e in entries],
                "amounts": [e.amount for e in entries],
                "job_ids": [e.job_id for e in entries],
                "keys": [e.idempotency_key for e in entries],
                "notes": [e.note for e in entries],
            },
        )
        return await cur.fetchall()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[psycopg.AsyncConnection[dict[str, Any]]]:
        """A connection inside a transaction, for the credit rules of PostgreSQL mode."""
        async with wrap_errors(), self._pool.connection() as conn, conn.transaction():
            yield conn

    async def apply_ledger(self, entries: Sequence[LedgerEntry]) -> int:
        """Append ledger entries now (idempotent); returns how many were new."""
        if not entries:
            return 0
        return await self.write_batch(entries)

    async def fetch_one(
        self, name: str, params: dict[str, Any], conn: psycopg.AsyncConnection[dict[str, Any]] | None = None
    ) -> dict[str, Any] | None:
        rows = await self.fetch_all(name, params, conn)
        return rows[0] if rows else None

    async def fetch_all(
        self, name: str, params: dict[str, Any], conn: psycopg.AsyncConnection[dict[str, Any]] | None = None
    ) -> list[dict[str, Any]]:
        """Rows of the named query (on ``conn`` inside a transaction, else on a pooled connection)."""
        if conn is not None:
            cur = await conn.execute(query(name), params)
            return await cur.fetchall() if cur.description is not None else []
        async with wrap_errors(), self._pool.connection() as pooled:
            cur = await pooled.execute(query(name), params)
            return await cur.fetchall() if cur.description is not None else []

    async def get_job(self, team_id: str, job_id: str) -> Job | None:
        async with wrap_errors(), self._pool.connection() as conn:
            cur = await conn.execute(query("get_job"), {"team_id": team_id, "job_id": job_id})
            row = await cur.fetchone()
        return None if row is None else Job.model_validate(row)

    async def list_jobs(
        self,
        team_id: str,
        *,
        status: str | None = None,
        job_type: str | None = None,
        since: Any = None,
        until: Any = None,
        cursor: tuple[Any, str] | None = None,
        limit: int = 50,
    ) -> list[Job]:
        rows = await self.fetch_all(
            "list_jobs",
            {
                "team_id": team_id,
                "status": status,
                "job_type": job_type,
                "since": since,
                "until": until,
                "cursor_at": cursor[0] if cursor else None,
                "cursor_id": cursor[1] if cursor else None,
                "limit": limit,
            },
        )
        return [Job.model_validate(r) for r in rows]

    async def count_calls(self, team_id: str, job_id: str) -> int:
        row = await self.fetch_one("count_job_calls", {"team_id": team_id, "job_id": job_id})
        return int(row["n"]) if row else 0

    async def wait_for_calls(
        self,
        team_id: str,
        job_id: str,
        count: int,
        *,
        timeout_s: float,
        interval_s: float = 0.02,
        max_interval_s: float | None = None,
    ) -> bool:
        """Wait, at most ``timeout_s``, until ``count`` calls of the job are recorded; True if they are.

        The condition lives in PostgreSQL (any replica may write the calls), so it is polled, every
        ``interval_s``, doubling up to ``max_interval_s`` when given.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        delay = interval_s
        while await self.count_calls(team_id, job_id) < count:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_interval_s or interval_s)
        return True

    async def balance(self, team_id: str) -> Balance:
        row = await self.fetch_one("get_balance", {"team_id": team_id})
        if row is None:
            zero = Decimal(0)
            return Balance(
                team_id=team_id, credits_allocated=zero, credits_remaining=zero, credits_held=zero, credits_charged=zero
            )
        return Balance.model_validate(row)

    async def list_calls(self, team_id: str, job_id: str) -> list[Call]:
        async with wrap_errors(), self._pool.connection() as conn:
            cur = await conn.execute(query("list_job_calls"), {"team_id": team_id, "job_id": job_id})
            rows = await cur.fetchall()
        return [Call.model_validate(row) for row in rows]
