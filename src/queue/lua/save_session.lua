-- Store the agent's session (its resume id and transcript) for resume anywhere.
-- KEYS: 1 conv, 2 leases, 3 session   ARGV: 1 cid, 2 epoch, 3 session id, 4 blob, 5 idle ttl ms
-- Returns 1, or 0 when fenced.
local now = now_ms()
if not holds_lease(KEYS[1], KEYS[2], ARGV[1], ARGV[2], now) then return 0 end
redis.call('HSET', KEYS[1], 'session_id', ARGV[3])
redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[5])
return 1
