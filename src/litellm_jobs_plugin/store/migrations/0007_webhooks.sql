-- Signed webhooks, delivered durably: endpoints, an outbox of events, one delivery row per
-- (event, endpoint), and the triggers that write events in the same transaction as the state
-- change they report, whichever code path made it (the PostgreSQL credit transactions, the
-- writer's record_batch, grants, the reaper, reconcile).
--
-- The triggers on jobs and credit_ledger are deferred constraint triggers: they run at commit, so
-- the event sees the whole transaction (record_batch closes a job before it adds the batch's calls
-- to the job's aggregates). An event is written only when some endpoint wants it; its id is
-- derived from what it reports, so a replayed closure or grant inserts nothing (ON CONFLICT).

CREATE TABLE webhook_endpoints (
    endpoint_id                text        PRIMARY KEY,
    url                        text        NOT NULL,
    team_id                    text,                    -- NULL: every team
    event_types                text[]      NOT NULL,
    description                text,
    secret                     text        NOT NULL,   -- whsec_...
    previous_secret            text,                    -- still signed with until it expires
    previous_secret_expires_at timestamptz,
    created_at                 timestamptz NOT NULL DEFAULT now(),
    updated_at                 timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT webhook_endpoints_event_types_check CHECK (cardinality(event_types) > 0)
);

CREATE INDEX webhook_endpoints_team_idx ON webhook_endpoints (team_id);

-- Per team, what the proxy admin set for its events: credits.low fires when credits_remaining
-- falls below credits_low_threshold.
CREATE TABLE webhook_team_settings (
    team_id               text           PRIMARY KEY,
    credits_low_threshold numeric(20, 6),
    updated_at            timestamptz    NOT NULL DEFAULT now()
);

-- The operator's failure allowance (JOBS_FAILURE_ALLOWANCE_USD, JOBS_FAILURE_WINDOW_S), written
-- by each proxy at start-up, so that a trigger can tell when a closure uses a team's allowance up.
CREATE TABLE webhook_allowance_defaults (
    id                    integer         PRIMARY KEY,
    failure_allowance_usd numeric(65, 30),
    failure_window_s      numeric(20, 6)  NOT NULL,
    updated_at            timestamptz     NOT NULL DEFAULT now(),
    CONSTRAINT webhook_allowance_defaults_single_row CHECK (id = 1)
);

-- The outbox. snapshot: the rows the event reports, as the transaction left them; payload: the
-- body as first sent (every endpoint and every retry gets the same bytes).
CREATE TABLE webhook_events (
    event_id   text        PRIMARY KEY,
    seq        bigserial   NOT NULL,
    event_type text        NOT NULL,
    team_id    text        NOT NULL,
    job_id     text,
    order_key  text        NOT NULL,   -- deliveries of one key go out in seq order
    snapshot   jsonb       NOT NULL,
    payload    text,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT webhook_events_seq_key UNIQUE (seq)
);

CREATE TABLE webhook_deliveries (
    event_id         text        NOT NULL REFERENCES webhook_events (event_id) ON DELETE CASCADE,
    endpoint_id      text        NOT NULL REFERENCES webhook_endpoints (endpoint_id) ON DELETE CASCADE,
    seq              bigint      NOT NULL,
    order_key        text        NOT NULL,
    status           text        NOT NULL DEFAULT 'pending',
    attempts         integer     NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    window_start     timestamptz NOT NULL DEFAULT now(),  -- the maximum age counts from here
    last_attempt_at  timestamptz,
    last_status_code integer,
    last_error       text,
    delivered_at     timestamptz,
    dead_at          timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, endpoint_id),
    CONSTRAINT webhook_deliveries_status_check CHECK (status IN ('pending', 'delivered', 'dead'))
);

CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_order_idx ON webhook_deliveries (endpoint_id, order_key, seq)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_dead_idx ON webhook_deliveries (dead_at) WHERE status = 'dead';
CREATE INDEX webhook_deliveries_delivered_idx ON webhook_deliveries (delivered_at) WHERE status = 'delivered';

-- Writes one event and its deliveries, if some endpoint wants it; a second call with the same
-- natural key writes nothing.
CREATE FUNCTION webhook_emit(p_type text, p_team text, p_job text, p_order_key text, p_natural_key text,
                             p_snapshot jsonb)
RETURNS void
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    v_id  text := 'evt_' || md5(p_natural_key);
    v_seq bigint;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM webhook_endpoints e
                   WHERE (e.team_id IS NULL OR e.team_id = p_team) AND p_type = ANY (e.event_types)) THEN
        RETURN;
    END IF;
    INSERT INTO webhook_events (event_id, event_type, team_id, job_id, order_key, snapshot)
    VALUES (v_id, p_type, p_team, p_job, p_order_key, p_snapshot)
    ON CONFLICT (event_id) DO NOTHING
    RETURNING seq INTO v_seq;
    IF v_seq IS NULL THEN
        RETURN;
    END IF;
    INSERT INTO webhook_deliveries (event_id, endpoint_id, seq, order_key)
    SELECT v_id, e.endpoint_id, v_seq, p_order_key
    FROM webhook_endpoints e
    WHERE (e.team_id IS NULL OR e.team_id = p_team) AND p_type = ANY (e.event_types)
    ORDER BY e.endpoint_id
    ON CONFLICT DO NOTHING;
