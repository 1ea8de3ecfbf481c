"""Upgrade safety: every migration applies over data an earlier release wrote, and stays additive
(old replicas keep working while new ones roll out)."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest

from litellm_jobs_plugin.analytics import analytics
from litellm_jobs_plugin.store.migrations import load_migrations
from litellm_jobs_plugin.store.postgres import PostgresStore
from tests.conftest import query
from tests.support.events import context, event

LATEST = len(load_migrations())

#: Rows as the release at each schema version wrote them (only the columns that version had).
WRITTEN_AT = {
    1: """
INSERT INTO jobs (team_id, job_id, job_type, status, total_calls, successful_calls, prompt_tokens,
                  completion_tokens, total_cost_usd, total_latency_ms, models_used, first_call_at, last_call_at)
VALUES ('team-u', 'old-job', 'document_analysis', 'in_progress', 1, 1, 10, 5, 0.000123, 250,
        '{openai/gpt-4o-mini}', now(), now());
INSERT INTO call_events (event_id, call_id, team_id, job_id, job_type, status, model_group, model,
                         prompt_tokens, completion_tokens, cost_usd, latency_ms, started_at, ended_at)
VALUES ('6:team-u:old-call:success', 'old-call', 'team-u', 'old-job', 'document_analysis', 'success',
        'ChatAgent', 'openai/gpt-4o-mini', 10, 5, 0.000123, 250, now() - interval '1 second', now());
INSERT INTO calls (team_id, call_id, job_id, job_type, status, model_group, model, prompt_tokens,
                   completion_tokens, cost_usd, latency_ms, started_at, ended_at)
VALUES ('team-u', 'old-call', 'old-job', 'document_analysis', 'success', 'ChatAgent', 'openai/gpt-4o-mini',
        10, 5, 0.000123, 250, now() - interval '1 second', now());
""",
    2: """
INSERT INTO credit_ledger (team_id, kind, amount, idempotency_key) VALUES ('team-u', 'grant', 10, 'grant:old');
INSERT INTO credit_accounts (team_id, credits_allocated) VALUES ('team-u', 10);
""",
    3: """
INSERT INTO calls (team_id, call_id, job_id, job_type, status, model_group, model, prompt_tokens,
                   completion_tokens, cost_usd, latency_ms, started_at, ended_at, purpose)
VALUES ('team-u', 'old-call-3', NULL, NULL, 'success', 'ChatAgent', 'openai/gpt-4o-mini', 1, 1, 0,
        10, now(), now(), 'summary');
""",
    4: "",  # indexes only
    5: "",  # functions only (the writer's batch)
    6: """
INSERT INTO team_policies (team_id, job_prices, allowed_job_types, failure_allowance_usd)
VALUES ('team-u', '{"document_analysis": "2"}', '["document_analysis"]', 0.5);
""",
    7: """
INSERT INTO webhook_endpoints (endpoint_id, url, team_id, event_types, secret)
VALUES ('we_old', 'http://127.0.0.1:9/hook', 'team-u', '{job.completed}', 'whsec_b2xkLXNlY3JldA==');
INSERT INTO webhook_events (event_id, event_type, team_id, job_id, order_key, snapshot)
VALUES ('evt_old', 'job.completed', 'team-u', 'old-job', 'job:6:team-u:old-job', '{}');
INSERT INTO webhook_deliveries (event_id, endpoint_id, seq, order_key)
SELECT 'evt_old', 'we_old', seq, order_key FROM webhook_events WHERE event_id = 'evt_old';
INSERT INTO webhook_team_settings (team_id, credits_low_threshold) VALUES ('team-u', 2);
""",
    8: """
INSERT INTO export_sinks (name, kind, url, options) VALUES ('meter-u', 'stripe', 'http://127.0.0.1:9/', '{}');
INSERT INTO export_cursors (sink, position_xid, position_seq) VALUES ('meter-u', 0, 0);
INSERT INTO export_customers (sink, team_id, customer_id) VALUES ('meter-u', 'team-u', 'cus_U');
""",
    9: """
