"""``litellm-jobs export`` and ``litellm-jobs billing ...`` against a real database and a local receiver."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

from litellm_jobs_plugin.billing.events import job_event_id
from tests.conftest import query
from tests.integration.test_usage_export import close_job
from tests.support.billing_receivers import Receiver
from tests.support.services import clean_env

CLI = str(Path(sys.executable).with_name("litellm-jobs"))


def cli(url: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {**clean_env(), "JOBS_DATABASE_URL": url, "COLUMNS": "100"}
    return subprocess.run([CLI, *args], input=stdin, capture_output=True, text=True, env=env, timeout=120)


def ok(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr + result.stdout
    return json.loads(result.stdout) if result.stdout.lstrip().startswith(("{", "[")) else result.stdout


def test_sinks_customers_and_a_backfill_from_the_command_line(database_url: str) -> None:
    ok(cli(database_url, "migrate"))
    with Receiver("stripe").running() as r:
        secret = r.api_key
        shown = ok(
            cli(
                database_url,
                *("billing", "sinks", "set", "meter", "--kind", "stripe", "--url", r.url, "--api-key-stdin", "--json"),
                *("--options", '{"statuses": ["completed"]}'),
                stdin=secret + "\n",
            )
        )
        assert shown["api_key_set"] is True
        assert secret not in json.dumps(shown)
        listed = cli(database_url, "billing", "sinks", "list")
        assert "meter" in listed.stdout
        assert secret not in listed.stdout + listed.stderr
        ok(cli(database_url, "billing", "customers", "set", "meter", "team-a", "cus_TeamA"))
        assert (
            ok(cli(database_url, "billing", "customers", "list", "meter", "--json"))["customers"][0]["customer_id"]
            == "cus_TeamA"
        )

        close_job(database_url, "team-a", "job-1")
        close_job(database_url, "team-a", "job-2", "failed")  # not in the sink's statuses
        close_job(database_url, "team-b", "job-3")  # no customer: counted, not sent
        result = ok(cli(database_url, "export", "--since", "2000-01-01", "--json"))
        assert result == [
            {"sink": "meter", "jobs": 1, "events_sent": 1, "unmapped_teams": {"team-b": 1}, "error": None}
        ]
        assert r.ids() == [job_event_id("team-a", "job-1", "completed")]
        ok(cli(database_url, "export", "--since", "2000-01-01", "--sink", "meter"))
        assert r.ids() == [job_event_id("team-a", "job-1", "completed")] * 2  # the same id again

        r.fail_after = len(r.received)
        refused = cli(database_url, "export", "--since", "2000-01-01")
        assert refused.returncode == 1
        assert "HTTP 500" in refused.stderr
    assert cli(database_url, "export", "--since", "yesterday").returncode == 1
    assert cli(database_url, "export", "--since", "2000-01-01", "--sink", "nope").returncode == 1


def test_stripe_events_prices_and_apply_from_the_command_line(database_url: str) -> None:
    ok(cli(database_url, "migrate"))
    assert ok(cli(database_url, "billing", "stripe", "price-set", "price_pack", "2.5", "--json"))["credits"] == "2.5"
    assert cli(database_url, "billing", "stripe", "price-set", "price_pack", "0").returncode == 1
    assert ok(cli(database_url, "billing", "stripe", "prices", "--json"))["prices"][0]["price_id"] == "price_pack"
    query(
        database_url,
        """INSERT INTO stripe_events (event_id, type, team_id, credits, status, detail, payload)
           VALUES ('evt_stray', 'checkout.session.completed', 'team-typo', 7.5, 'unknown_team', 'unknown', '{}')""",
    )
    waiting = ok(cli(database_url, "billing", "stripe", "events", "--status", "unknown_team", "--json"))["events"]
    assert [(e["event_id"], e["credits"]) for e in waiting] == [("evt_stray", "7.5")]
    applied = cli(database_url, "billing", "stripe", "apply", "evt_stray", "--team", "team-a", "--json")
    assert ok(applied)["granted_now"] is True
    again = cli(database_url, "billing", "stripe", "apply", "evt_stray", "--team", "team-b")
    assert again.returncode == 0
    assert "nothing changed" in again.stderr
    [account] = query(database_url, "SELECT team_id, credits_allocated FROM credit_accounts")
    assert account == {"team_id": "team-a", "credits_allocated": Decimal("7.5")}
    assert cli(database_url, "billing", "stripe", "apply", "evt_missing").returncode == 1