END
$$;

-- failure_allowance.exhausted when ``delta`` (the cost a failed or expired job of the team just
-- added to its uncharged cost in the window: its whole cost when it closes, a late call's after)
-- took that cost from below the team's allowance to at least it. Once per job (its natural key).
CREATE FUNCTION webhook_check_allowance(p_team text, p_job text, p_delta numeric) RETURNS void
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    v_limit  numeric;
    v_window numeric;
    v_used   numeric;
    v_oldest timestamptz;
BEGIN
    SELECT coalesce(p.failure_allowance_usd, d.failure_allowance_usd), d.failure_window_s
    INTO v_limit, v_window
    FROM webhook_allowance_defaults d
    LEFT JOIN team_policies p ON p.team_id = p_team
    WHERE d.id = 1;
    IF v_limit IS NULL OR NOT EXISTS (
        SELECT 1 FROM webhook_endpoints e
        WHERE (e.team_id IS NULL OR e.team_id = p_team) AND 'failure_allowance.exhausted' = ANY (e.event_types)) THEN
        RETURN;
    END IF;
    -- One team's changes decide this one at a time, each seeing the ones committed before it.
    PERFORM pg_advisory_xact_lock(1785686903, hashtext(p_team));
    SELECT coalesce(sum(x.total_cost_usd), 0), min(x.completed_at) INTO v_used, v_oldest
    FROM jobs x
    WHERE x.team_id = p_team AND x.status IN ('failed', 'expired')
      AND x.completed_at > now() - make_interval(secs => v_window::double precision);
    IF v_used >= v_limit AND v_used - p_delta < v_limit THEN
        PERFORM webhook_emit('failure_allowance.exhausted', p_team, p_job,
                             'team:' || length(p_team) || ':' || p_team,
                             'failure_allowance.exhausted:' || length(p_team) || ':' || p_team || ':' || p_job,
                             jsonb_build_object('job_id', p_job, 'limit_usd', v_limit, 'used_usd', v_used,
                                                'window_s', v_window, 'oldest_at', v_oldest,
                                                'account', (SELECT to_jsonb(a) FROM credit_accounts a
                                                            WHERE a.team_id = p_team)));
    END IF;
END
$$;

-- A job closed (completed, failed, expired), run at commit: the job as the transaction left it,
-- and the failure allowance check for a failed or expired one.
CREATE FUNCTION webhook_job_closed() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    j     jobs;
    v_key text := length(NEW.team_id) || ':' || NEW.team_id || ':' || NEW.job_id;
BEGIN
    SELECT * INTO j FROM jobs WHERE team_id = NEW.team_id AND job_id = NEW.job_id;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    PERFORM webhook_emit('job.' || NEW.status, NEW.team_id, NEW.job_id, 'job:' || v_key,
                         'job.' || NEW.status || ':' || v_key, to_jsonb(j));
    IF NEW.status IN ('failed', 'expired') THEN
        PERFORM webhook_check_allowance(NEW.team_id, NEW.job_id, j.total_cost_usd);
    END IF;
    RETURN NULL;
END
$$;

-- A call recorded after its job failed or expired (with Redis or in-process credits a job's
-- calls are written off the request path, often after the closure): its cost counts too.
CREATE FUNCTION webhook_late_cost() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    PERFORM webhook_check_allowance(NEW.team_id, NEW.job_id, NEW.total_cost_usd - OLD.total_cost_usd);
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER jobs_webhook_late_cost
    AFTER UPDATE OF total_cost_usd ON jobs
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW
    WHEN (OLD.status IN ('failed', 'expired') AND NEW.total_cost_usd > OLD.total_cost_usd)
    EXECUTE FUNCTION webhook_late_cost();

CREATE CONSTRAINT TRIGGER jobs_webhook_closed_on_update
    AFTER UPDATE OF status ON jobs
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW
    WHEN (OLD.status IN ('pending', 'in_progress') AND NEW.status IN ('completed', 'failed', 'expired'))
    EXECUTE FUNCTION webhook_job_closed();

CREATE CONSTRAINT TRIGGER jobs_webhook_closed_on_insert
    AFTER INSERT ON jobs
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW
    WHEN (NEW.status IN ('completed', 'failed', 'expired'))
    EXECUTE FUNCTION webhook_job_closed();

-- A grant or an adjust, run at commit: the entry and the team's balance after the transaction.
CREATE FUNCTION webhook_credits_granted() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    PERFORM webhook_emit('credits.granted', NEW.team_id, NULL,
                         'team:' || length(NEW.team_id) || ':' || NEW.team_id,
                         'credits.granted:' || NEW.entry_id,
                         jsonb_build_object('entry', jsonb_build_object('entry_id', NEW.entry_id, 'kind', NEW.kind,
                                                                         'amount', NEW.amount, 'note', NEW.note,
                                                                         'created_at', NEW.created_at),
                                            'account', (SELECT to_jsonb(a) FROM credit_accounts a
                                                        WHERE a.team_id = NEW.team_id)));
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER credit_ledger_webhook_granted
    AFTER INSERT ON credit_ledger
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW
    WHEN (NEW.kind IN ('grant', 'adjust'))
    EXECUTE FUNCTION webhook_credits_granted();

-- A balance that went down, run at commit with the row as this update left it: credits.low when
-- it fell below the team's threshold, credits.exhausted when it reached zero. The event id names
-- the team's last ledger entry: the same crossing written again (reconcile) is the same event.
CREATE FUNCTION webhook_balance_fell() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    v_threshold numeric;
    v_entry     bigint;
    v_order     text := 'team:' || length(NEW.team_id) || ':' || NEW.team_id;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM webhook_endpoints e
                   WHERE (e.team_id IS NULL OR e.team_id = NEW.team_id)
                     AND e.event_types && ARRAY['credits.low', 'credits.exhausted']) THEN
        RETURN NULL;
    END IF;
    SELECT t.credits_low_threshold INTO v_threshold FROM webhook_team_settings t WHERE t.team_id = NEW.team_id;
    SELECT max(l.entry_id) INTO v_entry FROM credit_ledger l WHERE l.team_id = NEW.team_id;
    IF v_threshold IS NOT NULL AND OLD.credits_remaining >= v_threshold AND NEW.credits_remaining < v_threshold THEN
        PERFORM webhook_emit('credits.low', NEW.team_id, NULL, v_order,
                             'credits.low:' || length(NEW.team_id) || ':' || NEW.team_id || ':' || coalesce(v_entry, 0),
                             jsonb_build_object('account', to_jsonb(NEW), 'threshold', v_threshold));
    END IF;
    IF OLD.credits_remaining > 0 AND NEW.credits_remaining <= 0 THEN
        PERFORM webhook_emit('credits.exhausted', NEW.team_id, NULL, v_order,
                             'credits.exhausted:' || length(NEW.team_id) || ':' || NEW.team_id || ':'
                                 || coalesce(v_entry, 0),
                             jsonb_build_object('account', to_jsonb(NEW)));
    END IF;
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER credit_accounts_webhook_fell
    AFTER UPDATE ON credit_accounts
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW
    WHEN (NEW.credits_remaining < OLD.credits_remaining)
    EXECUTE FUNCTION webhook_balance_fell();