INSERT INTO stripe_events (event_id, type, team_id, credits, status, payload)
VALUES ('evt_u', 'checkout.session.completed', 'team-u', 5, 'granted', '{}');
INSERT INTO stripe_prices (price_id, credits) VALUES ('price_u', 10);
""",
    10: "",  # functions only (the webhook worker's wake-up)
}


def test_every_schema_version_has_rows_to_upgrade() -> None:
    assert set(WRITTEN_AT) == set(range(1, LATEST + 1)), "add the rows the new version writes to WRITTEN_AT"


@pytest.mark.parametrize("previous", range(1, LATEST))
async def test_migrations_apply_over_data_of_every_earlier_version(database_url: str, previous: int) -> None:
    store = PostgresStore(database_url)
    await store.open(migrate=False)
    try:
        assert await store.migrate(until=previous) == list(range(1, previous + 1))
        for version, rows in WRITTEN_AT.items():
            if version <= previous:
                query(database_url, rows)
        assert await store.migrate() == list(range(previous + 1, LATEST + 1))

        # The old rows read back through today's code...
        job = await store.get_job("team-u", "old-job")
        assert job is not None
        assert (job.total_calls, job.total_cost_usd) == (1, Decimal("0.000123"))
        calls = await store.list_calls("team-u", "old-job")
        assert [(c.call_id, c.purpose) for c in calls] == [("old-call", None)]
        # ...and today's code keeps writing to them: a new call on the old job.
        await store.write_batch([event("new-call", ctx=context("team-u", "old-job", "document_analysis"))])
        job = await store.get_job("team-u", "old-job")
        assert job is not None
        assert (job.total_calls, job.total_cost_usd) == (2, Decimal("0.001123"))
        stats = await analytics(store, team_id="team-u", since=None, until=None)
        assert [(s.job_type, s.calls) for s in stats.job_types] == [("document_analysis", 2)]
        if previous >= 2:
            assert (await store.balance("team-u")).credits_allocated == 10
        if previous >= 3:
            rows = query(database_url, "SELECT purpose FROM calls WHERE call_id = 'old-call-3'")
            assert rows == [{"purpose": "summary"}]
    finally:
        await store.close()


#: What a migration may do while replicas of the previous release still run against the schema.
_FORBIDDEN = [
    (r"\bDROP\s+(TABLE|COLUMN|INDEX|SCHEMA|VIEW|FUNCTION|TYPE|CONSTRAINT)\b", "drops something old code uses"),
    (r"\bRENAME\b", "renames something old code uses"),
    (r"\bALTER\s+COLUMN\s+\w+\s+(SET\s+DATA\s+)?TYPE\b", "changes a column's type"),
    (r"\bSET\s+NOT\s+NULL\b", "makes a column old code may leave empty required"),
    (r"\bTRUNCATE\b|\bDELETE\s+FROM\b", "deletes data"),
    (r"\bADD\s+CONSTRAINT\b", "adds a constraint the previous release's writes may break"),
    (r"\bCREATE\s+UNIQUE\s+INDEX\b", "adds a uniqueness the previous release's writes may break"),
]


@pytest.mark.parametrize("migration", load_migrations()[1:], ids=lambda m: f"{m.version:04d}_{m.name}")
def test_migrations_after_the_first_are_additive(migration: object) -> None:
    sql = re.sub(r"--[^\n]*", "", migration.sql)  # type: ignore[attr-defined]
    for pattern, why in _FORBIDDEN:
        assert not re.search(pattern, sql, re.I), f"{why}: make it additive, in two releases"
    # New columns are nullable or have a default: the previous release's INSERTs still work.
    for column in re.finditer(r"ADD\s+COLUMN\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)\s+([^,;]+)", sql, re.I):
        definition = column[2].upper()
        assert "NOT NULL" not in definition or "DEFAULT" in definition, column[1]


def test_the_additive_check_catches_a_breaking_change() -> None:
    sql = "ALTER TABLE calls DROP COLUMN purpose;"
    assert any(re.search(p, sql, re.I) for p, _ in _FORBIDDEN)
