"""Rules of the codebase that a reviewer would otherwise have to remember."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

import litellm_jobs_plugin
from litellm_jobs_plugin.settings import Settings
from litellm_jobs_plugin.store.migrations import load_migrations
from litellm_jobs_plugin.store.sql import parse_queries, queries

SRC = Path(litellm_jobs_plugin.__file__).parent
PY_FILES = sorted(SRC.rglob("*.py"))

#: Released migrations are immutable: add a new file instead of editing one of these.
RELEASED = {
    1: "093a4779820e37f26ea4b6fcd0d4d6c44150cd0c72ea66f8f79db708bc52c3b0",
    2: "d5d5e77f8be4afe0995fe964073a9c8345fcf7ecf185f201cc0c6d571558d2fd",
    3: "8a36dec110ec903ad56e776f45868bbb62a750013917488666c86d7835cf2c92",
    4: "e156eb88512b9e1009f4c220510da00c1a8256b8a7af2d18f290226614087611",
    5: "89e0c6df940a36cf2187e4f9995e7959ada6d195c85bae94e0b16a0cd0f156c4",
}


def test_released_migrations_are_unchanged() -> None:
    found = {m.version: m.checksum for m in load_migrations()}
    assert {v: found[v] for v in RELEASED} == RELEASED


def test_only_settings_reads_the_environment() -> None:
    offenders = [
        p.name for p in PY_FILES if p.name != "settings.py" and re.search(r"os\.(getenv|environ)", p.read_text())
    ]
    assert offenders == []


def test_sql_lives_in_queries_sql() -> None:
    pattern = re.compile(r"[\"'](\s*)(SELECT|INSERT INTO|UPDATE \w+ SET|DELETE FROM|CREATE TABLE)\b")
    offenders = [p.name for p in PY_FILES if pattern.search(p.read_text())]
    assert offenders == []
    assert {"record_batch", "apply_ledger", "refresh_job_aggregates", "lock_jobs"} <= set(queries())


def test_query_file_parsing() -> None:
    assert parse_queries("-- name: a\nSELECT 1;\n-- name: b\nSELECT 2;") == {"a": "SELECT 1;", "b": "SELECT 2;"}


def test_settings_read_jobs_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://litellm-db")
    assert Settings().database_url == "postgresql://litellm-db"
    monkeypatch.setenv("JOBS_DATABASE_URL", "postgresql://jobs-db")
    monkeypatch.setenv("JOBS_JOB_PRICES", '{"document_analysis": "2.5"}')
    s = Settings()
    assert s.database_url == "postgresql://jobs-db"
    assert str(s.price_of("document_analysis")) == "2.5"
    assert s.price_of("other") == 1
    monkeypatch.setenv("JOBS_DB_SCHEMA", 'x"; DROP SCHEMA public; --')
    with pytest.raises(ValueError, match="JOBS_DB_SCHEMA"):
        Settings()


def test_prisma_only_url_parameters_are_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    # LiteLLM's DATABASE_URL carries Prisma parameters that psycopg refuses ("invalid URI query parameter").
    monkeypatch.setenv(
        "DATABASE_URL", "postgresql://u:p%40ss@db:5432/litellm?connection_limit=10&pool_timeout=60&sslmode=require"
    )
    assert Settings().database_url == "postgresql://u:p%40ss@db:5432/litellm?sslmode=require"
    monkeypatch.setenv("JOBS_DATABASE_URL", "host=db dbname=litellm")
    assert Settings().database_url == "host=db dbname=litellm"


def test_package_exports_the_plugin_lazily() -> None:
    assert litellm_jobs_plugin.__all__ == ["__version__", "plugin"]
    plugin = litellm_jobs_plugin.plugin
    assert type(plugin).__name__ == "JobsPlugin"
    assert litellm_jobs_plugin.plugin is plugin
    # Hooks must be defined on the instantiated class itself: LiteLLM skips inherited ones (see hooks.py).
    for hook in (
        "async_pre_call_hook",
        "async_log_success_event",
        "async_log_failure_event",
        "async_post_call_response_headers_hook",
    ):
        assert hook in type(plugin).__dict__, hook


def test_checksum_helper_is_sha256() -> None:
    m = load_migrations()[0]
    assert m.checksum == hashlib.sha256(m.sql.encode()).hexdigest()
