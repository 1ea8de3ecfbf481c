-- Close a job: completed captures its hold, failed/expired release it. Idempotent per status.
-- KEYS: account hash, job hash, open-jobs zset [, journal stream]
-- ARGV: status, now_ms, idle_cutoff_ms ('' = none), member, closed_ttl_s
--       [, team_id, job_id, single_call ('1'/'0'), record...]
-- With the journal stream, a closure decided here (or repeated) appends the records given (a call's
-- own record) and then its ledger entries, as one compact 'close' record (journal.py decodes it into
-- the hold and capture/release entries the service would write): durable in the same script.
local acct, job, open = KEYS[1], KEYS[2], KEYS[3]
local function journal(hold, jtype, inc)
  if KEYS[4] then
    for i = 9, #ARGV do
      redis.call('XADD', KEYS[4], '*', 'v', ARGV[i])
    end
    redis.call('XADD', KEYS[4], '*', 'k', 'close', 't', ARGV[6], 'j', ARGV[7], 'y', jtype, 'm', hold,
               'i', inc, 'c', ARGV[1], 's', ARGV[8])
  end
end
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
    journal(hold, jtype, inc)
    return {'same', state, hold, calls, jtype, redis.call('HGET', acct, 'avail') or '0', inc}
  end
  return {'conflict', state, hold, calls, jtype}
end
if ARGV[3] ~= '' and tonumber(redis.call('HGET', job, 'last') or '0') > tonumber(ARGV[3]) then
  return {'active', state, hold, calls, jtype}
end
-- journaled before anything changes: a failed append (a Redis out of memory) leaves the job open
journal(hold, jtype, inc)
redis.call('HINCRBY', acct, 'held', 0 - tonumber(hold))  -- never -0 (a free job): HINCRBY refuses it
if ARGV[1] ~= 'completed' then
  redis.call('HINCRBY', acct, 'avail', tonumber(hold))
end
redis.call('HSET', job, 'state', ARGV[1], 'closed_at', ARGV[2])
redis.call('ZREM', open, ARGV[4])
redis.call('EXPIRE', job, tonumber(ARGV[5]))
return {'closed', ARGV[1], hold, calls, jtype, redis.call('HGET', acct, 'avail') or '0', inc}
