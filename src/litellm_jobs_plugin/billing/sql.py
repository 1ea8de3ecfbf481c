"""The named queries of ``store/billing.sql``, and running them on the plugin's store."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any, LiteralString

import psycopg

from ..store.postgres import PostgresStore
from ..store.sql import parse_queries

Conn = psycopg.AsyncConnection[dict[str, Any]]


@cache
def billing_queries() -> dict[str, LiteralString]:
    return parse_queries(resources.files("litellm_jobs_plugin.store").joinpath("billing.sql").read_text("utf-8"))


async def rows(
    store: PostgresStore, name: str, params: dict[str, Any], conn: Conn | None = None
) -> list[dict[str, Any]]:
    """Rows of the named billing query (on ``conn``, else in a transaction of its own)."""
    if conn is not None:
        cur = await conn.execute(billing_queries()[name], params)
        return await cur.fetchall() if cur.description is not None else []
    async with store.transaction() as own:
        cur = await own.execute(billing_queries()[name], params)
        return await cur.fetchall() if cur.description is not None else []
