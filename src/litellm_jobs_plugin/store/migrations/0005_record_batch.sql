-- The writer's batch in one statement: record_batch(batch) runs, inside PostgreSQL, the steps the
-- writer used to send one by one (open and lock the jobs, the ledger, the closures, the events,
-- the call rows, the job aggregates). One round trip and one parameter per batch: the proxy's
-- share of a call's recording is a JSON document, not eight statements.
--
-- A PL/pgSQL function is VOLATILE: under READ COMMITTED each of its statements takes a new
-- snapshot, so after the job locks the aggregates see every other writer's committed calls,
-- exactly as the statements sent one by one did.
--
-- Job aggregates are moved by the call rows a batch adds (O(1) per call, whatever the job's size).
-- A job one of whose existing call rows changes (a later attempt of the same call: a fallback's
-- answer after its failed primary) is recomputed from its call rows, as before. reconcile still
-- recomputes every job from its rows, and reports any difference.

-- Appends ledger entries (a replayed idempotency_key is skipped) and moves the cached balances of
-- the accounts and jobs by exactly the entries inserted: balances stay derivable from the ledger.
-- entries: [{team_id, kind, amount, job_id, idempotency_key, note}], amounts as decimal strings.
CREATE FUNCTION apply_ledger_entries(entries jsonb)
RETURNS TABLE (entry_id bigint, team_id text, kind text)
LANGUAGE sql SET search_path FROM CURRENT AS $$
WITH input AS (
    SELECT t.team_id, t.kind, t.amount, t.job_id, t.idempotency_key, t.note
    FROM jsonb_to_recordset(entries)
         AS t(team_id text, kind text, amount numeric, job_id text, idempotency_key text, note text)
), ins AS (
    INSERT INTO credit_ledger (team_id, kind, amount, job_id, idempotency_key, note)
    SELECT i.team_id, i.kind, i.amount, i.job_id, i.idempotency_key, i.note FROM input i ORDER BY i.idempotency_key
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING credit_ledger.entry_id, credit_ledger.team_id, credit_ledger.kind, credit_ledger.amount,
              credit_ledger.job_id
), account_moves AS (
    INSERT INTO credit_accounts AS a (team_id, credits_allocated, credits_charged, credits_held)
    SELECT ins.team_id,
           coalesce(sum(ins.amount) FILTER (WHERE ins.kind IN ('grant', 'adjust')), 0),
           coalesce(sum(ins.amount) FILTER (WHERE ins.kind = 'capture'), 0),
           coalesce(sum(ins.amount) FILTER (WHERE ins.kind = 'hold'), 0)
             - coalesce(sum(ins.amount) FILTER (WHERE ins.kind IN ('capture', 'release')), 0)
    FROM ins GROUP BY ins.team_id ORDER BY ins.team_id
    ON CONFLICT (team_id) DO UPDATE SET
        credits_allocated = a.credits_allocated + EXCLUDED.credits_allocated,
        credits_charged = a.credits_charged + EXCLUDED.credits_charged,
        credits_held = a.credits_held + EXCLUDED.credits_held,
        updated_at = now()
    RETURNING a.team_id
), job_moves AS (
    UPDATE jobs j SET
        credits_held = j.credits_held + m.held_delta,
        credits_charged = j.credits_charged + m.charged
    FROM (SELECT ins.team_id, ins.job_id,
                 coalesce(sum(ins.amount) FILTER (WHERE ins.kind = 'hold'), 0)
                   - coalesce(sum(ins.amount) FILTER (WHERE ins.kind IN ('capture', 'release')), 0) AS held_delta,
                 coalesce(sum(ins.amount) FILTER (WHERE ins.kind = 'capture'), 0) AS charged
          FROM ins WHERE ins.job_id IS NOT NULL GROUP BY ins.team_id, ins.job_id) m
    WHERE j.team_id = m.team_id AND j.job_id = m.job_id
    RETURNING j.job_id
)
SELECT ins.entry_id, ins.team_id, ins.kind FROM ins
$$;

-- Job aggregates recomputed from the jobs' call rows (the caller holds the job locks), so they
-- equal the sums over those rows. The writer's fallback for jobs whose call rows changed, and
-- reconcile --fix.
CREATE FUNCTION recompute_job_aggregates(team_ids text[], job_ids text[]) RETURNS integer
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    n integer;
BEGIN
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
        -- a finished call is activity: the idle reaper counts from the last call's start or end
        last_activity_at = greatest(j.last_activity_at, a.last_call_at),
        updated_at = now(),
        -- A job opened by the route becomes in_progress with its first call; closed jobs stay
        -- closed (late calls are attached, never reopen or re-charge it).
        status = CASE WHEN j.status = 'pending' THEN 'in_progress' ELSE j.status END
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
        JOIN unnest(team_ids, job_ids) AS t(team_id, job_id)
          ON c.team_id = t.team_id AND c.job_id = t.job_id
        GROUP BY c.team_id, c.job_id
    ) a
    WHERE j.team_id = a.team_id AND j.job_id = a.job_id;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

