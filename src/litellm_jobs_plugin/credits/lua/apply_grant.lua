-- Apply one grant/adjust of PostgreSQL's ledger to a loaded account, at most once.
-- KEYS: account hash, applied-grants set, loaded sentinel
-- ARGV: entry_id, delta (micro-credits, may be negative)
local acct, grants = KEYS[1], KEYS[2]
if redis.call('EXISTS', KEYS[3]) == 0 then
  return {'rebuild'}
end
if redis.call('HGET', acct, 'loaded') ~= '1' then
  return {'not_loaded'}
end
if redis.call('SADD', grants, ARGV[1]) == 0 then
  return {'seen', redis.call('HGET', acct, 'avail')}
end
redis.call('HINCRBY', acct, 'avail', tonumber(ARGV[2]))
return {'applied', redis.call('HGET', acct, 'avail')}
