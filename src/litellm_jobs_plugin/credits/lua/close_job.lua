-- Close a job: completed captures its hold, failed/expired release it. Idempotent per status.
-- KEYS: account hash, job hash, open-jobs zset
-- ARGV: status, now_ms, idle_cutoff_ms ('' = none), member, closed_ttl_s
local acct, job, open = KEYS[1], KEYS[2], KEYS[3]
local state = redis.call('HGET', job, 'state')
if not state then
  return {'unknown'}
end
local hold = redis.call('HGET', job, 'hold') or '0'
local calls = redis.call('HGET', job, 'calls') or '0'
local jtype = redis.call('HGET', job, 'type') or ''
local inc = redis.call('HGET', job, 'inc') or ''
if state ~= 'pending' and state ~= 'in_progress' then
  if state == ARGV[1] then
    return {'same', state, hold, calls, jtype, redis.call('HGET', acct, 'avail') or '0', inc}
  end
  return {'conflict', state, hold, calls, jtype}
end
if ARGV[3] ~= '' and tonumber(redis.call('HGET', job, 'last') or '0') > tonumber(ARGV[3]) then
  return {'active', state, hold, calls, jtype}
end
redis.call('HINCRBY', acct, 'held', -tonumber(hold))
if ARGV[1] ~= 'completed' then
  redis.call('HINCRBY', acct, 'avail', tonumber(hold))
end
redis.call('HSET', job, 'state', ARGV[1], 'closed_at', ARGV[2])
redis.call('ZREM', open, ARGV[4])
redis.call('EXPIRE', job, tonumber(ARGV[5]))
return {'closed', ARGV[1], hold, calls, jtype, redis.call('HGET', acct, 'avail') or '0', inc}
