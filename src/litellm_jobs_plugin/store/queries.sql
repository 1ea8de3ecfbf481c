-- All SQL of the plugin, one named block each ("-- name: verb_noun"), loaded by store/sql.py.
-- Tables are found through the connection's search_path (JOBS_DB_SCHEMA), never by formatting.

-- name: lock_jobs
-- Serialises writers of the same job: after this lock, the aggregate query below sees every
-- other writer's committed calls (READ COMMITTED takes a new snapshot per statement).
SELECT j.team_id, j.job_id
FROM jobs j
JOIN unnest(%(team_ids)s::text[], %(job_ids)s::text[]) AS t(team_id, job_id)
  ON j.team_id = t.team_id AND j.job_id = t.job_id
ORDER BY j.team_id, j.job_id
FOR UPDATE OF j;

-- name: refresh_job_aggregates
-- Job aggregates recomputed from the jobs' call rows (the caller holds the job locks): migration 0005.
SELECT recompute_job_aggregates(%(team_ids)s::text[], %(job_ids)s::text[]) AS refreshed;

-- name: record_batch
-- The writer's batch (call events, ledger entries, closures) in one statement: migration 0005.
-- Sent by asyncpg (store/postgres.py BatchConnection): a positional parameter.
SELECT record_batch($1::jsonb);

-- name: get_job
SELECT team_id, job_id, job_type, status, single_call, metadata, user_id, created_at, updated_at,
       first_call_at, last_call_at, completed_at, last_activity_at, total_calls, successful_calls,
       failed_calls, prompt_tokens, completion_tokens, total_cost_usd, total_latency_ms, models_used,
       max_calls, max_cost_usd, admitted_calls, credits_held, credits_charged, result, error_message
FROM jobs
WHERE team_id = %(team_id)s AND job_id = %(job_id)s;

-- name: list_job_calls
SELECT call_id, team_id, job_id, job_type, key_hash, user_id, call_type, requested_model,
       model_group, model, model_id, provider, status, prompt_tokens, completion_tokens,
       cost_usd, cache_hit, stream, latency_ms, error_type, error_code, attempts,
       failed_attempts, started_at, ended_at, recorded_at, purpose
FROM calls
WHERE team_id = %(team_id)s AND job_id = %(job_id)s
ORDER BY started_at, call_id;

-- name: ping
SELECT 1 AS ok;

-- name: lock_migrations
SELECT pg_advisory_lock(%(key)s);

-- name: unlock_migrations
SELECT pg_advisory_unlock(%(key)s);

-- name: create_migrations_table
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: list_migrations
SELECT version, checksum FROM schema_migrations ORDER BY version;

-- name: record_migration
INSERT INTO schema_migrations (version, name, checksum) VALUES (%(version)s, %(name)s, %(checksum)s);

-- name: list_jobs
-- Newest first; the cursor is the (created_at, job_id) of the last row of the previous page.
SELECT team_id, job_id, job_type, status, single_call, metadata, user_id, created_at, updated_at,
       first_call_at, last_call_at, completed_at, last_activity_at, total_calls, successful_calls,
       failed_calls, prompt_tokens, completion_tokens, total_cost_usd, total_latency_ms, models_used,
       max_calls, max_cost_usd, admitted_calls, credits_held, credits_charged, result, error_message
FROM jobs
WHERE team_id = %(team_id)s
  AND (%(status)s::text IS NULL OR status = %(status)s)
  AND (%(job_type)s::text IS NULL OR job_type = %(job_type)s)
  AND (%(since)s::timestamptz IS NULL OR created_at >= %(since)s)
  AND (%(until)s::timestamptz IS NULL OR created_at < %(until)s)
  AND (%(cursor_at)s::timestamptz IS NULL OR (created_at, job_id) < (%(cursor_at)s, %(cursor_id)s))
ORDER BY created_at DESC, job_id DESC
LIMIT %(limit)s;

-- name: count_job_calls
SELECT count(*)::integer AS n FROM calls WHERE team_id = %(team_id)s AND job_id = %(job_id)s;

-- name: apply_ledger
-- Appends ledger entries and moves the cached balances by exactly the new ones: migration 0005.
SELECT entry_id, team_id, kind FROM apply_ledger_entries(%(entries)s::jsonb);

-- name: get_balance
SELECT team_id, credits_allocated, credits_remaining, credits_held, credits_charged
FROM credit_accounts WHERE team_id = %(team_id)s;

-- name: ensure_account
INSERT INTO credit_accounts (team_id) VALUES (%(team_id)s) ON CONFLICT (team_id) DO NOTHING;

-- name: lock_account
-- Serialises every balance decision of one team (PostgreSQL mode and grants).
SELECT team_id, credits_allocated, credits_remaining, credits_held, credits_charged
FROM credit_accounts WHERE team_id = %(team_id)s FOR UPDATE;

-- name: ledger_totals
SELECT team_id,
       coalesce(sum(amount) FILTER (WHERE kind IN ('grant', 'adjust')), 0) AS allocated,
       coalesce(sum(amount) FILTER (WHERE kind = 'capture'), 0) AS charged,
       coalesce(sum(amount) FILTER (WHERE kind = 'hold'), 0)
         - coalesce(sum(amount) FILTER (WHERE kind IN ('capture', 'release')), 0) AS held