-- batch: {"jobs":    [{team_id, job_id, job_type, single_call, metadata}]  (the jobs it touches),
--         "entries": [{team_id, kind, amount, job_id, idempotency_key, note}],
--         "closes":  [{team_id, job_id, status}]  (single-call jobs the writer closes),
--         "events":  [{event_id, call_id, team_id, job_id, ... purpose}]  (call_events columns)}
-- Returns how many entries and events were new (replays change nothing and count 0).
CREATE FUNCTION record_batch(batch jsonb) RETURNS integer
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    new_items integer := 0;
    n integer;
    call_teams text[];   -- the calls that got a new event, sorted
    call_ids text[];
    old_teams text[];    -- the jobs of those calls that already had a row: recomputed
    old_jobs text[];
BEGIN
    -- 1. Open the jobs (a job is opened by its first record) and lock them, in (team_id, job_id)
    --    order so that concurrent writers never deadlock; this serialises writers of one job.
    IF jsonb_array_length(batch -> 'jobs') > 0 THEN
        INSERT INTO jobs (team_id, job_id, job_type, single_call, metadata)
        SELECT t.team_id, t.job_id, t.job_type, t.single_call, coalesce(t.metadata, '{}'::jsonb)
        FROM jsonb_to_recordset(batch -> 'jobs')
             AS t(team_id text, job_id text, job_type text, single_call boolean, metadata jsonb)
        ORDER BY t.team_id, t.job_id
        -- job_metadata is kept from the first record that has it: a job opened by its hold (in
        -- process or in Redis, before the call) gets the first call's metadata with that call.
        ON CONFLICT (team_id, job_id) DO UPDATE SET metadata = EXCLUDED.metadata
        WHERE jobs.metadata = '{}'::jsonb AND EXCLUDED.metadata <> '{}'::jsonb;
        PERFORM 1
        FROM jobs j
        JOIN jsonb_to_recordset(batch -> 'jobs') AS t(team_id text, job_id text)
          ON j.team_id = t.team_id AND j.job_id = t.job_id
        ORDER BY j.team_id, j.job_id
        FOR UPDATE OF j;
    END IF;

    -- 2. Ledger entries (holds, captures, releases), then the closures some of them carry.
    IF jsonb_array_length(batch -> 'entries') > 0 THEN
        SELECT count(*) INTO n FROM apply_ledger_entries(batch -> 'entries');
        new_items := new_items + n;
    END IF;
    IF jsonb_array_length(batch -> 'closes') > 0 THEN
        -- A closed job is never reopened or closed again.
        UPDATE jobs j SET status = c.status, completed_at = now(), updated_at = now()
        FROM jsonb_to_recordset(batch -> 'closes') AS c(team_id text, job_id text, status text)
        WHERE j.team_id = c.team_id AND j.job_id = c.job_id AND j.status IN ('pending', 'in_progress');
    END IF;

    IF coalesce(jsonb_array_length(batch -> 'events'), 0) = 0 THEN
        RETURN new_items;
    END IF;

    -- 3. Events, each once (event_id); the calls that got a new one.
    WITH ins AS (
        INSERT INTO call_events (
            event_id, call_id, team_id, job_id, job_type, single_call, key_hash, user_id, call_type,
            requested_model, status, model_group, model, model_id, provider, prompt_tokens,
            completion_tokens, cost_usd, cache_hit, stream, latency_ms, error_type, error_code,
            started_at, ended_at, purpose)
        SELECT t.event_id, t.call_id, coalesce(t.team_id, ''), t.job_id, t.job_type, t.single_call,
               t.key_hash, t.user_id, t.call_type, t.requested_model, t.status, t.model_group, t.model,
               t.model_id, t.provider, t.prompt_tokens, t.completion_tokens, t.cost_usd, t.cache_hit,
               t.stream, t.latency_ms, t.error_type, t.error_code, t.started_at, t.ended_at, t.purpose
        FROM jsonb_to_recordset(batch -> 'events') AS t(
            event_id text, call_id text, team_id text, job_id text, job_type text, single_call boolean,
            key_hash text, user_id text, call_type text, requested_model text, status text,
            model_group text, model text, model_id text, provider text, prompt_tokens integer,
            completion_tokens integer, cost_usd numeric, cache_hit boolean, stream boolean,
            latency_ms integer, error_type text, error_code text, started_at timestamptz,
            ended_at timestamptz, purpose text)
        ON CONFLICT (event_id) DO NOTHING
        RETURNING call_events.team_id, call_events.call_id
    ), inserted AS (
        SELECT count(*)::integer AS n FROM ins
    ), keys AS (
        SELECT DISTINCT ins.team_id, ins.call_id FROM ins
    )
    SELECT (SELECT inserted.n FROM inserted),
           array_agg(keys.team_id ORDER BY keys.team_id, keys.call_id),
           array_agg(keys.call_id ORDER BY keys.team_id, keys.call_id)
    INTO n, call_teams, call_ids
    FROM keys;
    IF n = 0 THEN
        RETURN new_items;
    END IF;
    new_items := new_items + n;

    -- The jobs of calls that already had a row (their row changes): recomputed below.
    SELECT array_agg(o.team_id ORDER BY o.team_id, o.job_id), array_agg(o.job_id ORDER BY o.team_id, o.job_id)
    INTO old_teams, old_jobs
    FROM (SELECT DISTINCT c.team_id, c.job_id
          FROM calls c
          JOIN unnest(call_teams, call_ids) AS k(team_id, call_id)
            ON c.team_id = k.team_id AND c.call_id = k.call_id
          WHERE c.job_id IS NOT NULL) o;

    -- 4. A call's row from all of its events: the success if there is one (never hidden by a
    --    failed attempt, whatever order they came in), else the latest failed attempt.
    INSERT INTO calls (
        call_id, team_id, job_id, job_type, key_hash, user_id, call_type, requested_model,
        model_group, model, model_id, provider, status, prompt_tokens, completion_tokens, cost_usd,
        cache_hit, stream, latency_ms, error_type, error_code, attempts, failed_attempts,
        started_at, ended_at, purpose)
    SELECT DISTINCT ON (e.team_id, e.call_id)
        e.call_id, e.team_id, e.job_id, e.job_type, e.key_hash, e.user_id, e.call_type,
        e.requested_model, e.model_group, e.model, e.model_id, e.provider, e.status,
        e.prompt_tokens, e.completion_tokens, e.cost_usd, e.cache_hit, e.stream,
        (EXTRACT(EPOCH FROM (max(e.ended_at) OVER w - min(e.started_at) OVER w)) * 1000)::integer,
        e.error_type, e.error_code,
        count(*) OVER w,
        count(*) FILTER (WHERE e.status = 'failure') OVER w,
        min(e.started_at) OVER w,
        e.ended_at,
        e.purpose
    FROM call_events e
    JOIN unnest(call_teams, call_ids) AS k(team_id, call_id)
      ON e.team_id = k.team_id AND e.call_id = k.call_id
    WINDOW w AS (PARTITION BY e.team_id, e.call_id)
    ORDER BY e.team_id, e.call_id, (e.status = 'success') DESC, e.ended_at DESC, e.event_id
    ON CONFLICT (team_id, call_id) DO UPDATE SET
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
        purpose = EXCLUDED.purpose,
        recorded_at = now();

    -- 5. Aggregates: jobs whose calls are all new here move by those rows; the others are
    --    recomputed from their rows.
    UPDATE jobs j SET
        total_calls = j.total_calls + a.total_calls,
        successful_calls = j.successful_calls + a.successful_calls,
        failed_calls = j.failed_calls + a.failed_calls,
        prompt_tokens = j.prompt_tokens + a.prompt_tokens,
        completion_tokens = j.completion_tokens + a.completion_tokens,
        total_cost_usd = j.total_cost_usd + a.total_cost_usd,
        total_latency_ms = j.total_latency_ms + a.total_latency_ms,
        models_used = ARRAY(SELECT DISTINCT m FROM unnest(j.models_used || a.models) AS m ORDER BY m),
        first_call_at = least(j.first_call_at, a.first_call_at),
        last_call_at = greatest(j.last_call_at, a.last_call_at),
        last_activity_at = greatest(j.last_activity_at, a.last_call_at),
        updated_at = now(),
        status = CASE WHEN j.status = 'pending' THEN 'in_progress' ELSE j.status END
    FROM (
        SELECT c.team_id, c.job_id,
               count(*)::integer AS total_calls,
               (count(*) FILTER (WHERE c.status = 'success'))::integer AS successful_calls,
               (count(*) FILTER (WHERE c.status = 'failure'))::integer AS failed_calls,
               coalesce(sum(c.prompt_tokens), 0)::bigint AS prompt_tokens,
               coalesce(sum(c.completion_tokens), 0)::bigint AS completion_tokens,
               coalesce(sum(c.cost_usd), 0) AS total_cost_usd,
               coalesce(sum(c.latency_ms), 0)::bigint AS total_latency_ms,
               coalesce(array_agg(c.model) FILTER (WHERE c.model IS NOT NULL), '{}') AS models,
               min(c.started_at) AS first_call_at,
               max(c.ended_at) AS last_call_at
        FROM calls c
        JOIN unnest(call_teams, call_ids) AS k(team_id, call_id)
          ON c.team_id = k.team_id AND c.call_id = k.call_id
        WHERE c.job_id IS NOT NULL
          AND (c.team_id, c.job_id) NOT IN (SELECT o.team_id, o.job_id FROM unnest(old_teams, old_jobs) AS o(team_id, job_id))
        GROUP BY c.team_id, c.job_id
    ) a
    WHERE j.team_id = a.team_id AND j.job_id = a.job_id;
    IF old_teams IS NOT NULL THEN
        PERFORM recompute_job_aggregates(old_teams, old_jobs);
    END IF;
    RETURN new_items;
END
$$;
