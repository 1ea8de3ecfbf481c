-- Load an open job from PostgreSQL into a Redis that lost its data (the rebuild), unless Redis has it.
-- KEYS: job hash, open-jobs zset
-- ARGV: state, type, hold (micro-credits), calls, max_calls (0 = none), max_cost (0 = none), cost,
--       last (ms), inc, member
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'type', ARGV[2], 'hold', ARGV[3], 'calls', ARGV[4],
           'max_calls', ARGV[5], 'max_cost', ARGV[6], 'cost', ARGV[7], 'last', ARGV[8], 'inc', ARGV[9])
redis.call('ZADD', KEYS[2], ARGV[8], ARGV[10])
return 1
