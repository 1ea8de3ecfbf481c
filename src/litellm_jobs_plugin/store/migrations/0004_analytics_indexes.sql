-- Indexes for analytics over a period: every team's jobs by creation time (the admin's view),
-- and a team's ledger entries by time (credits granted and charged in a period).

CREATE INDEX jobs_created_idx ON jobs (created_at);
CREATE INDEX credit_ledger_team_created_idx ON credit_ledger (team_id, created_at);
