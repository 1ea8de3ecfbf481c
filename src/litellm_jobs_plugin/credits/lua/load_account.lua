-- Load an account from a PostgreSQL snapshot, unless it is loaded already.
-- KEYS: account hash, applied-grants set
-- ARGV: snapshot_avail, snapshot_held (micro-credits), then the entry ids of every grant/adjust
--       the snapshot includes.
local acct, grants = KEYS[1], KEYS[2]
if redis.call('HGET', acct, 'loaded') == '1' then
  return {'loaded_already', redis.call('HGET', acct, 'avail')}
end
redis.call('DEL', grants)
for i = 3, #ARGV do
  redis.call('SADD', grants, ARGV[i])
end
redis.call('HSET', acct, 'avail', ARGV[1], 'held', ARGV[2], 'loaded', '1')
return {'loaded', ARGV[1]}
