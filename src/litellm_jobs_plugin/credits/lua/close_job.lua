-- Close a job: completed captures its hold, failed/expired release it. Idempotent per status.
-- KEYS: account hash, job hash, open-jobs zset, loaded sentinel [, journal stream]
-- ARGV: status, now_ms, idle_cutoff_ms ('' = none), member, closed_ttl_s,
--       charge (micro-credits a completed job of a cost-based price is charged; '' = its whole hold)
--       [, team_id, job_id, single_call ('1'/'0'), record...]
-- The decisions are credits/decide.py's (close, settlement, captured); a property test proves they agree.
-- With the journal stream, a closure decided here (or repeated) appends the records given (a call's
-- own record) and then its ledger entries, as one compact 'close' record (journal.py decodes it into
-- the hold and capture/release entries the service would write): durable in the same script.
local acct, job, open = KEYS[1], KEYS[2], KEYS[3]
local function journal(hold, jtype, inc, charge)
  if KEYS[5] then
    for i = 10, #ARGV do
      redis.call('XADD', KEYS[5], '*', 'v', ARGV[i])
    end
    redis.call('XADD', KEYS[5], '*', 'k', 'close', 't', ARGV[7], 'j', ARGV[8], 'y', jtype, 'm', hold,
               'i', inc, 'c', ARGV[1], 's', ARGV[9], 'g', charge)
  end
end
if redis.call('EXISTS', KEYS[4]) == 0 then
  return {'rebuild'}  -- a Redis that lost its data: the caller rebuilds the state first
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
    local charged = redis.call('HGET', job, 'charge') or ''
    journal(hold, jtype, inc, charged)
    return {'same', state, hold, calls, jtype, redis.call('HGET', acct, 'avail') or '0', inc, charged}
  end
  return {'conflict', state, hold, calls, jtype}
end
if ARGV[3] ~= '' and tonumber(redis.call('HGET', job, 'last') or '0') > tonumber(ARGV[3]) then
  return {'active', state, hold, calls, jtype}
end
-- a cost-based charge: at most the hold, the rest of which is given back
local charged = ''
local back = tonumber(hold)
if ARGV[1] == 'completed' then
  back = 0
  if ARGV[6] ~= '' then
    local charge = math.min(tonumber(hold), tonumber(ARGV[6]))
    charged = string.format('%d', charge)
    back = tonumber(hold) - charge
  end
end
-- journaled before anything changes: a failed append (a Redis out of memory) leaves the job open
journal(hold, jtype, inc, charged)
redis.call('HINCRBY', acct, 'held', string.format('%d', 0 - tonumber(hold)))  -- never '-0': HINCRBY refuses it
if back > 0 then
  redis.call('HINCRBY', acct, 'avail', string.format('%d', back))
end
redis.call('HSET', job, 'state', ARGV[1], 'closed_at', ARGV[2], 'charge', charged)
redis.call('ZREM', open, ARGV[4])
redis.call('EXPIRE', job, tonumber(ARGV[5]))
return {'closed', ARGV[1], hold, calls, jtype, redis.call('HGET', acct, 'avail') or '0', inc, charged}