FROM credit_ledger GROUP BY team_id;

-- name: lock_job
SELECT team_id, job_id, job_type, status, single_call, max_calls, max_cost_usd, admitted_calls,
       total_cost_usd, credits_held, last_activity_at
FROM jobs WHERE team_id = %(team_id)s AND job_id = %(job_id)s FOR UPDATE;

-- name: insert_job
INSERT INTO jobs (team_id, job_id, job_type, status, single_call, metadata, user_id, max_calls,
                  max_cost_usd, admitted_calls)
VALUES (%(team_id)s, %(job_id)s, %(job_type)s, %(status)s, %(single_call)s, %(metadata)s::jsonb,
        %(user_id)s, %(max_calls)s, %(max_cost_usd)s, %(admitted_calls)s)
ON CONFLICT (team_id, job_id) DO NOTHING
RETURNING job_id, created_at;

-- name: touch_job
UPDATE jobs SET
    admitted_calls = admitted_calls + %(calls)s,
    status = CASE WHEN status = 'pending' AND %(calls)s > 0 THEN 'in_progress' ELSE status END,
    last_activity_at = now()
WHERE team_id = %(team_id)s AND job_id = %(job_id)s
RETURNING status;

-- name: close_job_row
-- Closes a job in PostgreSQL (creating the row if no event of it was written yet). A closed job
-- is never reopened.
INSERT INTO jobs AS j (team_id, job_id, job_type, status, single_call, completed_at, result, error_message)
VALUES (%(team_id)s, %(job_id)s, %(job_type)s, %(status)s, %(single_call)s, now(), %(result)s::jsonb,
        %(error_message)s)
ON CONFLICT (team_id, job_id) DO UPDATE SET
    status = EXCLUDED.status,
    completed_at = EXCLUDED.completed_at,
    result = coalesce(EXCLUDED.result, j.result),
    error_message = coalesce(EXCLUDED.error_message, j.error_message),
    updated_at = now()
WHERE j.status IN ('pending', 'in_progress')
RETURNING status, completed_at;

-- name: idle_jobs
SELECT team_id, job_id FROM jobs
WHERE status IN ('pending', 'in_progress') AND last_activity_at < now() - make_interval(secs => %(idle_s)s)
ORDER BY last_activity_at
LIMIT %(limit)s;

-- name: account_snapshot
-- One consistent view of an account for loading it into Redis: balances and every grant included.
SELECT a.team_id, a.credits_remaining, a.credits_held,
       coalesce((SELECT array_agg(l.entry_id ORDER BY l.entry_id) FROM credit_ledger l
                 WHERE l.team_id = a.team_id AND l.kind IN ('grant', 'adjust')), '{}') AS grant_ids
FROM credit_accounts a
WHERE (%(team_id)s::text IS NULL OR a.team_id = %(team_id)s);

-- name: ledger_entry_id
SELECT entry_id FROM credit_ledger WHERE idempotency_key = %(key)s;

-- name: job_idle_for
SELECT last_activity_at < now() - make_interval(secs => %(idle_s)s) AS idle
FROM jobs WHERE team_id = %(team_id)s AND job_id = %(job_id)s;

-- name: set_job_outcome
UPDATE jobs SET result = coalesce(%(result)s::jsonb, result),
                error_message = coalesce(%(error_message)s, error_message),
                metadata = metadata || coalesce(%(metadata)s::jsonb, '{}'::jsonb), updated_at = now()
WHERE team_id = %(team_id)s AND job_id = %(job_id)s;

-- name: authority_try_exclusive
SELECT pg_try_advisory_lock(%(key)s);

-- name: authority_shared
SELECT pg_advisory_lock_shared(%(key)s);

-- name: authority_unlock
SELECT pg_advisory_unlock(%(key)s);

-- name: authority_waiters
-- Processes waiting for the credits authority lock (a bigint key shows as classid<<32 | objid).
-- Advisory locks belong to one database: pg_locks shows the whole server's.
SELECT count(*) FROM pg_locks
WHERE locktype = 'advisory' AND NOT granted AND objsubid = 1
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND ((classid::bigint << 32) | objid::bigint) = %(key)s;

-- name: open_jobs
-- With the idempotency key of each job's hold: its suffix is the opening (incarnation) the
-- job's closing entries must name.
SELECT j.team_id, j.job_id, j.job_type, j.status, j.credits_held, j.admitted_calls, j.max_calls,
       j.max_cost_usd, j.total_cost_usd, j.last_activity_at, h.idempotency_key AS hold_key
FROM jobs j
LEFT JOIN LATERAL (
    SELECT l.idempotency_key FROM credit_ledger l
    WHERE l.team_id = j.team_id AND l.job_id = j.job_id AND l.kind = 'hold'
    ORDER BY l.entry_id DESC LIMIT 1
) h ON true
WHERE j.status IN ('pending', 'in_progress');

