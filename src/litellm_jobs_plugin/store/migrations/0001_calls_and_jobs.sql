-- Jobs, their calls, and the raw LiteLLM events each call row is derived from.
-- Released migrations are immutable: their checksums are frozen by tests/unit/test_migrations.py.
-- Costs are numeric(65, 30): LiteLLM's float cost, written as its shortest decimal form, is kept
-- digit for digit (it must equal the x-litellm-response-cost header), as Prisma's default Decimal.

CREATE TABLE jobs (
    team_id           text           NOT NULL,
    job_id            text           NOT NULL,
    job_type          text           NOT NULL,
    status            text           NOT NULL DEFAULT 'in_progress',
    single_call       boolean        NOT NULL DEFAULT false,
    metadata          jsonb          NOT NULL DEFAULT '{}'::jsonb,
    created_at        timestamptz    NOT NULL DEFAULT now(),
    updated_at        timestamptz    NOT NULL DEFAULT now(),
    first_call_at     timestamptz,
    last_call_at      timestamptz,
    completed_at      timestamptz,
    total_calls       integer        NOT NULL DEFAULT 0,
    successful_calls  integer        NOT NULL DEFAULT 0,
    failed_calls      integer        NOT NULL DEFAULT 0,
    prompt_tokens     bigint         NOT NULL DEFAULT 0,
    completion_tokens bigint         NOT NULL DEFAULT 0,
    total_cost_usd    numeric(65, 30) NOT NULL DEFAULT 0,
    total_latency_ms  bigint         NOT NULL DEFAULT 0,
    models_used       text[]         NOT NULL DEFAULT '{}',
    credits_charged   numeric(20, 6) NOT NULL DEFAULT 0,
    PRIMARY KEY (team_id, job_id),
    CONSTRAINT jobs_status_check
        CHECK (status IN ('pending', 'in_progress', 'completed', 'failed', 'expired'))
);

CREATE INDEX jobs_team_created_idx ON jobs (team_id, created_at DESC);
CREATE INDEX jobs_type_created_idx ON jobs (job_type, created_at);

-- One row per LiteLLM call id and team: the call as billed. Derived from call_events by the writer.
-- Keyed by team too: a client may choose its call id (x-litellm-call-id), and must not be able to
-- touch another team's call by reusing its id. team_id is '' for calls recorded against no team.
CREATE TABLE calls (
    team_id           text           NOT NULL DEFAULT '',
    call_id           text           NOT NULL,
    job_id            text,
    job_type          text,
    key_hash          text,
    user_id           text,
    call_type         text,
    requested_model   text,
    model_group       text,
    model             text,
    model_id          text,
    provider          text,
    status            text           NOT NULL,
    prompt_tokens     integer        NOT NULL DEFAULT 0,
    completion_tokens integer        NOT NULL DEFAULT 0,
    cost_usd          numeric(65, 30) NOT NULL DEFAULT 0,
    cache_hit         boolean        NOT NULL DEFAULT false,
    stream            boolean        NOT NULL DEFAULT false,
    latency_ms        integer        NOT NULL DEFAULT 0,
    error_type        text,
    error_code        text,
    attempts          integer        NOT NULL DEFAULT 1,
    failed_attempts   integer        NOT NULL DEFAULT 0,
    started_at        timestamptz    NOT NULL,
    ended_at          timestamptz    NOT NULL,
    recorded_at       timestamptz    NOT NULL DEFAULT now(),
    PRIMARY KEY (team_id, call_id),
    CONSTRAINT calls_status_check CHECK (status IN ('success', 'failure')),
    CONSTRAINT calls_job_fkey FOREIGN KEY (team_id, job_id) REFERENCES jobs (team_id, job_id)
);

CREATE INDEX calls_job_idx ON calls (team_id, job_id, started_at);

-- Every LiteLLM logging event we received, once: a success, or a failed attempt (a fallback's
-- failed primary shares the call id of the final answer). event_id makes replays no-ops.
CREATE TABLE call_events (
    event_id          text           PRIMARY KEY,
    call_id           text           NOT NULL,
    team_id           text           NOT NULL DEFAULT '',
    job_id            text,
    job_type          text,
    single_call       boolean        NOT NULL DEFAULT false,
    key_hash          text,
    user_id           text,
    call_type         text,
    requested_model   text,
    status            text           NOT NULL,
    model_group       text,
    model             text,
    model_id          text,
    provider          text,
    prompt_tokens     integer        NOT NULL DEFAULT 0,
    completion_tokens integer        NOT NULL DEFAULT 0,
    cost_usd          numeric(65, 30) NOT NULL DEFAULT 0,
    cache_hit         boolean        NOT NULL DEFAULT false,
    stream            boolean        NOT NULL DEFAULT false,
    latency_ms        integer        NOT NULL DEFAULT 0,
    error_type        text,
    error_code        text,
    started_at        timestamptz    NOT NULL,
    ended_at          timestamptz    NOT NULL,
    recorded_at       timestamptz    NOT NULL DEFAULT now(),
    CONSTRAINT call_events_status_check CHECK (status IN ('success', 'failure'))
);

CREATE INDEX call_events_call_idx ON call_events (team_id, call_id);
