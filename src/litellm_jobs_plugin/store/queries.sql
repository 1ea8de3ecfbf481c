-- All SQL of the plugin, one named block each ("-- name: verb_noun"), loaded by store/sql.py.
-- Tables are found through the connection's search_path (JOBS_DB_SCHEMA), never by formatting.

-- name: ensure_jobs
-- Opens the jobs a batch of events belongs to (a job is opened by its first tagged call).
-- Rows arrive sorted by (team_id, job_id) so concurrent writers take row locks in one order.
INSERT INTO jobs (team_id, job_id, job_type, single_call, metadata)
SELECT t.team_id, t.job_id, t.job_type, t.single_call, t.metadata::jsonb
FROM unnest(%(team_ids)s::text[], %(job_ids)s::text[], %(job_types)s::text[],
            %(single_calls)s::boolean[], %(metadatas)s::text[])
     AS t(team_id, job_id, job_type, single_call, metadata)
ORDER BY t.team_id, t.job_id
ON CONFLICT (team_id, job_id) DO NOTHING;

-- name: lock_jobs
-- Serialises writers of the same job: after this lock, the aggregate query below sees every
-- other writer's committed calls (READ COMMITTED takes a new snapshot per statement).
SELECT j.team_id, j.job_id
FROM jobs j
JOIN unnest(%(team_ids)s::text[], %(job_ids)s::text[]) AS t(team_id, job_id)
  ON j.team_id = t.team_id AND j.job_id = t.job_id
ORDER BY j.team_id, j.job_id
FOR UPDATE OF j;

-- name: insert_call_events
INSERT INTO call_events (
    event_id, call_id, team_id, job_id, job_type, single_call, key_hash, user_id, call_type,
    requested_model, status, model_group, model, model_id, provider, prompt_tokens,
    completion_tokens, cost_usd, cache_hit, stream, latency_ms, error_type, error_code,
    started_at, ended_at)
SELECT *
FROM unnest(
    %(event_ids)s::text[], %(call_ids)s::text[], %(team_ids)s::text[], %(job_ids)s::text[],
    %(job_types)s::text[], %(single_calls)s::boolean[], %(key_hashes)s::text[],
    %(user_ids)s::text[], %(call_types)s::text[], %(requested_models)s::text[],
    %(statuses)s::text[], %(model_groups)s::text[], %(models)s::text[], %(model_ids)s::text[],
    %(providers)s::text[], %(prompt_tokens)s::integer[], %(completion_tokens)s::integer[],
    %(costs)s::numeric[], %(cache_hits)s::boolean[], %(streams)s::boolean[],
    %(latencies)s::integer[], %(error_types)s::text[], %(error_codes)s::text[],
    %(started_ats)s::timestamptz[], %(ended_ats)s::timestamptz[])
ON CONFLICT (event_id) DO NOTHING
RETURNING call_id;

-- name: upsert_calls
-- A call's row from all of its events: the success if there is one (never hidden by a failed
-- attempt, whatever order they came in), else the latest failed attempt.
INSERT INTO calls (
    call_id, team_id, job_id, job_type, key_hash, user_id, call_type, requested_model,
    model_group, model, model_id, provider, status, prompt_tokens, completion_tokens, cost_usd,
    cache_hit, stream, latency_ms, error_type, error_code, attempts, failed_attempts,
    started_at, ended_at)
SELECT DISTINCT ON (e.call_id)
    e.call_id, e.team_id, e.job_id, e.job_type, e.key_hash, e.user_id, e.call_type,
    e.requested_model, e.model_group, e.model, e.model_id, e.provider, e.status,
    e.prompt_tokens, e.completion_tokens, e.cost_usd, e.cache_hit, e.stream,
    (EXTRACT(EPOCH FROM (max(e.ended_at) OVER w - min(e.started_at) OVER w)) * 1000)::integer,
    e.error_type, e.error_code,
    count(*) OVER w,
    count(*) FILTER (WHERE e.status = 'failure') OVER w,
    min(e.started_at) OVER w,
    e.ended_at
FROM call_events e
WHERE e.call_id = ANY(%(call_ids)s::text[])
WINDOW w AS (PARTITION BY e.call_id)
ORDER BY e.call_id, (e.status = 'success') DESC, e.ended_at DESC, e.event_id
ON CONFLICT (call_id) DO UPDATE SET
    model_group = EXCLUDED.model_group,
    model = EXCLUDED.model,
    model_id = EXCLUDED.model_id,
    provider = EXCLUDED.provider,
    status = EXCLUDED.status,
    prompt_tokens = EXCLUDED.prompt_tokens,
    completion_tokens = EXCLUDED.completion_tokens,
    cost_usd = EXCLUDED.cost_usd,
    cache_hit = EXCLUDED.cache_hit,
    stream = EXCLUDED.stream,
    latency_ms = EXCLUDED.latency_ms,
    error_type = EXCLUDED.error_type,
    error_code = EXCLUDED.error_code,
    attempts = EXCLUDED.attempts,
    failed_attempts = EXCLUDED.failed_attempts,
    started_at = EXCLUDED.started_at,
    ended_at = EXCLUDED.ended_at,
    recorded_at = now();

-- name: refresh_job_aggregates
-- Job aggregates are recomputed from the job's call rows under the job lock, so they always
-- equal the sums over those rows. A single-call job's status follows its one call.
UPDATE jobs j SET
    total_calls = a.total_calls,
    successful_calls = a.successful_calls,
    failed_calls = a.failed_calls,
    prompt_tokens = a.prompt_tokens,
    completion_tokens = a.completion_tokens,
    total_cost_usd = a.total_cost_usd,
    total_latency_ms = a.total_latency_ms,
    models_used = a.models_used,
    first_call_at = a.first_call_at,
    last_call_at = a.last_call_at,
    updated_at = now(),
    status = CASE
        WHEN j.single_call AND j.status IN ('pending', 'in_progress', 'failed')
            THEN CASE WHEN a.successful_calls > 0 THEN 'completed' ELSE 'failed' END
        WHEN j.status = 'pending' THEN 'in_progress'
        ELSE j.status END,
    completed_at = CASE
        WHEN j.single_call AND j.status IN ('pending', 'in_progress', 'failed')
            THEN a.last_call_at
        ELSE j.completed_at END
FROM (
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
    JOIN unnest(%(team_ids)s::text[], %(job_ids)s::text[]) AS t(team_id, job_id)
      ON c.team_id = t.team_id AND c.job_id = t.job_id
    GROUP BY c.team_id, c.job_id
) a
WHERE j.team_id = a.team_id AND j.job_id = a.job_id;

-- name: get_job
SELECT team_id, job_id, job_type, status, single_call, metadata, created_at, updated_at,
       first_call_at, last_call_at, completed_at, total_calls, successful_calls, failed_calls,
       prompt_tokens, completion_tokens, total_cost_usd, total_latency_ms, models_used,
       credits_charged
FROM jobs
WHERE team_id = %(team_id)s AND job_id = %(job_id)s;

-- name: list_job_calls
SELECT call_id, team_id, job_id, job_type, key_hash, user_id, call_type, requested_model,
       model_group, model, model_id, provider, status, prompt_tokens, completion_tokens,
       cost_usd, cache_hit, stream, latency_ms, error_type, error_code, attempts,
       failed_attempts, started_at, ended_at, recorded_at
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
