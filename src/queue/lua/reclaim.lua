-- Reclaim a conversation whose lease expired (or whose worker is gone):
-- the holder is fenced out, and the conversation is scheduled again.
-- KEYS: 1 conv, 2 leases, 3 holders, 4 ready, 5 affine, 6 workers, 7 wake
-- ARGV: 1 cid
-- Returns 1 if reclaimed, 0 if the lease is live or gone.
local conv, leases = KEYS[1], KEYS[2]
local cid = ARGV[1]
local now = now_ms()
local deadline = redis.call('ZSCORE', leases, cid)
if not deadline or tonumber(deadline) > now then return 0 end
redis.call('ZREM', leases, cid)
redis.call('HDEL', KEYS[3], cid)
local state = redis.call('HGET', conv, 'state')
if state == 'running' then
  redis.call('HSET', conv, 'last_error', 'lease expired (worker died or stalled)')
end
if state == 'running' or state == 'scheduled' then
  redis.call('HDEL', conv, 'owner_worker', 'owner_slot', 'owner_gen', 'lease_worker', 'lease_slot')
  schedule(conv, KEYS[4], KEYS[5], KEYS[6], KEYS[7], cid, now)
end
return 1
