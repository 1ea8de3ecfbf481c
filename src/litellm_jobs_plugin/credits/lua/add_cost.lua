-- A call of an open job finished: add its cost (for max_cost_usd) and count it as activity, so
-- the idle reaper measures idleness from the last call's start or end. Never creates a job.
-- KEYS: job hash, open-jobs zset   ARGV: cost_usd, now_ms, member
local state = redis.call('HGET', KEYS[1], 'state')
if not state then
  return false
end
if tonumber(ARGV[1]) > 0 then
  redis.call('HINCRBYFLOAT', KEYS[1], 'cost', ARGV[1])
end
if state == 'pending' or state == 'in_progress' then
  redis.call('HSET', KEYS[1], 'last', ARGV[2])
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
end
return state
