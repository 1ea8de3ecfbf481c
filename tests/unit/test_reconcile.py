"""Reconciliation without a database: its checks cover what the writer caches, its report and gauges."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal

from prometheus_client import CollectorRegistry

from litellm_jobs_plugin.metrics import Metrics
from litellm_jobs_plugin.reconcile import FIELDS, Drift, DriftKind, FieldDrift, Report
from litellm_jobs_plugin.store.migrations import load_migrations
from litellm_jobs_plugin.store.sql import query

#: Columns refresh_job_aggregates sets that are bookkeeping, not totals derivable from call rows.
NOT_TOTALS = {"last_activity_at", "updated_at", "status"}


def set_columns(sql: str) -> set[str]:
    body = sql.split(" SET", 1)[1].split("\nFROM", 1)[0]
    return set(re.findall(r"^\s+([a-z_]+) = ", body, re.MULTILINE))


def function_body(name: str) -> str:
    """The body of one SQL function of migration 0005 (the writer's batch, the recomputation)."""
    sql = next(m.sql for m in load_migrations() if m.version == 5)
    return sql.split(f"CREATE FUNCTION {name}(", 1)[1].split("\n$$;", 1)[0]


def test_the_check_covers_every_aggregate_the_writer_caches() -> None:
    cached = set_columns(function_body("recompute_job_aggregates")) - NOT_TOTALS
    assert cached == set(FIELDS[DriftKind.JOB_AGGREGATES])
    # the writer's incremental update moves exactly the aggregates the recomputation sets
    incremental = function_body("record_batch").split("UPDATE jobs j SET\n        total_calls", 1)[1]
    assert set_columns("UPDATE jobs j SET\n        total_calls" + incremental) - NOT_TOTALS == cached
    assert set_columns(query("reconcile_clear_job_aggregates")) - NOT_TOTALS == cached
    for kind, name in (
        (DriftKind.JOB_AGGREGATES, "reconcile_job_aggregates"),
        (DriftKind.JOB_CREDITS, "reconcile_job_credits"),
        (DriftKind.TEAM_BALANCES, "reconcile_team_balances"),
    ):
        for column in FIELDS[kind]:
            assert f"AS expected_{column}" in query(name), (name, column)


def report(**counts: int) -> Report:
    return Report(
        checked_at=datetime(2026, 12, 1, 12, 0, tzinfo=UTC),
        team_id=None,
        counts={k: counts.get(k.value, 0) for k in DriftKind},
        drifts=(
            Drift(
                DriftKind.TEAM_BALANCES,
                "team-a",
                None,
                (FieldDrift("credits_held", Decimal("2.000000"), Decimal("0E-6")),),
            ),
        ),
    )


def test_the_report_is_clean_when_nothing_drifts_or_is_left() -> None:
    assert report().clean
    found = report(team_balances=1)
    assert not found.clean
    assert found.to_json()["drifts"][0]["fields"] == {"credits_held": {"stored": "2", "expected": "0"}}
    fixed = Report(
        checked_at=found.checked_at,
        team_id=None,
        counts=found.counts,
        fixed=found.counts,
        remaining=dict.fromkeys(DriftKind, 0),
    )
    assert fixed.clean
    assert fixed.to_json()["fixed"] == {"job_aggregates": 0, "job_credits": 0, "team_balances": 1}


def test_the_gauges_show_the_last_check() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.drift_checked(report(job_aggregates=4, team_balances=1))
    sample = registry.get_sample_value
    assert sample("litellm_jobs_reconcile_drift", {"kind": "job_aggregates"}) == 4
    assert sample("litellm_jobs_reconcile_drift", {"kind": "job_credits"}) == 0
    assert sample("litellm_jobs_reconcile_drift", {"kind": "team_balances"}) == 1
    assert sample("litellm_jobs_reconcile_last_check_timestamp_seconds") == report().checked_at.timestamp()
    metrics.drift_checked(report())
    assert sample("litellm_jobs_reconcile_drift", {"kind": "job_aggregates"}) == 0
    metrics.drift_check_failed()
    assert sample("litellm_jobs_reconcile_check_errors_total") == 1