-- name: sync_open_jobs
-- Hands in-process job counters to PostgreSQL when an in-process replica demotes itself.
UPDATE jobs j SET admitted_calls = greatest(j.admitted_calls, t.calls), last_activity_at = now()
FROM unnest(%(team_ids)s::text[], %(job_ids)s::text[], %(calls)s::integer[]) AS t(team_id, job_id, calls)
WHERE j.team_id = t.team_id AND j.job_id = t.job_id;

-- name: job_type_stats
-- Per job type, over the jobs created in [since, until): one team's (team_id set) or every team's.
-- Costs per job are the jobs' own aggregates (sums over their call rows); the average and the
-- percentiles are over closed jobs (an open job's cost is not final) and discrete (an actual
-- job's cost), so they are exact numerics.
SELECT job_type,
       count(*)::integer AS jobs_started,
       count(*) FILTER (WHERE status = 'completed')::integer AS completed,
       count(*) FILTER (WHERE status = 'failed')::integer AS failed,
       count(*) FILTER (WHERE status = 'expired')::integer AS expired,
       count(*) FILTER (WHERE status IN ('pending', 'in_progress'))::integer AS open,
       round(count(*) FILTER (WHERE status = 'completed')::numeric
             / nullif(count(*) FILTER (WHERE status IN ('completed', 'failed', 'expired')), 0), 4) AS success_rate,
       coalesce(sum(total_calls), 0)::bigint AS calls,
       coalesce(sum(failed_calls), 0)::bigint AS failed_calls,
       round(avg(total_calls), 4) AS calls_per_job,
       coalesce(sum(prompt_tokens), 0)::bigint AS prompt_tokens,
       coalesce(sum(completion_tokens), 0)::bigint AS completion_tokens,
       coalesce(sum(total_cost_usd), 0) AS cost_total_usd,
       round(avg(total_cost_usd) FILTER (WHERE status IN ('completed', 'failed', 'expired')), 12) AS cost_avg_usd,
       percentile_disc(0.5) WITHIN GROUP (ORDER BY total_cost_usd)
           FILTER (WHERE status IN ('completed', 'failed', 'expired')) AS cost_p50_usd,
       percentile_disc(0.95) WITHIN GROUP (ORDER BY total_cost_usd)
           FILTER (WHERE status IN ('completed', 'failed', 'expired')) AS cost_p95_usd,
       coalesce(sum(credits_charged), 0) AS credits_charged,
       coalesce(sum(total_cost_usd) FILTER (WHERE status IN ('failed', 'expired')), 0) AS failed_jobs_cost_usd
FROM jobs
WHERE (%(team_id)s::text IS NULL OR team_id = %(team_id)s)
  AND (%(since)s::timestamptz IS NULL OR created_at >= %(since)s)
  AND (%(until)s::timestamptz IS NULL OR created_at < %(until)s)
GROUP BY job_type
ORDER BY job_type;

-- name: job_type_series
-- Jobs per job type and time bucket (UTC): the dashboard's charts.
SELECT job_type,
       date_trunc(%(bucket)s, created_at, 'UTC') AS bucket,
       count(*)::integer AS jobs,
       count(*) FILTER (WHERE status = 'completed')::integer AS completed,
       count(*) FILTER (WHERE status IN ('failed', 'expired'))::integer AS unsuccessful,
       coalesce(sum(total_cost_usd), 0) AS cost_total_usd
FROM jobs
WHERE (%(team_id)s::text IS NULL OR team_id = %(team_id)s)
  AND (%(since)s::timestamptz IS NULL OR created_at >= %(since)s)
  AND (%(until)s::timestamptz IS NULL OR created_at < %(until)s)
GROUP BY job_type, bucket
ORDER BY job_type, bucket;

-- name: team_summaries
-- Per team: its balances now, the credits granted and charged in [since, until) from the ledger,
-- and its jobs created in [since, until) by status, with their calls, tokens and cost.
WITH teams AS (
    SELECT team_id FROM credit_accounts WHERE %(team_id)s::text IS NULL OR team_id = %(team_id)s
    UNION
    -- A team whose hold is still in the writer's buffer (Redis mode) has jobs but no account yet.
    SELECT DISTINCT team_id FROM jobs
    WHERE (%(team_id)s::text IS NULL OR team_id = %(team_id)s)
      AND (%(since)s::timestamptz IS NULL OR created_at >= %(since)s)
      AND (%(until)s::timestamptz IS NULL OR created_at < %(until)s)
), ledger AS (
    SELECT team_id,
           coalesce(sum(amount) FILTER (WHERE kind IN ('grant', 'adjust')), 0) AS granted,
           coalesce(sum(amount) FILTER (WHERE kind = 'capture'), 0) AS charged
    FROM credit_ledger
    WHERE (%(team_id)s::text IS NULL OR team_id = %(team_id)s)
      AND (%(since)s::timestamptz IS NULL OR created_at >= %(since)s)
      AND (%(until)s::timestamptz IS NULL OR created_at < %(until)s)
    GROUP BY team_id
), job_totals AS (
    SELECT team_id,
           count(*)::integer AS jobs,
           count(*) FILTER (WHERE status = 'pending')::integer AS pending,
           count(*) FILTER (WHERE status = 'in_progress')::integer AS in_progress,
           count(*) FILTER (WHERE status = 'completed')::integer AS completed,
           count(*) FILTER (WHERE status = 'failed')::integer AS failed,
           count(*) FILTER (WHERE status = 'expired')::integer AS expired,
           coalesce(sum(total_calls), 0)::bigint AS calls,
           coalesce(sum(prompt_tokens), 0)::bigint AS prompt_tokens,
           coalesce(sum(completion_tokens), 0)::bigint AS completion_tokens,
           coalesce(sum(total_cost_usd), 0) AS cost_total_usd
    FROM jobs
    WHERE (%(team_id)s::text IS NULL OR team_id = %(team_id)s)
      AND (%(since)s::timestamptz IS NULL OR created_at >= %(since)s)
      AND (%(until)s::timestamptz IS NULL OR created_at < %(until)s)
    GROUP BY team_id
)
SELECT t.team_id,
       coalesce(a.credits_allocated, 0) AS credits_allocated,
       coalesce(a.credits_remaining, 0) AS credits_remaining,
       coalesce(a.credits_held, 0) AS credits_held,
       coalesce(a.credits_charged, 0) AS credits_charged_total,
       coalesce(l.granted, 0) AS credits_granted,
       coalesce(l.charged, 0) AS credits_charged,
       coalesce(j.jobs, 0) AS jobs, coalesce(j.pending, 0) AS pending,
       coalesce(j.in_progress, 0) AS in_progress, coalesce(j.completed, 0) AS completed,
       coalesce(j.failed, 0) AS failed, coalesce(j.expired, 0) AS expired,
       coalesce(j.calls, 0) AS calls, coalesce(j.prompt_tokens, 0) AS prompt_tokens,
       coalesce(j.completion_tokens, 0) AS completion_tokens, coalesce(j.cost_total_usd, 0) AS cost_total_usd
FROM teams t
LEFT JOIN credit_accounts a ON a.team_id = t.team_id
LEFT JOIN ledger l ON l.team_id = t.team_id
LEFT JOIN job_totals j ON j.team_id = t.team_id
ORDER BY t.team_id;

-- name: reconcile_job_aggregates
-- Reconciliation (litellm-jobs reconcile): jobs whose aggregates differ from the sums over their
-- call rows, computed as refresh_job_aggregates computes them (a job without calls has the
-- aggregates of none). One statement, so one snapshot: a writer's batch is seen whole or not at all.
-- drifting counts every such job; the rows are the first %(limit)s by (team_id, job_id).
WITH recomputed AS (
    SELECT c.team_id, c.job_id,
           count(*)::integer AS total_calls,
           (count(*) FILTER (WHERE c.status = 'success'))::integer AS successful_calls,
           (count(*) FILTER (WHERE c.status = 'failure'))::integer AS failed_calls,
           coalesce(sum(c.prompt_tokens), 0)::bigint AS prompt_tokens,
           coalesce(sum(c.completion_tokens), 0)::bigint AS completion_tokens,
           coalesce(sum(c.cost_usd), 0) AS total_cost_usd,
           coalesce(sum(c.latency_ms), 0)::bigint AS total_latency_ms,
           coalesce(array_agg(DISTINCT c.model ORDER BY c.model)
                    FILTER (WHERE c.model IS NOT NULL), '{}') AS models_used,
           min(c.started_at) AS first_call_at,
           max(c.ended_at) AS last_call_at
    FROM calls c
    WHERE c.job_id IS NOT NULL AND (%(team_id)s::text IS NULL OR c.team_id = %(team_id)s)
    GROUP BY c.team_id, c.job_id
), compared AS (
    SELECT j.team_id, j.job_id,
           j.total_calls, coalesce(r.total_calls, 0) AS expected_total_calls,
           j.successful_calls, coalesce(r.successful_calls, 0) AS expected_successful_calls,
           j.failed_calls, coalesce(r.failed_calls, 0) AS expected_failed_calls,
           j.prompt_tokens, coalesce(r.prompt_tokens, 0) AS expected_prompt_tokens,
           j.completion_tokens, coalesce(r.completion_tokens, 0) AS expected_completion_tokens,
           j.total_cost_usd, coalesce(r.total_cost_usd, 0) AS expected_total_cost_usd,
           j.total_latency_ms, coalesce(r.total_latency_ms, 0) AS expected_total_latency_ms,
           j.models_used, coalesce(r.models_used, '{}') AS expected_models_used,
           j.first_call_at, r.first_call_at AS expected_first_call_at,
           j.last_call_at, r.last_call_at AS expected_last_call_at
    FROM jobs j
    LEFT JOIN recomputed r ON r.team_id = j.team_id AND r.job_id = j.job_id
    WHERE %(team_id)s::text IS NULL OR j.team_id = %(team_id)s
)
SELECT *, count(*) OVER () AS drifting
FROM compared
WHERE (total_calls, successful_calls, failed_calls, prompt_tokens, completion_tokens, total_cost_usd,
       total_latency_ms, models_used, first_call_at, last_call_at)
      IS DISTINCT FROM
      (expected_total_calls, expected_successful_calls, expected_failed_calls, expected_prompt_tokens,
       expected_completion_tokens, expected_total_cost_usd, expected_total_latency_ms, expected_models_used,
       expected_first_call_at, expected_last_call_at)
ORDER BY team_id, job_id
LIMIT %(limit)s;

-- name: reconcile_job_credits
-- Jobs whose credits_held / credits_charged differ from their ledger entries (the effects of
-- apply_ledger: a hold adds to held, a capture moves it to charged, a release gives it back).
WITH ledger AS (
    SELECT team_id, job_id,
           coalesce(sum(amount) FILTER (WHERE kind = 'hold'), 0)
             - coalesce(sum(amount) FILTER (WHERE kind IN ('capture', 'release')), 0) AS held,
           coalesce(sum(amount) FILTER (WHERE kind = 'capture'), 0) AS charged
    FROM credit_ledger
    WHERE job_id IS NOT NULL AND (%(team_id)s::text IS NULL OR team_id = %(team_id)s)
    GROUP BY team_id, job_id
), compared AS (
    SELECT j.team_id, j.job_id,
           j.credits_held, coalesce(l.held, 0) AS expected_credits_held,
           j.credits_charged, coalesce(l.charged, 0) AS expected_credits_charged
    FROM jobs j
    LEFT JOIN ledger l ON l.team_id = j.team_id AND l.job_id = j.job_id
    WHERE %(team_id)s::text IS NULL OR j.team_id = %(team_id)s
)
SELECT *, count(*) OVER () AS drifting
FROM compared
WHERE (credits_held, credits_charged) IS DISTINCT FROM (expected_credits_held, expected_credits_charged)
ORDER BY team_id, job_id
LIMIT %(limit)s;

-- name: reconcile_team_balances
-- Accounts whose balances differ from the sums over the team's ledger (as ledger_totals), and
-- teams with ledger entries but no account row (account_exists false, stored values null).
WITH ledger AS (
    SELECT team_id,
           coalesce(sum(amount) FILTER (WHERE kind IN ('grant', 'adjust')), 0) AS allocated,
           coalesce(sum(amount) FILTER (WHERE kind = 'capture'), 0) AS charged,
           coalesce(sum(amount) FILTER (WHERE kind = 'hold'), 0)
             - coalesce(sum(amount) FILTER (WHERE kind IN ('capture', 'release')), 0) AS held
    FROM credit_ledger
    WHERE %(team_id)s::text IS NULL OR team_id = %(team_id)s
    GROUP BY team_id
), accounts AS (
    SELECT team_id, credits_allocated, credits_charged, credits_held
    FROM credit_accounts
    WHERE %(team_id)s::text IS NULL OR team_id = %(team_id)s
), compared AS (
    SELECT coalesce(a.team_id, l.team_id) AS team_id,
           a.team_id IS NOT NULL AS account_exists,
           a.credits_allocated, coalesce(l.allocated, 0) AS expected_credits_allocated,
           a.credits_charged, coalesce(l.charged, 0) AS expected_credits_charged,
           a.credits_held, coalesce(l.held, 0) AS expected_credits_held
    FROM accounts a
    FULL JOIN ledger l ON l.team_id = a.team_id
)
SELECT *, count(*) OVER () AS drifting
FROM compared
WHERE NOT account_exists
   OR (credits_allocated, credits_charged, credits_held)
      IS DISTINCT FROM (expected_credits_allocated, expected_credits_charged, expected_credits_held)
ORDER BY team_id
LIMIT %(limit)s;

-- name: reconcile_try_lock
-- Only one drift check at a time across replicas; released when the check's transaction ends.
SELECT pg_try_advisory_xact_lock(%(key)s) AS locked;

-- name: reconcile_clear_job_aggregates
-- The aggregates of jobs (locked by lock_jobs) that have no call rows: refresh_job_aggregates
-- only updates jobs that have some.
UPDATE jobs j SET
    total_calls = 0,
    successful_calls = 0,
    failed_calls = 0,
    prompt_tokens = 0,
    completion_tokens = 0,
    total_cost_usd = 0,
    total_latency_ms = 0,
    models_used = '{}',
    first_call_at = NULL,
    last_call_at = NULL,
    updated_at = now()
FROM unnest(%(team_ids)s::text[], %(job_ids)s::text[]) AS t(team_id, job_id)
WHERE j.team_id = t.team_id AND j.job_id = t.job_id
  AND NOT EXISTS (SELECT 1 FROM calls c WHERE c.team_id = j.team_id AND c.job_id = j.job_id)
  AND (j.total_calls, j.successful_calls, j.failed_calls, j.prompt_tokens, j.completion_tokens,
       j.total_cost_usd, j.total_latency_ms, j.models_used, j.first_call_at, j.last_call_at)
      IS DISTINCT FROM (0, 0, 0, 0::bigint, 0::bigint, 0::numeric, 0::bigint, '{}'::text[],
                        NULL::timestamptz, NULL::timestamptz)
RETURNING j.team_id, j.job_id;

-- name: reconcile_fix_job_credits
-- Sets the credits of jobs (locked by lock_jobs) to the sums over their ledger entries; writers
-- append a job's entries only under its row lock, so the sums are final while it is held.
UPDATE jobs j SET
    credits_held = l.held,
    credits_charged = l.charged,
    updated_at = now()
FROM (
    SELECT t.team_id, t.job_id,
           coalesce(sum(e.amount) FILTER (WHERE e.kind = 'hold'), 0)
             - coalesce(sum(e.amount) FILTER (WHERE e.kind IN ('capture', 'release')), 0) AS held,
           coalesce(sum(e.amount) FILTER (WHERE e.kind = 'capture'), 0) AS charged
    FROM unnest(%(team_ids)s::text[], %(job_ids)s::text[]) AS t(team_id, job_id)
    LEFT JOIN credit_ledger e ON e.team_id = t.team_id AND e.job_id = t.job_id
    GROUP BY t.team_id, t.job_id
) l
WHERE j.team_id = l.team_id AND j.job_id = l.job_id
  AND (j.credits_held, j.credits_charged) IS DISTINCT FROM (l.held, l.charged)
RETURNING j.team_id, j.job_id;

-- name: reconcile_ensure_accounts
-- Account rows for teams that have ledger entries but no account (sorted: one lock order).
INSERT INTO credit_accounts (team_id)
SELECT t.team_id FROM unnest(%(team_ids)s::text[]) AS t(team_id)
ORDER BY t.team_id
ON CONFLICT (team_id) DO NOTHING;

-- name: reconcile_lock_accounts
-- As lock_account, for several teams, in team_id order (apply_ledger moves accounts in that order).
SELECT team_id FROM credit_accounts
WHERE team_id = ANY(%(team_ids)s::text[])
ORDER BY team_id
FOR UPDATE;

-- name: reconcile_fix_team_balances
-- Sets the balances of accounts (locked by reconcile_lock_accounts) to the sums over their ledger
-- (a separate statement after the lock: it sees every entry committed before the lock was taken).
UPDATE credit_accounts a SET
    credits_allocated = l.allocated,
    credits_charged = l.charged,
    credits_held = l.held,
    updated_at = now()
FROM (
    SELECT t.team_id,
           coalesce(sum(e.amount) FILTER (WHERE e.kind IN ('grant', 'adjust')), 0) AS allocated,
           coalesce(sum(e.amount) FILTER (WHERE e.kind = 'capture'), 0) AS charged,
           coalesce(sum(e.amount) FILTER (WHERE e.kind = 'hold'), 0)
             - coalesce(sum(e.amount) FILTER (WHERE e.kind IN ('capture', 'release')), 0) AS held
    FROM unnest(%(team_ids)s::text[]) AS t(team_id)
    LEFT JOIN credit_ledger e ON e.team_id = t.team_id
    GROUP BY t.team_id
) l
WHERE a.team_id = l.team_id
  AND (a.credits_allocated, a.credits_charged, a.credits_held) IS DISTINCT FROM (l.allocated, l.charged, l.held)
RETURNING a.team_id;

-- name: team_states
-- Each team's policy and the provider cost of its failed and expired jobs closed in the window.
SELECT t.team_id, p.job_prices, p.allowed_job_types, p.failure_allowance_usd,
       coalesce(f.spent, 0) AS failure_spent_usd, f.oldest AS failure_oldest_at
FROM unnest(%(team_ids)s::text[]) AS t(team_id)
LEFT JOIN team_policies p USING (team_id)
LEFT JOIN LATERAL (
    SELECT sum(j.total_cost_usd) AS spent, min(j.completed_at) AS oldest FROM jobs j
    WHERE j.team_id = t.team_id AND j.status IN ('failed', 'expired')
      AND j.completed_at > now() - make_interval(secs => %(window_s)s)
) f ON true;

-- name: put_team_policy
INSERT INTO team_policies AS p (team_id, job_prices, allowed_job_types, failure_allowance_usd)
VALUES (%(team_id)s, %(job_prices)s::jsonb, %(allowed_job_types)s::jsonb, %(failure_allowance_usd)s)
ON CONFLICT (team_id) DO UPDATE SET
    job_prices = EXCLUDED.job_prices,
    allowed_job_types = EXCLUDED.allowed_job_types,
    failure_allowance_usd = EXCLUDED.failure_allowance_usd,
    updated_at = now()
RETURNING team_id, updated_at;

-- name: list_team_policies
SELECT team_id, job_prices, allowed_job_types, failure_allowance_usd, updated_at FROM team_policies
ORDER BY team_id;

-- name: insert_created_job
-- A job POST /api/jobs/create just opened (its hold taken). With Redis the journal may have written
-- the hold first, and the hold opens the row as a job opened by a call (in_progress, no caps): the
-- route's row then completes it — pending while no call is recorded, with the caps, owner and
-- metadata the route was given.
INSERT INTO jobs AS j (team_id, job_id, job_type, status, single_call, metadata, user_id, max_calls,
                       max_cost_usd, admitted_calls)
VALUES (%(team_id)s, %(job_id)s, %(job_type)s, 'pending', false, %(metadata)s::jsonb, %(user_id)s,
        %(max_calls)s, %(max_cost_usd)s, 0)
ON CONFLICT (team_id, job_id) DO UPDATE SET
    status = CASE WHEN j.total_calls = 0 THEN 'pending' ELSE j.status END,
    metadata = CASE WHEN j.metadata = '{}'::jsonb THEN EXCLUDED.metadata ELSE j.metadata END,
    user_id = coalesce(j.user_id, EXCLUDED.user_id),
    max_calls = coalesce(j.max_calls, EXCLUDED.max_calls),
    max_cost_usd = coalesce(j.max_cost_usd, EXCLUDED.max_cost_usd),
    updated_at = now()
WHERE j.status IN ('pending', 'in_progress')
RETURNING job_id;

-- name: job_admissions
-- A job's admission counters, without a lock (read for the answer, not to decide).
SELECT admitted_calls, status FROM jobs WHERE team_id = %(team_id)s AND job_id = %(job_id)s;

-- Webhooks (migration 0007; webhooks/): endpoints, the outbox's deliveries, dead letters.

-- name: webhook_insert_endpoint
INSERT INTO webhook_endpoints (endpoint_id, url, team_id, event_types, description, secret)
VALUES (%(endpoint_id)s, %(url)s, %(team_id)s, %(event_types)s::text[], %(description)s, %(secret)s)
RETURNING endpoint_id, url, team_id, event_types, description, created_at, updated_at, previous_secret_expires_at;

-- name: webhook_list_endpoints
SELECT e.endpoint_id, e.url, e.team_id, e.event_types, e.description, e.created_at, e.updated_at,
       e.previous_secret_expires_at,
       count(d.*) FILTER (WHERE d.status = 'pending')::integer AS pending,
       count(d.*) FILTER (WHERE d.status = 'dead')::integer AS dead,
       count(d.*) FILTER (WHERE d.status = 'delivered')::integer AS delivered
FROM webhook_endpoints e
LEFT JOIN webhook_deliveries d ON d.endpoint_id = e.endpoint_id
WHERE (%(endpoint_id)s::text IS NULL OR e.endpoint_id = %(endpoint_id)s)
GROUP BY e.endpoint_id
ORDER BY e.created_at, e.endpoint_id;

-- name: webhook_delete_endpoint
-- Its deliveries go with it (pending ones are never sent).
DELETE FROM webhook_endpoints WHERE endpoint_id = %(endpoint_id)s RETURNING endpoint_id;

-- name: webhook_rotate_secret
-- The current secret becomes the previous one, still signed with until %(overlap_s)s from now.
UPDATE webhook_endpoints SET
    previous_secret = secret,
    previous_secret_expires_at = now() + make_interval(secs => %(overlap_s)s),
    secret = %(secret)s,
    updated_at = now()
WHERE endpoint_id = %(endpoint_id)s
RETURNING endpoint_id, url, team_id, event_types, description, created_at, updated_at, previous_secret_expires_at;

-- name: webhook_set_threshold
INSERT INTO webhook_team_settings AS t (team_id, credits_low_threshold)
VALUES (%(team_id)s, %(threshold)s)
ON CONFLICT (team_id) DO UPDATE SET credits_low_threshold = EXCLUDED.credits_low_threshold, updated_at = now()
RETURNING team_id, credits_low_threshold;

-- name: webhook_get_threshold
SELECT team_id, credits_low_threshold FROM webhook_team_settings WHERE team_id = %(team_id)s;

-- name: webhook_put_allowance_defaults
-- The operator's failure allowance, for the trigger that emits failure_allowance.exhausted.
INSERT INTO webhook_allowance_defaults AS d (id, failure_allowance_usd, failure_window_s)
VALUES (1, %(failure_allowance_usd)s, %(failure_window_s)s)
ON CONFLICT (id) DO UPDATE SET
    failure_allowance_usd = EXCLUDED.failure_allowance_usd,
    failure_window_s = EXCLUDED.failure_window_s,
    updated_at = now()
WHERE (d.failure_allowance_usd, d.failure_window_s)
      IS DISTINCT FROM (EXCLUDED.failure_allowance_usd, EXCLUDED.failure_window_s);

-- name: webhook_claim
-- Due deliveries, the first pending one of each (endpoint, order key) only (a job's or a team's
-- events go out in order), leased for %(lease_s)s: a worker that dies mid-send leaves them due again.
WITH due AS (
    SELECT d.event_id, d.endpoint_id
    FROM webhook_deliveries d
    WHERE d.status = 'pending' AND d.next_attempt_at <= now()
      AND NOT EXISTS (SELECT 1 FROM webhook_deliveries p
                      WHERE p.endpoint_id = d.endpoint_id AND p.order_key = d.order_key
                        AND p.status = 'pending' AND p.seq < d.seq)
      AND NOT ((d.event_id || ' ' || d.endpoint_id) = ANY (%(busy)s::text[]))
      -- a job's event waits %(settle_s)s after its closure, for the calls that finished before it
      -- (written off the request path with Redis or in-process credits) to be in its body
      AND (d.order_key NOT LIKE 'job:%%' OR d.created_at <= now() - make_interval(secs => %(settle_s)s))
    ORDER BY d.seq
    LIMIT %(limit)s
    FOR UPDATE OF d SKIP LOCKED
)
UPDATE webhook_deliveries d SET
    next_attempt_at = now() + make_interval(secs => %(lease_s)s),
    last_attempt_at = now()
FROM due, webhook_events e, webhook_endpoints w
WHERE d.event_id = due.event_id AND d.endpoint_id = due.endpoint_id
  AND e.event_id = d.event_id AND w.endpoint_id = d.endpoint_id
RETURNING d.event_id, d.endpoint_id, d.attempts, d.seq, e.event_type, e.team_id, e.job_id, e.created_at,
          e.snapshot::text AS snapshot, e.payload, w.url, w.secret, w.previous_secret,
          w.previous_secret_expires_at > now() AS previous_secret_live;

-- name: webhook_freeze_payload
-- The body of an event as first sent: every endpoint and every retry gets these bytes.
UPDATE webhook_events SET payload = coalesce(payload, %(payload)s)
WHERE event_id = %(event_id)s
RETURNING payload;

-- name: webhook_delivered
UPDATE webhook_deliveries SET
    status = 'delivered', delivered_at = now(), attempts = attempts + 1,
    last_status_code = %(status_code)s, last_error = NULL
WHERE event_id = %(event_id)s AND endpoint_id = %(endpoint_id)s AND status = 'pending';

-- name: webhook_attempt_failed
-- A failed attempt: retried after %(delay_s)s, or dead once the delivery is older than %(max_age_s)s.
UPDATE webhook_deliveries SET
    attempts = attempts + 1,
    last_status_code = %(status_code)s,
    last_error = %(error)s,
    status = CASE WHEN now() >= window_start + make_interval(secs => %(max_age_s)s) THEN 'dead' ELSE 'pending' END,
    dead_at = CASE WHEN now() >= window_start + make_interval(secs => %(max_age_s)s) THEN now() END,
    next_attempt_at = now() + make_interval(secs => %(delay_s)s)
WHERE event_id = %(event_id)s AND endpoint_id = %(endpoint_id)s AND status = 'pending'
RETURNING status;

-- name: webhook_next_due
-- Seconds until the earliest pending delivery may be claimed (NULL: none pending; <= 0: due now).
SELECT extract(epoch FROM min(greatest(
           d.next_attempt_at,
           CASE WHEN d.order_key LIKE 'job:%%' THEN d.created_at + make_interval(secs => %(settle_s)s)
                ELSE d.next_attempt_at END)) - now())::float8 AS due_in_s
FROM webhook_deliveries d
WHERE d.status = 'pending';

-- name: notify
SELECT pg_notify(%(channel)s, '');

-- name: webhook_wake
-- Wakes the delivering process (dead letters sent again); the channel of migration 0010.
SELECT pg_notify('ljp_webhooks_' || md5(current_schema()), '');

-- name: webhook_counts
SELECT count(*) FILTER (WHERE status = 'pending')::integer AS backlog,
       count(*) FILTER (WHERE status = 'dead')::integer AS dead,
       extract(epoch FROM now() - min(created_at) FILTER (WHERE status = 'pending'))::float8 AS oldest_pending_s
FROM webhook_deliveries;

-- name: webhook_dead_letters
SELECT d.event_id, d.endpoint_id, e.event_type, e.team_id, e.job_id, d.attempts, d.last_status_code,
       d.last_error, e.created_at, d.dead_at, w.url
FROM webhook_deliveries d
JOIN webhook_events e ON e.event_id = d.event_id
JOIN webhook_endpoints w ON w.endpoint_id = d.endpoint_id
WHERE d.status = 'dead' AND (%(endpoint_id)s::text IS NULL OR d.endpoint_id = %(endpoint_id)s)
ORDER BY d.dead_at DESC, d.seq DESC
LIMIT %(limit)s;

-- name: webhook_retry_dead
-- Dead letters due again now, with a fresh maximum age (all of an endpoint's, or the events named).
UPDATE webhook_deliveries SET
    status = 'pending', dead_at = NULL, next_attempt_at = now(), window_start = now()
WHERE status = 'dead'
  AND (%(endpoint_id)s::text IS NULL OR endpoint_id = %(endpoint_id)s)
  AND (%(event_ids)s::text[] IS NULL OR event_id = ANY (%(event_ids)s::text[]))
RETURNING event_id, endpoint_id;

-- name: webhook_prune_deliveries
DELETE FROM webhook_deliveries
WHERE status = 'delivered' AND delivered_at < now() - make_interval(secs => %(retention_s)s);

-- name: webhook_prune_events
-- Events past the retention that no delivery refers to any more.
DELETE FROM webhook_events e
WHERE e.created_at < now() - make_interval(secs => %(retention_s)s)
  AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.event_id = e.event_id);

-- name: webhook_lock
SELECT pg_try_advisory_lock(%(key)s) AS locked;
