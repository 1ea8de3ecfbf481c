-- Indexes for analytics over a period: every team's jobs by creation time (the admin's view),
-- and a team's ledger entries by time (credits granted and charged in a period).

CREATE INDEX IF NOT EXISTS jobs_created_idx ON jobs (created_at);
CREATE INDEX IF NOT EXISTS credit_ledger_team_created_idx ON credit_ledger (team_id, created_at);
-- IF NOT EXISTS: on a large, busy database, create them CONCURRENTLY by hand first (same names);
-- this migration then finds them and does not block writes while building.
