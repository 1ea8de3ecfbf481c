-- Credits: an append-only ledger, the cached balances derived from it, and the job fields the
-- lifecycle needs (caps, the hold, admitted calls, activity for the idle reaper).

CREATE TABLE credit_accounts (
    team_id            text           PRIMARY KEY,
    credits_allocated  numeric(20, 6) NOT NULL DEFAULT 0,
    credits_charged    numeric(20, 6) NOT NULL DEFAULT 0,
    credits_held       numeric(20, 6) NOT NULL DEFAULT 0,
    credits_remaining  numeric(20, 6) GENERATED ALWAYS AS
                           (credits_allocated - credits_charged - credits_held) STORED,
    updated_at         timestamptz    NOT NULL DEFAULT now()
);

-- Every balance change, once (idempotency_key). Amounts are positive; the kind says the effect:
-- grant/adjust change allocated (adjust may be negative), hold adds to held, capture moves a
-- hold to charged, release gives a hold back.
CREATE TABLE credit_ledger (
    entry_id           bigserial      PRIMARY KEY,
    team_id            text           NOT NULL,
    kind               text           NOT NULL,
    amount             numeric(20, 6) NOT NULL,
    job_id             text,
    idempotency_key    text           NOT NULL,
    note               text,
    created_at         timestamptz    NOT NULL DEFAULT now(),
    CONSTRAINT credit_ledger_kind_check CHECK (kind IN ('grant', 'hold', 'capture', 'release', 'adjust')),
    CONSTRAINT credit_ledger_amount_check CHECK (kind = 'adjust' OR amount >= 0),
    CONSTRAINT credit_ledger_idempotency_key_key UNIQUE (idempotency_key)
);

CREATE INDEX credit_ledger_team_idx ON credit_ledger (team_id, entry_id);

ALTER TABLE jobs
    ADD COLUMN user_id          text,
    ADD COLUMN max_calls        integer,
    ADD COLUMN max_cost_usd     numeric(65, 30),
    ADD COLUMN credits_held     numeric(20, 6) NOT NULL DEFAULT 0,
    ADD COLUMN admitted_calls   integer        NOT NULL DEFAULT 0,
    ADD COLUMN last_activity_at timestamptz    NOT NULL DEFAULT now(),
    ADD COLUMN result           jsonb,
    ADD COLUMN error_message    text;

CREATE INDEX jobs_open_activity_idx ON jobs (last_activity_at)
    WHERE status IN ('pending', 'in_progress');
