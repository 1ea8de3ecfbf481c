"""Forward-only SQL migrations (``migrations/NNNN_name.sql``), applied under an advisory lock.

Every replica runs :func:`apply_migrations` at start-up; the lock makes that safe, and the
recorded checksums make an edited, already-applied migration an error instead of silent drift.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any, LiteralString

import psycopg
from psycopg import sql

from .sql import query

#: pg_advisory_lock key: the first 8 bytes of sha256("litellm_jobs_plugin.migrations").
MIGRATION_LOCK_KEY = int.from_bytes(hashlib.sha256(b"litellm_jobs_plugin.migrations").digest()[:8], "big", signed=True)
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(RuntimeError):
    """An applied migration no longer matches its file."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: LiteralString

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def _literal(text: str) -> LiteralString:
    # Migration files ship inside the package; they are never built from input.
    return text  # type: ignore[return-value,unused-ignore]


def load_migrations() -> list[Migration]:
    found: list[Migration] = []
    for entry in resources.files(__package__).joinpath("migrations").iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], _literal(entry.read_text("utf-8"))))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise MigrationError(f"migration versions must be 1..n without gaps, got {versions}")
    return found


async def apply_migrations(conn: psycopg.AsyncConnection[Any], schema: str, *, until: int | None = None) -> list[int]:
    """Apply pending migrations in ``schema`` (up to version ``until``); returns the versions applied now."""
    migrations = [m for m in load_migrations() if until is None or m.version <= until]
    applied_now: list[int] = []
    await conn.set_autocommit(True)
    await conn.execute(query("lock_migrations"), {"key": MIGRATION_LOCK_KEY})
    try:
        await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        await conn.execute(query("create_migrations_table"))
        cur = await conn.execute(query("list_migrations"))
        applied: dict[int, str] = {}
        for row in await cur.fetchall():
            version, checksum = row["version"], row["checksum"]
            applied[int(version)] = str(checksum)
        for migration in migrations:
            if migration.version in applied:
                if applied[migration.version] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.version:04d}_{migration.name} was changed after it was "
                        "applied; released migrations are immutable, add a new one instead"
                    )
                continue
            async with conn.transaction():
                # The file is part of the package, never input.
                await conn.execute(migration.sql)
                await conn.execute(
                    query("record_migration"),
                    {"version": migration.version, "name": migration.name, "checksum": migration.checksum},
                )
            applied_now.append(migration.version)
    finally:
        await conn.execute(query("unlock_migrations"), {"key": MIGRATION_LOCK_KEY})
    return applied_now
