-- Usage export: sinks (metering and billing systems the admin configures), the customer each
-- team is in each sink, and an outbox of job closures read in commit-safe order.
--
-- usage_outbox gets one row when a job's row reaches a closed status (a trigger, whichever path
-- closed it: a route's transaction, the writer's batch, the reaper). Rows are read in (xid, seq)
-- order and only below the oldest running transaction (pg_snapshot_xmin): a closure committed
-- later never lands behind a sink's cursor.

CREATE TABLE usage_outbox (
    seq       bigserial   PRIMARY KEY,
    xid       bigint      NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    team_id   text        NOT NULL,
    job_id    text        NOT NULL,
    status    text        NOT NULL,
    closed_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX usage_outbox_order_idx ON usage_outbox (xid, seq);

CREATE FUNCTION usage_outbox_capture() RETURNS trigger
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
BEGIN
    INSERT INTO usage_outbox (team_id, job_id, status) VALUES (NEW.team_id, NEW.job_id, NEW.status);
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_closed_on_insert AFTER INSERT ON jobs
    FOR EACH ROW WHEN (NEW.status IN ('completed', 'failed', 'expired'))
    EXECUTE FUNCTION usage_outbox_capture();

CREATE TRIGGER jobs_closed_on_update AFTER UPDATE OF status ON jobs
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status AND NEW.status IN ('completed', 'failed', 'expired'))
    EXECUTE FUNCTION usage_outbox_capture();

-- A sink: where usage events go and how they are shaped (options: JSON, see billing/sinks.py).
-- api_key is never returned by a route or the CLI.
CREATE TABLE export_sinks (
    name        text        PRIMARY KEY,
    kind        text        NOT NULL,
    url         text        NOT NULL,
    api_key     text,
    enabled     boolean     NOT NULL DEFAULT true,
    options     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT export_sinks_kind_check CHECK (kind IN ('cloudevents', 'lago', 'stripe'))
);

-- Each sink's position in usage_outbox: everything at or before (xid, seq) was delivered.
CREATE TABLE export_cursors (
    sink          text        PRIMARY KEY,
    position_xid  bigint      NOT NULL,
    position_seq  bigint      NOT NULL,
    exported      bigint      NOT NULL DEFAULT 0,
    last_sent_at  timestamptz,
    last_error    text,
    last_error_at timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- The billing system's customer (Stripe customer, Lago subscription, OpenMeter subject) of a team.
CREATE TABLE export_customers (
    sink        text        NOT NULL,
    team_id     text        NOT NULL,
    customer_id text        NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sink, team_id)
);

CREATE INDEX export_customers_customer_idx ON export_customers (customer_id);

-- Events a sink could not take because their team has no customer there (sent again by a backfill).
CREATE TABLE export_unmapped (
    sink      text        NOT NULL,
    team_id   text        NOT NULL,
    events    bigint      NOT NULL DEFAULT 0,
    first_at  timestamptz NOT NULL DEFAULT now(),
    last_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sink, team_id)
);
