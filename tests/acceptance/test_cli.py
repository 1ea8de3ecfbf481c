"""The ``litellm-jobs`` command, installed by the package, run as a user would (a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.acceptance.helpers import tag, wait_for_job
from tests.support.services import Proxy, clean_env

CLI = Path(sys.executable).with_name("litellm-jobs")


def cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**clean_env(), "JOBS_DATABASE_URL": database_url, "COLUMNS": "200"}
    return subprocess.run([str(CLI), *args], capture_output=True, text=True, env=env, timeout=120)


def cli_json(database_url: str, *args: str) -> Any:
    split = args.index("--") if "--" in args else len(args)  # options go before "--"
    done = cli(database_url, *args[:split], "--json", *args[split:])
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize(
    "args",
    [
        (),
        ("migrate",),
        ("credits",),
        ("credits", "grant"),
        ("credits", "show"),
        ("jobs",),
        ("jobs", "list"),
        ("jobs", "show"),
        ("analytics",),
        ("reconcile",),
    ],
)
def test_every_command_has_help(args: tuple[str, ...]) -> None:
    done = subprocess.run([str(CLI), *args, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Usage: litellm-jobs" in done.stdout


def test_migrate_reports_what_it_applies(database_url: str) -> None:
    first = cli(database_url, "migrate")
    assert first.returncode == 0, first.stderr
    assert "applied 0001 calls_and_jobs" in first.stdout
    assert "applied 0004 analytics_indexes" in first.stdout
    again = cli(database_url, "migrate")
    assert "(0 applied now)" in again.stdout


def test_grants_are_idempotent_and_errors_are_one_line(database_url: str) -> None:
    key = f"k-{uuid.uuid4().hex}"
    for _ in range(2):
        balance = cli_json(database_url, "credits", "grant", "team-x", "10", "--idempotency-key", key)
        assert balance["credits_allocated"] == "10.000000"
    assert cli_json(database_url, "credits", "show", "team-x")["credits_remaining"] == "10.000000"
    taken = cli_json(database_url, "credits", "grant", "team-x", "--adjust", "--", "-4")
    assert taken["credits_remaining"] == "6.000000"
    for args, message in [
        (("credits", "grant", "team-x", "0"), "positive"),
        (("credits", "grant", "team-x", "ten"), "positive"),
        (("credits", "grant", "team-x", "0.0000001"), "6 decimals"),
        (("credits", "grant", "team-x", "1e20"), "14 integer digits"),
        (("jobs", "show", "nope", "--team", "team-x"), "no job 'nope'"),
        (("credits", "show", "bad team"), "team"),
        (("jobs", "list", "--team", "team-x", "--status", "done"), "status must be one of"),
    ]:
        done = cli(database_url, *args)
        assert done.returncode == 1, args
        assert message in done.stderr
        assert "Traceback" not in done.stderr


def test_a_grant_reaches_a_running_proxy_and_its_jobs_are_listed(
    database_url: str, start_proxy: Callable[..., Proxy]
) -> None:
    proxy = start_proxy(database_url)
    oai = openai.OpenAI(base_url=proxy.url, api_key="sk-team-d", max_retries=0)
    job_id = f"cli-{uuid.uuid4().hex[:8]}"
    with pytest.raises(openai.APIStatusError) as no_credits:
        oai.chat.completions.create(
            model="ChatAgent", messages=[{"role": "user", "content": "x"}], extra_body=tag(job_id)
        )
    assert no_credits.value.status_code == 402
    # The proxy decides credits in memory (alone, no Redis): the command joins, the proxy hands over.
    assert cli_json(database_url, "credits", "grant", "team-d", "3")["credits_remaining"] == "3.000000"
    for purpose in ("extract", "summarise"):
        oai.chat.completions.create(
            model="ChatAgent", messages=[{"role": "user", "content": "x"}], extra_body=tag(job_id, purpose=purpose)
        )
    wait_for_job(proxy, job_id, calls=2, key="sk-team-d")
    jobs = cli_json(database_url, "jobs", "list", "--team", "team-d")
    assert [(j["job_id"], j["total_calls"]) for j in jobs] == [(job_id, 2)]
    shown = cli_json(database_url, "jobs", "show", job_id, "--team", "team-d")
    assert sorted(c["purpose"] for c in shown["calls"]) == ["extract", "summarise"]
    stats = cli_json(database_url, "analytics", "--team", "team-d")
    assert [(r["job_type"], r["jobs_started"], r["calls"]) for r in stats["job_types"]] == [("document_analysis", 1, 2)]
    table = cli(database_url, "jobs", "list", "--team", "team-d")
    assert job_id in table.stdout
    assert "document_analysis" in table.stdout
    balance = cli_json(database_url, "credits", "show", "team-d")
    assert balance["credits_held"] == "1.000000"


def test_without_a_database_only_migrate_creates_one(tmp_path: Path) -> None:
    env = {**clean_env(), "JOBS_DATA_DIR": str(tmp_path / "data")}
    done = subprocess.run([str(CLI), "credits", "show", "team-x"], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 1
    assert "no database" in done.stderr
    assert not (tmp_path / "data").exists()
