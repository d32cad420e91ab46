-- Extend a lease the caller holds.
-- KEYS: 1 conv, 2 leases   ARGV: 1 cid, 2 epoch, 3 lease ttl ms
-- Returns 1, or 0 when the caller no longer holds the lease.
local now = now_ms()
if not holds_lease(KEYS[1], KEYS[2], ARGV[1], ARGV[2], now) then return 0 end
redis.call('ZADD', KEYS[2], 'XX', now + tonumber(ARGV[3]), ARGV[1])
return 1
