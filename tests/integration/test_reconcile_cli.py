"""``litellm-jobs reconcile`` against a real PostgreSQL: exit 1 and a report on drift, 0 once fixed."""

from __future__ import annotations

import asyncio
import json

from typer.testing import CliRunner

from litellm_jobs_plugin.cli import app
from litellm_jobs_plugin.store.postgres import PostgresStore
from tests.conftest import query
from tests.integration.test_reconcile import corrupt, seed, snapshot


def seeded(url: str) -> None:
    async def work() -> None:
        store = PostgresStore(url)
        await store.open()
        try:
            await seed(store)
        finally:
            await store.close()

    asyncio.run(work())


def reconcile(url: str, *args: str) -> tuple[int, str]:
    runner = CliRunner()
    done = runner.invoke(app, ["reconcile", *args], env={"JOBS_DATABASE_URL": url, "COLUMNS": "200"})
    return done.exit_code, done.output


def test_reconcile_reports_drift_then_fixes_it(database_url: str) -> None:
    seeded(database_url)
    assert reconcile(database_url) == (
        0,
        "no drift: every job's totals match its calls, every balance its ledger\n",
    )
    before = snapshot(database_url)
    corrupt(database_url)

    code, output = reconcile(database_url)
    assert code == 1, output
    assert "job_aggregates 3, job_credits 1, team_balances 1" in output
    assert "total_cost_usd" in output
    assert "0.5035" in output
    assert "0.0035" in output
    assert "run with --fix" in output

    code, output = reconcile(database_url, "--json")
    assert code == 1
    report = json.loads(output)
    assert report["counts"] == {"job_aggregates": 3, "job_credits": 1, "team_balances": 1}
    assert report["clean"] is False
    assert {
        "kind": "team_balances",
        "team_id": "team-b",
        "job_id": None,
        "fields": {"credits_held": {"stored": "2", "expected": "0"}},
    } in report["drifts"]

    code, output = reconcile(database_url, "--fix", "--team", "team-a")
    assert code == 0, output
    assert "fixed: job_aggregates 3, job_credits 1, team_balances 0" in output
    assert reconcile(database_url)[0] == 1  # team-b still drifts

    code, output = reconcile(database_url, "--fix", "--json")
    assert code == 0, output
    fixed = json.loads(output)
    assert fixed["fixed"] == {"job_aggregates": 0, "job_credits": 0, "team_balances": 1}
    assert fixed["remaining"] == {"job_aggregates": 0, "job_credits": 0, "team_balances": 0}
    assert fixed["clean"] is True
    assert reconcile(database_url)[0] == 0
    assert snapshot(database_url) == before


def test_reconcile_errors_are_one_line(database_url: str) -> None:
    code, output = reconcile(database_url, "--team", "bad team")
    assert code == 1
    assert "error:" in output
    assert "Traceback" not in output
    assert query(database_url, "SELECT count(*) AS n FROM jobs") == [{"n": 0}]
