-- Named queries of usage export and Stripe top-ups (migrations 0008 and 0009), read by
-- litellm_jobs_plugin.billing.sql the way queries.sql is read by store.sql.

-- name: export_try_lock
SELECT pg_try_advisory_xact_lock(%(key)s) AS locked;

-- name: list_sinks
SELECT s.name, s.kind, s.url, s.api_key, s.enabled, s.options, s.created_at, s.updated_at,
       c.position_xid, c.position_seq, c.exported, c.last_sent_at, c.last_error, c.last_error_at,
       coalesce((SELECT sum(u.events) FROM export_unmapped u WHERE u.sink = s.name), 0)::bigint AS unmapped_events,
       coalesce((SELECT array_agg(u.team_id ORDER BY u.team_id) FROM export_unmapped u WHERE u.sink = s.name),
                '{}') AS unmapped_teams
FROM export_sinks s LEFT JOIN export_cursors c ON c.sink = s.name
WHERE %(name)s::text IS NULL OR s.name = %(name)s
ORDER BY s.name;

-- name: put_sink
-- api_key: NULL keeps the key stored before (keep_key), else replaces it.
INSERT INTO export_sinks AS s (name, kind, url, api_key, enabled, options)
VALUES (%(name)s, %(kind)s, %(url)s, %(api_key)s, %(enabled)s, %(options)s::jsonb)
ON CONFLICT (name) DO UPDATE SET
    kind = EXCLUDED.kind,
    url = EXCLUDED.url,
    api_key = CASE WHEN %(keep_key)s THEN s.api_key ELSE EXCLUDED.api_key END,
    enabled = EXCLUDED.enabled,
    options = EXCLUDED.options,
    updated_at = now()
RETURNING name;

-- name: start_cursor
-- A new sink starts after every closure committed so far: history is sent by a backfill.
INSERT INTO export_cursors (sink, position_xid, position_seq)
VALUES (%(sink)s, pg_snapshot_xmin(pg_current_snapshot())::text::bigint - 1, 9223372036854775807)
ON CONFLICT (sink) DO NOTHING;

-- name: outbox_page
-- Closures after the cursor, in commit-safe order: only transactions older than every running one.
SELECT o.seq, o.xid, o.closed_at, o.closed_at <= now() - make_interval(secs => %(delay_s)s) AS ripe, j.team_id, j.job_id, j.job_type, j.status, j.completed_at,
       j.total_calls, j.successful_calls, j.failed_calls, j.prompt_tokens, j.completion_tokens,
       j.total_cost_usd, j.credits_charged
FROM usage_outbox o JOIN jobs j ON j.team_id = o.team_id AND j.job_id = o.job_id
WHERE (o.xid, o.seq) > (%(xid)s, %(seq)s)
  AND o.xid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
ORDER BY o.xid, o.seq
LIMIT %(limit)s;

-- name: prune_outbox
-- Of the oldest closures (the first %(limit)s), those no sink still needs and closed before the
-- retention: every enabled sink's cursor is at or past them (a sink without a cursor yet starts at
-- the end), and so is that of every sink disabled within the retention (an operator fixing a key);
-- a sink disabled for longer holds nothing: re-enabled, it resumes where the outbox then starts (a
-- backfill sends what it missed). Their transaction is older than every running one. Rows are
-- looked at oldest first, a page at a time, so a prune never scans the whole outbox.
DELETE FROM usage_outbox
WHERE seq IN (
    SELECT o.seq
    FROM (SELECT * FROM usage_outbox ORDER BY xid, seq LIMIT %(limit)s) o
    WHERE o.closed_at < now() - make_interval(secs => %(retention_s)s)
      AND o.xid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
      AND NOT EXISTS (
          SELECT 1 FROM export_cursors c JOIN export_sinks s ON s.name = c.sink
          WHERE (s.enabled OR s.updated_at > now() - make_interval(secs => %(retention_s)s))
            AND (c.position_xid, c.position_seq) < (o.xid, o.seq)))
RETURNING seq;

-- name: closed_jobs_since
-- A backfill's page: closed jobs by closing time, keyset (completed_at, team_id, job_id).
SELECT j.team_id, j.job_id, j.job_type, j.status, j.completed_at, j.completed_at AS closed_at,
       j.total_calls, j.successful_calls, j.failed_calls, j.prompt_tokens, j.completion_tokens,
       j.total_cost_usd, j.credits_charged
FROM jobs j
WHERE j.status IN ('completed', 'failed', 'expired')
  AND j.completed_at >= %(since)s AND j.completed_at < %(until)s
  AND (j.completed_at, j.team_id, j.job_id) > (%(after_at)s, %(after_team)s, %(after_job)s)
ORDER BY j.completed_at, j.team_id, j.job_id
LIMIT %(limit)s;

