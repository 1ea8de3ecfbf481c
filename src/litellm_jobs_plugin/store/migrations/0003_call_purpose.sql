-- What a call was for, as the client named it (metadata.purpose, or the seed routes' "purpose"):
-- the cost breakdown of a job (GET /api/jobs/{job_id}/costs) lists it per call.

ALTER TABLE call_events ADD COLUMN purpose text;
ALTER TABLE calls ADD COLUMN purpose text;
