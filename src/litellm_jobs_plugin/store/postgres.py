"""The PostgreSQL store: a psycopg 3 async pool, the named queries, one statement per batch.

The writer's batches go through a connection of their own, with asyncpg: a batch is one statement
(``record_batch``, migration 0005) and its round trip is the plugin's largest per-call cost, which
asyncpg makes about half of psycopg's (bench/RESULTS.md). Everything else uses the psycopg pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from decimal import Decimal
from typing import Any

import asyncpg
import orjson
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


def _event_row(e: CallEvent) -> dict[str, Any]:
    c = e.context
    return {
        "event_id": e.event_id,
        "call_id": e.call_id,
        "team_id": c.team_id,
        "job_id": c.job_id,
        "job_type": c.job_type,
        "single_call": c.single_call,
        "key_hash": c.key_hash,
        "user_id": c.user_id,
        "call_type": e.call_type,
        "requested_model": c.requested_model,
        "status": e.status.value,
        "model_group": e.model_group,
        "model": e.model,
        "model_id": e.model_id,
        "provider": e.provider,
        "prompt_tokens": e.prompt_tokens,
        "completion_tokens": e.completion_tokens,
        "cost_usd": str(e.cost_usd),  # a decimal string: exact in the numeric column
        "cache_hit": e.cache_hit,
        "stream": e.stream,
        "latency_ms": e.latency_ms,
        "error_type": e.error_type,
        "error_code": e.error_code,
        # orjson writes a datetime as isoformat() does, several times faster
        "started_at": e.started_at,
        "ended_at": e.ended_at,
        "purpose": c.purpose,
    }


def _entry_row(e: LedgerEntry) -> dict[str, Any]:
    return {
        "team_id": e.team_id,
        "kind": e.kind.value,
        "amount": str(e.amount),
        "job_id": e.job_id,
        "idempotency_key": e.idempotency_key,
        "note": e.note,
    }


def batch_document(items: Sequence[CallEvent | LedgerEntry]) -> str:
    """The JSON document ``record_batch`` (migration 0005) takes: the batch's jobs, entries, closures and events.

    A job is opened by the first item of it in the batch (its type and metadata); jobs are sorted
    by (team_id, job_id), the order every writer locks them in.
    """
    events: list[dict[str, Any]] = []
    entries: list[dict[str, Any]] = []
    closes: dict[tuple[str, str], str] = {}
    opening: dict[tuple[str, str], tuple[str, bool, dict[str, Any] | None]] = {}
    for item in items:
        if isinstance(item, CallEvent):
            events.append(_event_row(item))
            c = item.context
            if (key := c.job_key) is not None and key not in opening:
                opening[key] = (c.job_type or "default", c.single_call, c.job_metadata)
        else:
            entries.append(_entry_row(item))
            if (key := item.job_key) is not None:
                if key not in opening:
                    opening[key] = (item.job_type or "default", item.single_call, None)
                if item.closes is not None:
                    closes.setdefault(key, item.closes.value)
    jobs = [
        {"team_id": k[0], "job_id": k[1], "job_type": t, "single_call": single, "metadata": meta}
        for k, (t, single, meta) in sorted(opening.items())
    ]
    return orjson.dumps(
        {
            "jobs": jobs,
            "entries": entries,
            "closes": [{"team_id": k[0], "job_id": k[1], "status": v} for k, v in sorted(closes.items())],
            "events": events,
        }
    ).decode()


#: SQLSTATE classes that are the batch's own fault (a bad value, a violated constraint, a statement
#: the database refuses): the writer isolates the batch's records. Any other failure — the database
#: away, restarting, busy, a deadlock, a connection left unusable by a cancelled operation — keeps
#: the batch and retries it on a new connection.
_BATCH_FAULT_SQLSTATE = ("21", "22", "23", "2F", "42", "P0")


def asyncpg_connect_args(url: str, *, application_name: str, schema: str | None = None) -> dict[str, Any]:
    """asyncpg's arguments for a libpq connection string (URL or key=value), and our schema if given."""
    params = psycopg.conninfo.conninfo_to_dict(url)
    settings = {"application_name": application_name}
    if schema is not None:
        settings["search_path"] = schema
    args: dict[str, Any] = {"server_settings": settings}
    for ours, theirs in (("host", "host"), ("port", "port"), ("user", "user"), ("password", "password")):
        if params.get(ours) is not None:
            args[theirs] = str(params[ours])
    if params.get("dbname") is not None:
        args["database"] = str(params["dbname"])
    if params.get("sslmode") is not None:
        args["ssl"] = str(params["sslmode"])
    if "port" in args:
        args["port"] = int(args["port"])
    return args


class BatchConnection:
    """The writer's connection: one ``record_batch`` statement per batch, one batch at a time.

    Connects on first use and again after a failure; a database that is away raises
    :class:`StoreUnavailable` (the writer keeps the batch and retries), anything else is the batch's
    own error.
    """

    def __init__(self, url: str, schema: str, *, timeout_s: float = 30.0) -> None:
        self._args = asyncpg_connect_args(url, application_name="litellm-jobs-writer", schema=schema)
        self._timeout_s = timeout_s
        self._conn: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()  # the memory buffer's writer and the journal's reader share it

    async def record(self, document: str) -> int:
        async with self._lock:
            try:
                if self._conn is None or self._conn.is_closed():
                    self._conn = await asyncpg.connect(timeout=self._timeout_s, **self._args)
                return int(await self._conn.fetchval(query("record_batch"), document) or 0)
            except asyncio.CancelledError:
                await self._discard()  # an operation cut short leaves the connection unusable
                raise
            except Exception as exc:
                sqlstate = str(getattr(exc, "sqlstate", "") or "") if isinstance(exc, asyncpg.PostgresError) else ""
                if sqlstate[:2] in _BATCH_FAULT_SQLSTATE:
                    raise
                await self._discard()
                raise StoreUnavailable(f"The jobs store is unavailable ({type(exc).__name__}); retry shortly.") from exc

    async def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.terminate()

    async def close(self) -> None:
        async with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), timeout=5)


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
        self._batches = BatchConnection(url, schema, timeout_s=timeout_s)
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
        await self._batches.close()
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
        """Record call events and ledger entries in one statement (one transaction); returns how many were new."""
        if not items:
            return 0
        return await self._batches.record(batch_document(items))

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
            query("apply_ledger"), {"entries": orjson.dumps([_entry_row(e) for e in entries]).decode()}
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
