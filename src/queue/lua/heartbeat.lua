-- A worker's heartbeat: its deadline in the workers set, on server time.
-- KEYS: 1 workers   ARGV: 1 worker, 2 ttl ms
-- Returns 1 if the worker was already known, 0 if (re)registered.
local now = now_ms()
local known = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
if known and tonumber(known) >= now then return 1 end
return 0
