"""The ``litellm-jobs`` command, installed by the package, run as a user would (a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.acceptance.helpers import tag, wait_for_job
from tests.conftest import query
from tests.support.services import Fleet, Proxy, clean_env

CLI = Path(sys.executable).with_name("litellm-jobs")


def cli(database_url: str, *args: str, proxy: Proxy | Fleet | None = None) -> subprocess.CompletedProcess[str]:
    """The command on ``database_url``; with the settings that say where ``proxy`` decides credits, as
    docs/cli.md asks (its JOBS_REDIS_URL and JOBS_REDIS_PREFIX, when it decides in Redis)."""
    env = {**clean_env(), "JOBS_DATABASE_URL": database_url, "COLUMNS": "200"}
    if proxy is not None:
        env |= {k: v for k, v in proxy.replicas[0].env.items() if k.startswith("JOBS_REDIS_")}
    return subprocess.run([str(CLI), *args], capture_output=True, text=True, env=env, timeout=120)


def cli80(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """As a user at an 80-column terminal, without XDG_RUNTIME_DIR (a container, cron, sudo)."""
    env = {k: v for k, v in clean_env().items() if k != "XDG_RUNTIME_DIR"}
    env.update(JOBS_DATABASE_URL=database_url, COLUMNS="80")
    return subprocess.run([str(CLI), *args], capture_output=True, text=True, env=env, timeout=120)


def cli_json(database_url: str, *args: str, proxy: Proxy | Fleet | None = None) -> Any:
    split = args.index("--") if "--" in args else len(args)  # options go before "--"
    done = cli(database_url, *args[:split], "--json", *args[split:], proxy=proxy)
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
        ("teams",),
        ("teams", "policy"),
        ("teams", "policy", "show"),
        ("teams", "policy", "set"),
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
        assert balance["credits_allocated"] == "10"
    assert cli_json(database_url, "credits", "show", "team-x")["credits_remaining"] == "10"
    taken = cli_json(database_url, "credits", "grant", "team-x", "--adjust", "--", "-4")
    assert taken["credits_remaining"] == "6"
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
    # A proxy alone without Redis decides credits in memory: the command joins, the proxy hands over. Proxies
    # that decide in PostgreSQL read it there; in Redis, the command applies the grant there too.
    assert cli_json(database_url, "credits", "grant", "team-d", "3", proxy=proxy)["credits_remaining"] == "3"
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
    balance = cli_json(database_url, "credits", "show", "team-d", proxy=proxy)
    assert balance["credits_held"] == "1"


def test_without_a_database_only_migrate_creates_one(tmp_path: Path) -> None:
    env = {**clean_env(), "JOBS_DATA_DIR": str(tmp_path / "data")}
    done = subprocess.run([str(CLI), "credits", "show", "team-x"], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 1
    assert "no database" in done.stderr
    assert not (tmp_path / "data").exists()


def test_grants_say_what_happened_in_plain_words(database_url: str) -> None:
    first = cli80(database_url, "credits", "grant", "team-p", "10", "--idempotency-key", "once")
    assert first.returncode == 0, first.stderr
    assert "granted 10 credits to team team-p" in first.stderr
    assert "PostgreSQL" in first.stderr
    assert "decided in" not in first.stderr
    assert "(shared)" not in first.stderr
    assert "in-process" not in first.stderr
    again = cli80(database_url, "credits", "grant", "team-p", "10", "--idempotency-key", "once")
    assert again.returncode == 0, again.stderr
    assert "already applied — nothing changed" in again.stderr
    assert cli_json(database_url, "credits", "show", "team-p")["credits_remaining"] == "10"

    unseen = cli80(database_url, "credits", "show", "no-such-team")
    assert unseen.returncode == 0
    assert "team 'no-such-team' was never seen" in unseen.stderr
    seen = cli80(database_url, "credits", "show", "team-p")
    assert "never seen" not in seen.stderr
    assert "failure allowance: 0 of 5 USD used in the last 1 d" in seen.stdout
    for done in (first, again, unseen, seen):
        assert "XDG_RUNTIME_DIR" not in done.stderr


def test_tables_fit_80_columns_without_cutting_ids_or_statuses(database_url: str) -> None:
    assert cli(database_url, "migrate").returncode == 0
    ids = [f"batch-2024-06-01-document-analysis-{i:04d}" for i in range(1, 56)]
    for i, job_id in enumerate(ids, start=1):
        query(
            database_url,
            "INSERT INTO jobs (team_id, job_id, job_type, status, total_calls, total_cost_usd, credits_charged,"
            " created_at) VALUES ('team-w', %s, 'document_analysis', %s, 3, %s, 1, now() - %s * interval '1 minute')",
            job_id,
            "in_progress" if i % 2 else "completed",
            f"0.0000{i:02d}399999999999999",
            i,
        )
    page = cli80(database_url, "jobs", "list", "--team", "team-w")
    assert page.returncode == 0, page.stderr
    lines = page.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "…" not in page.stdout
    for job_id in ids[:50]:
        assert any(job_id in line and ("in_progress" in line or "completed" in line) for line in lines), job_id
    assert ids[50] not in page.stdout
    assert "0.00000139" not in page.stdout  # 4 significant digits, plain notation
    assert "0.000001" + "4" in page.stdout
    assert "e-" not in page.stdout
    assert "not shown: calls, type" in page.stdout
    # A full page names the next one; the last page does not.
    hint = [line for line in page.stderr.splitlines() if line.startswith("more rows: --cursor ")]
    assert len(hint) == 1
    rest = cli80(database_url, "jobs", "list", "--team", "team-w", "--cursor", hint[0].split()[-1])
    assert rest.returncode == 0, rest.stderr
    assert [j for j in ids if j in rest.stdout] == ids[50:]
    assert "more rows" not in rest.stderr
    assert "XDG_RUNTIME_DIR" not in page.stderr + rest.stderr

    wide = cli80(database_url, "jobs", "list", "--team", "team-w", "--wide", "--limit", "3")
    assert "document_analysis" in wide.stdout
    assert "…" not in wide.stdout

    stats = cli80(database_url, "analytics", "--team", "team-w")
    assert stats.returncode == 0, stats.stderr
    assert max(len(line) for line in stats.stdout.splitlines()) <= 80
    assert "…" not in stats.stdout
    for header in ("type", "jobs", "success", "cost", "per job", "credits", "calls/job"):
        assert f" {header} " in stats.stdout + " ", header
    assert "document_analysis" in stats.stdout
    assert "e-" not in stats.stdout
    shown = cli_json(database_url, "jobs", "show", ids[0], "--team", "team-w")
    assert shown["job"]["total_cost_usd"] == "0.000001399999999999999"  # --json: exact, plain


def test_team_policy_set_and_show(database_url: str) -> None:
    cli_json(database_url, "credits", "grant", "team-q", "5")
    shown = cli_json(database_url, "teams", "policy", "show", "team-q")
    assert shown["job_prices"] == {}
    assert shown["allowed_job_types"] is None
    assert shown["failure_allowance"]["limit_usd"] == "5"

    policy = cli_json(
        database_url,
        "teams", "policy", "set", "team-q",
        "--price", "chat=2", "--price", "summary=0.5",
        "--allow", "chat", "--allow", "summary",
        "--failure-allowance-usd", "0.25",
    )  # fmt: skip
    assert policy["job_prices"] == {"chat": "2", "summary": "0.5"}
    assert policy["allowed_job_types"] == ["chat", "summary"]
    assert policy["failure_allowance_usd"] == "0.25"
    assert policy["failure_allowance"]["limit_usd"] == "0.25"

    # Only the fields given change.
    policy = cli_json(database_url, "teams", "policy", "set", "team-q", "--price", "chat=3")
    assert policy["job_prices"] == {"chat": "3", "summary": "0.5"}
    assert policy["allowed_job_types"] == ["chat", "summary"]
    assert policy["failure_allowance_usd"] == "0.25"
    policy = cli_json(
        database_url,
        "teams",
        "policy",
        "set",
        "team-q",
        "--allow-any",
        "--default-allowance",
        "--price",
        "chat=default",
    )
    assert policy["job_prices"] == {"summary": "0.5"}
    assert policy["allowed_job_types"] is None
    assert policy["failure_allowance_usd"] is None

    table = cli80(database_url, "teams", "policy", "show", "team-q")
    assert "summary=0.5" in table.stdout
    assert "failure allowance: 0 of 5 USD used in the last 1 d" in table.stdout

    before = cli_json(database_url, "teams", "policy", "show", "team-q")
    for args, message in [
        (("--price", "chat=NaN"), "finite"),
        (("--price", "chat=-1"), "must be 0 to 10^12 credits"),
        (("--price", "chat=0.0000001"), "at most 6 decimals"),
        (("--price", "chat"), "TYPE=CREDITS"),
        (("--allow", "a b"), "allowed_job_types"),
        (("--failure-allowance-usd", "NaN"), "failure_allowance_usd"),
        (("--failure-allowance-usd", "-1"), "failure_allowance_usd"),
        (("--allow", "chat", "--allow-any"), "exclude each other"),
        ((), "nothing to set"),
    ]:
        done = cli80(database_url, "teams", "policy", "set", "team-q", *args)
        assert done.returncode == 1, (args, done.stdout)
        assert message in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr
    assert cli_json(database_url, "teams", "policy", "show", "team-q") == before


def test_a_policy_set_by_the_cli_reaches_a_running_proxy(database_url: str, start_proxy: Callable[..., Proxy]) -> None:
    proxy = start_proxy(database_url, env={"JOBS_POLICY_REFRESH_S": "1"})
    cli_json(database_url, "credits", "grant", "team-d", "5", proxy=proxy)
    oai = openai.OpenAI(base_url=proxy.url, api_key="sk-team-d", max_retries=0)
    oai.chat.completions.create(
        model="ChatAgent", messages=[{"role": "user", "content": "x"}], extra_body=tag(f"p-{uuid.uuid4().hex[:8]}")
    )
    cli_json(database_url, "teams", "policy", "set", "team-d", "--allow", "summary")
    deadline = time.monotonic() + 15
    while True:
        try:
            oai.chat.completions.create(
                model="ChatAgent",
                messages=[{"role": "user", "content": "x"}],
                extra_body=tag(f"p-{uuid.uuid4().hex[:8]}"),
            )
        except openai.APIStatusError as exc:
            refused = exc.status_code
            break
        assert time.monotonic() < deadline, "the proxy still admits a job type the CLI disallowed"
        time.sleep(0.5)
    assert refused in (400, 403)
