-- What the proxy admin sets per team: price overrides by job type, the job types the team may
-- open (a JSON array; NULL: any), and its allowance for the provider cost of failed and expired jobs (NULL: the
-- operator's setting). Plus the index that sums a team's uncharged jobs over the allowance window.

CREATE TABLE team_policies (
    team_id               text           PRIMARY KEY,
    job_prices            jsonb          NOT NULL DEFAULT '{}'::jsonb,
    allowed_job_types     jsonb,
    failure_allowance_usd numeric(65, 30),
    updated_at            timestamptz    NOT NULL DEFAULT now(),
    CONSTRAINT team_policies_allowance_check CHECK (failure_allowance_usd IS NULL OR failure_allowance_usd >= 0)
);

CREATE INDEX jobs_uncharged_idx ON jobs (team_id, completed_at) WHERE status IN ('failed', 'expired');
