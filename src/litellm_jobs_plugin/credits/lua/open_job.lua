-- Admit a call to a job, or open the job by holding its price: atomically, for every replica.
-- KEYS: account hash, job hash, open-jobs zset, journal stream, loaded sentinel
-- ARGV: now_ms, requested_type ('' = any), new_type, price (micro-credits), max_calls (0 = none),
--       max_cost_usd (0 = none), create_only ('1'/'0'), count ('1'/'0'), member, initial_state,
--       team_id, job_id, single_call ('1'/'0'), may_create ('1'/'0': '0' when the new job's terms
--       refuse it: job type not allowed or not priced, failure allowance used up, PostgreSQL down)
-- The decisions are credits/decide.py's (join, open_new); a property test proves they agree.
-- A new job's hold is appended to the journal in this same script: it is durable as soon as it is taken.
-- Without the sentinel (a Redis that lost its data) nothing is decided: the caller rebuilds the state.
if redis.call('EXISTS', KEYS[5]) == 0 then
  return {'rebuild'}
end
local acct, job, open = KEYS[1], KEYS[2], KEYS[3]
local state = redis.call('HGET', job, 'state')
if state then
  local jtype = redis.call('HGET', job, 'type')
  local avail = redis.call('HGET', acct, 'avail') or '0'
  if state ~= 'pending' and state ~= 'in_progress' then
    return {'closed', state, jtype}
  end
  if ARGV[2] ~= '' and ARGV[2] ~= jtype then
    return {'type_mismatch', state, jtype}
  end
  if ARGV[7] == '1' then
    return {'exists', state, jtype, avail, redis.call('HGET', job, 'hold') or '0', '0',
            redis.call('HGET', job, 'inc') or ''}
  end
  if ARGV[8] == '1' then
    local calls = tonumber(redis.call('HGET', job, 'calls') or '0')
    local max_calls = tonumber(redis.call('HGET', job, 'max_calls') or '0')
    if max_calls > 0 and calls >= max_calls then
      return {'over_calls', state, jtype, tostring(max_calls)}
    end
    local max_cost = tonumber(redis.call('HGET', job, 'max_cost') or '0')
    local cost = tonumber(redis.call('HGET', job, 'cost') or '0')
    if max_cost > 0 and cost >= max_cost then
      return {'over_cost', state, jtype, tostring(max_cost)}
    end
    redis.call('HSET', job, 'calls', calls + 1, 'state', 'in_progress', 'last', ARGV[1])
    state = 'in_progress'
  else
    redis.call('HSET', job, 'last', ARGV[1])
  end
  redis.call('ZADD', open, ARGV[1], ARGV[9])
  return {'ok', state, jtype, avail, redis.call('HGET', job, 'hold') or '0', '0',
          redis.call('HGET', job, 'inc') or ''}
end
if ARGV[14] == '0' then
  return {'refused'}
end
if redis.call('HGET', acct, 'loaded') ~= '1' then
  return {'not_loaded'}
end
local avail = tonumber(redis.call('HGET', acct, 'avail'))
local price = tonumber(ARGV[4])
if avail < price then
  return {'insufficient', '', ARGV[3], string.format('%d', avail)}
end
redis.call('HINCRBY', acct, 'avail', 0 - price)  -- never -0 (a free job): HINCRBY refuses it
redis.call('HINCRBY', acct, 'held', price)
local calls = 0
if ARGV[8] == '1' then calls = 1 end
-- 'inc' (the opening time) tells this opening of the job id from any earlier, forgotten one.
redis.call('HSET', job, 'state', ARGV[10], 'type', ARGV[3], 'hold', price, 'calls', calls,
           'max_calls', ARGV[5], 'max_cost', ARGV[6], 'cost', '0', 'last', ARGV[1], 'inc', ARGV[1])
redis.call('ZADD', open, ARGV[1], ARGV[9])
redis.call('XADD', KEYS[4], '*', 'k', 'hold', 't', ARGV[11], 'j', ARGV[12], 'y', ARGV[3],
           'm', string.format('%d', price), 's', ARGV[13], 'i', ARGV[1])
return {'ok', ARGV[10], ARGV[3], string.format('%d', avail - price), string.format('%d', price), '1', ARGV[1]}
