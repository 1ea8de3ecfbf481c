-- Add a recorded call's cost to an open job (for max_cost_usd); never creates a job.
-- KEYS: job hash   ARGV: cost_usd
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('HINCRBYFLOAT', KEYS[1], 'cost', ARGV[1])
end
return false
