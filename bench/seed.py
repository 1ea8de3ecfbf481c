"""Seed a migrated jobs database with SQL (generate_series): many teams, jobs and calls, plus one
open job of team-a with many calls, so cost growth with jobs, calls per job and teams can be measured."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from .procs import TEAM, clean_env_for

BIG_JOB = "bench-big"


def migrate(url: str) -> None:
    env = clean_env_for(url)
    cli = str(Path(sys.executable).with_name("litellm-jobs"))
    subprocess.run([cli, "migrate"], env=env, check=True, capture_output=True, timeout=300)


def seed(url: str, *, jobs: int, calls_per_job: int, teams: int, big_job_calls: int) -> dict[str, Any]:
    """Insert ``jobs`` jobs over ``teams`` teams (1 % open, the rest completed and charged), each with
    ``calls_per_job`` calls and call events, a consistent ledger and accounts; and team-a's open job
    ``bench-big`` with ``big_job_calls`` calls."""
    t0 = time.monotonic()
    p = {"jobs": jobs, "cpj": calls_per_job, "teams": teams, "big": big_job_calls, "team": TEAM, "big_id": BIG_JOB}
    statements = [
        # jobs n = 1..jobs, team n % teams; every 100th job is open (holding 1 credit)
        """INSERT INTO jobs (team_id, job_id, job_type, status, created_at, updated_at, first_call_at,
               last_call_at, completed_at, total_calls, successful_calls, prompt_tokens, completion_tokens,
               total_cost_usd, total_latency_ms, models_used, credits_charged, credits_held, admitted_calls,
               last_activity_at)
           SELECT 'seed-team-' || (n %% %(teams)s), 'seed-job-' || n, 'seed-type-' || (n %% 7),
                  CASE WHEN n %% 100 = 0 THEN 'in_progress' ELSE 'completed' END,
                  now() - make_interval(secs => n), now(), now() - make_interval(secs => n), now(),
                  CASE WHEN n %% 100 = 0 THEN NULL ELSE now() END,
                  %(cpj)s, %(cpj)s, 10 * %(cpj)s, 5 * %(cpj)s, 0.0001 * %(cpj)s, 3 * %(cpj)s,
                  '{gpt-4o-mini}', CASE WHEN n %% 100 = 0 THEN 0 ELSE 1 END,
                  CASE WHEN n %% 100 = 0 THEN 1 ELSE 0 END, %(cpj)s, now()
           FROM generate_series(1, %(jobs)s) AS n""",
        """INSERT INTO jobs (team_id, job_id, job_type, status, total_calls, successful_calls, credits_held,
               admitted_calls, first_call_at, last_call_at)
           VALUES (%(team)s, %(big_id)s, 'bench', 'in_progress', %(big)s, %(big)s, 1, %(big)s, now(), now())""",
        # calls: m = 1..jobs*cpj belongs to job (m - 1) / cpj + 1
        """INSERT INTO calls (team_id, call_id, job_id, job_type, status, prompt_tokens, completion_tokens,
               cost_usd, latency_ms, model, model_group, requested_model, provider, started_at, ended_at)
           SELECT 'seed-team-' || (j %% %(teams)s), 'seed-call-' || m, 'seed-job-' || j, 'seed-type-' || (j %% 7),
                  'success', 10, 5, 0.0001, 3, 'gpt-4o-mini', 'ChatAgent', 'ChatAgent', 'openai', now(), now()
           FROM (SELECT m, (m - 1) / %(cpj)s + 1 AS j FROM generate_series(1, %(jobs)s * %(cpj)s) AS m) s""",
        """INSERT INTO calls (team_id, call_id, job_id, job_type, status, prompt_tokens, completion_tokens,
               cost_usd, latency_ms, model, model_group, requested_model, provider, started_at, ended_at)
           SELECT %(team)s, 'big-call-' || m, %(big_id)s, 'bench', 'success', 10, 5, 0.0001, 3, 'gpt-4o-mini',
                  'ChatAgent', 'ChatAgent', 'openai', now(), now()
           FROM generate_series(1, %(big)s) AS m""",
        """INSERT INTO call_events (event_id, call_id, team_id, job_id, job_type, status, started_at, ended_at)
           SELECT team_id || ':' || call_id || ':success', call_id, team_id, job_id, job_type, 'success',
                  started_at, ended_at
           FROM calls""",
        # ledger: a grant per team, a hold per job, a capture per completed job
        """INSERT INTO credit_ledger (team_id, kind, amount, idempotency_key)
           SELECT 'seed-team-' || t, 'grant', 1000000, 'seed-grant-' || t FROM generate_series(0, %(teams)s - 1) t""",
        """INSERT INTO credit_ledger (team_id, kind, amount, job_id, idempotency_key)
           SELECT team_id, 'hold', 1, job_id, 'hold:' || length(team_id) || ':' || team_id || ':' || job_id
           FROM jobs""",
        """INSERT INTO credit_ledger (team_id, kind, amount, job_id, idempotency_key)
           SELECT team_id, 'capture', 1, job_id, 'capture:' || length(team_id) || ':' || team_id || ':' || job_id
           FROM jobs WHERE status = 'completed'""",
        """INSERT INTO credit_accounts (team_id, credits_allocated, credits_charged, credits_held)
           SELECT team_id,
                  coalesce(sum(amount) FILTER (WHERE kind = 'grant'), 0),
                  coalesce(sum(amount) FILTER (WHERE kind = 'capture'), 0),
                  coalesce(sum(amount) FILTER (WHERE kind = 'hold'), 0)
                    - coalesce(sum(amount) FILTER (WHERE kind = 'capture'), 0)
           FROM credit_ledger GROUP BY team_id""",
    ]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET search_path TO litellm_jobs")
        for sql in statements:
            conn.execute(sql, p)
        conn.execute("ANALYZE")
        counts: dict[str, int] = {}
        for t in ("jobs", "calls", "call_events", "credit_ledger", "credit_accounts"):
            row = conn.execute(f"SELECT count(*) FROM {t}").fetchone()
            counts[t] = int(row[0]) if row else 0
    return {"seconds": round(time.monotonic() - t0, 1), **counts}


def explain_refresh(url: str, team: str, job_id: str) -> float:
    """Execution time (ms) of the writer's aggregate refresh for one job, as EXPLAIN ANALYZE reports
    it (in a rolled-back transaction): the database-side cost of recording a call of that job."""
    sql_file = Path(__file__).resolve().parents[1] / "src/litellm_jobs_plugin/store/queries.sql"
    text = sql_file.read_text()
    block = text.split("-- name: refresh_job_aggregates", 1)[1].split("-- name:", 1)[0]
    query = "\n".join(line for line in block.splitlines() if not line.strip().startswith("--")).strip().rstrip(";")
    with psycopg.connect(url) as conn:
        conn.execute("SET search_path TO litellm_jobs")
        rows = conn.execute(
            "EXPLAIN (ANALYZE, FORMAT JSON) " + query,
            {"team_ids": [team], "job_ids": [job_id]},
        ).fetchone()
        conn.rollback()
    assert rows is not None
    return float(rows[0][0]["Execution Time"])