-- name: calls_of_jobs
SELECT c.team_id, c.job_id, c.call_id, c.model_group, c.model, c.provider, c.status, c.prompt_tokens,
       c.completion_tokens, c.cost_usd, c.cache_hit, c.ended_at
FROM calls c
JOIN unnest(%(team_ids)s::text[], %(job_ids)s::text[]) AS k(team_id, job_id)
  ON c.team_id = k.team_id AND c.job_id = k.job_id
ORDER BY c.team_id, c.job_id, c.ended_at, c.call_id;

-- name: get_cursor
SELECT sink, position_xid, position_seq FROM export_cursors WHERE sink = %(sink)s;

-- name: advance_cursor
UPDATE export_cursors SET position_xid = %(xid)s, position_seq = %(seq)s, exported = exported + %(sent)s,
    last_sent_at = CASE WHEN %(sent)s > 0 THEN now() ELSE last_sent_at END,
    last_error = NULL, last_error_at = NULL, updated_at = now()
WHERE sink = %(sink)s AND (position_xid, position_seq) < (%(xid)s, %(seq)s);

-- name: cursor_error
UPDATE export_cursors SET last_error = %(error)s, last_error_at = now(), updated_at = now() WHERE sink = %(sink)s;

-- name: customers_of
SELECT team_id, customer_id FROM export_customers
WHERE sink = %(sink)s AND team_id = ANY(%(team_ids)s::text[]);

-- name: list_customers
SELECT sink, team_id, customer_id, updated_at FROM export_customers
WHERE sink = %(sink)s ORDER BY team_id;

-- name: put_customer
INSERT INTO export_customers AS c (sink, team_id, customer_id) VALUES (%(sink)s, %(team_id)s, %(customer_id)s)
ON CONFLICT (sink, team_id) DO UPDATE SET customer_id = EXCLUDED.customer_id, updated_at = now()
RETURNING sink, team_id, customer_id, updated_at;

-- name: forget_unmapped
-- A team given a customer is no longer unmapped (its skipped events are sent again by a backfill).
DELETE FROM export_unmapped WHERE sink = %(sink)s AND team_id = %(team_id)s;

-- name: note_unmapped
INSERT INTO export_unmapped AS u (sink, team_id, events) VALUES (%(sink)s, %(team_id)s, %(events)s)
ON CONFLICT (sink, team_id) DO UPDATE SET events = u.events + EXCLUDED.events, last_at = now();

-- name: team_of_stripe_customer
SELECT c.team_id FROM export_customers c JOIN export_sinks s ON s.name = c.sink
WHERE s.kind = 'stripe' AND c.customer_id = %(customer_id)s
ORDER BY c.updated_at DESC LIMIT 1;

-- name: team_is_known
-- A team the plugin has seen: credits, jobs, a policy or a billing customer.
SELECT EXISTS (SELECT 1 FROM credit_accounts WHERE team_id = %(team_id)s)
    OR EXISTS (SELECT 1 FROM jobs WHERE team_id = %(team_id)s)
    OR EXISTS (SELECT 1 FROM team_policies WHERE team_id = %(team_id)s)
    OR EXISTS (SELECT 1 FROM export_customers WHERE team_id = %(team_id)s) AS known;

-- name: record_stripe_event
INSERT INTO stripe_events (event_id, type, object_id, payload, status)
VALUES (%(event_id)s, %(type)s, %(object_id)s, %(payload)s::jsonb, 'received')
ON CONFLICT (event_id) DO NOTHING;

-- name: lock_stripe_event
SELECT event_id, type, object_id, team_id, credits, status, detail, received_at, updated_at
FROM stripe_events WHERE event_id = %(event_id)s FOR UPDATE;

-- name: settle_stripe_event
UPDATE stripe_events SET status = %(status)s, team_id = %(team_id)s, credits = %(credits)s, detail = %(detail)s,
    updated_at = now()
WHERE event_id = %(event_id)s
RETURNING event_id, type, object_id, team_id, credits, status, detail, received_at, updated_at;

-- name: list_stripe_events
SELECT event_id, type, object_id, team_id, credits, status, detail, received_at, updated_at
FROM stripe_events
WHERE %(status)s::text IS NULL OR status = %(status)s
ORDER BY received_at DESC, event_id
LIMIT %(limit)s;

-- name: stripe_price_credits
SELECT price_id, credits FROM stripe_prices WHERE price_id = ANY(%(price_ids)s::text[]);

-- name: list_stripe_prices
SELECT price_id, credits, updated_at FROM stripe_prices ORDER BY price_id;

-- name: put_stripe_price
INSERT INTO stripe_prices AS p (price_id, credits) VALUES (%(price_id)s, %(credits)s)
ON CONFLICT (price_id) DO UPDATE SET credits = EXCLUDED.credits, updated_at = now()
RETURNING price_id, credits, updated_at;

