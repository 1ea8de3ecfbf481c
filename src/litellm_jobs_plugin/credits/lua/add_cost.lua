-- A call of an open job finished: add its cost (for max_cost_usd) and count it as activity, so
-- the idle reaper measures idleness from the last call's start or end. Never creates a job.
-- With a fourth key (the journal stream), the call's record (ARGV[4]) is appended to it first, in
-- this same script: the record and its cost update are one round trip, and atomic.
-- KEYS: job hash, open-jobs zset, loaded sentinel [, journal stream]   ARGV: cost_usd, now_ms, member [, record]
-- Without the sentinel (a Redis that lost its data) nothing is appended: the caller rebuilds, then retries.
if redis.call('EXISTS', KEYS[3]) == 0 then
  return 'rebuild'
end
if KEYS[4] then
  redis.call('XADD', KEYS[4], '*', 'v', ARGV[4])
end
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
