"""The PostgreSQL store: a psycopg 3 async pool, the named queries, one transaction per batch."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from ..errors import StoreUnavailable
from ..models import Call, CallEvent, Job
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

    async def migrate(self) -> list[int]:
        async with wrap_errors(), self._pool.connection() as conn:
            applied = await apply_migrations(conn, self.schema)
        if applied:
            _log.info("litellm-jobs: applied migrations %s in schema %s", applied, self.schema)
        return applied

    async def ping(self) -> None:
        async with wrap_errors(), self._pool.connection() as conn:
            await conn.execute(query("ping"))

    async def write_events(self, events: Sequence[CallEvent]) -> int:
        """Record a batch of events in one transaction; returns how many were new.

        Replayed events insert nothing and change nothing.
        """
        if not events:
            return 0
        params = _batch_params(events)
        # The first event of a job in the batch opens it (type, metadata); keys sorted so that
        # concurrent writers lock jobs in one order.
        opening: dict[tuple[str, str], CallEvent] = {}
        for event in events:
            if event.context.job_key is not None:
                opening.setdefault(event.context.job_key, event)
        keys = sorted(opening)
        job_keys = {"team_ids": [k[0] for k in keys], "job_ids": [k[1] for k in keys]}
        async with wrap_errors(), self._pool.connection() as conn, conn.transaction():
            if keys:
                first = [opening[k].context for k in keys]
                await conn.execute(
                    query("ensure_jobs"),
                    {
                        **job_keys,
                        "job_types": [c.job_type or "default" for c in first],
                        "single_calls": [c.single_call for c in first],
                        "metadatas": [json.dumps(c.job_metadata or {}) for c in first],
                    },
                )
                await conn.execute(query("lock_jobs"), job_keys)
            cur = await conn.execute(query("insert_call_events"), params)
            inserted = [row["call_id"] for row in await cur.fetchall()]
            if not inserted:
                return 0
            await conn.execute(query("upsert_calls"), {"call_ids": sorted(set(inserted))})
            new_calls = set(inserted)
            touched = sorted(
                {e.context.job_key for e in events if e.call_id in new_calls and e.context.job_key is not None}
            )
            if touched:
                await conn.execute(
                    query("refresh_job_aggregates"),
                    {"team_ids": [t[0] for t in touched], "job_ids": [t[1] for t in touched]},
                )
        return len(inserted)

    async def get_job(self, team_id: str, job_id: str) -> Job | None:
        async with wrap_errors(), self._pool.connection() as conn:
            cur = await conn.execute(query("get_job"), {"team_id": team_id, "job_id": job_id})
            row = await cur.fetchone()
        return None if row is None else Job.model_validate(row)

    async def list_calls(self, team_id: str, job_id: str) -> list[Call]:
        async with wrap_errors(), self._pool.connection() as conn:
            cur = await conn.execute(query("list_job_calls"), {"team_id": team_id, "job_id": job_id})
            rows = await cur.fetchall()
        return [Call.model_validate(row) for row in rows]
