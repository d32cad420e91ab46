-- A worker whose heartbeat expired (or that deregistered): its affinity
-- queue moves to the shared queue and its leases are expired at once so
-- reclaim picks them up.
-- KEYS: 1 workers, 2 affine, 3 ready, 4 holders, 5 leases, 6 wake
-- ARGV: 1 worker, 2 force ('1': deregistering, skip the liveness check)
-- Returns the cids whose leases were expired.
local worker = ARGV[1]
local now = now_ms()
local hb = redis.call('ZSCORE', KEYS[1], worker)
if ARGV[2] ~= '1' and hb and tonumber(hb) >= now then return {} end
redis.call('ZREM', KEYS[1], worker)
local mine = redis.call('ZRANGEBYLEX', KEYS[2], '[' .. worker .. '|', '[' .. worker .. '|\255')
for _, member in ipairs(mine) do
  local at, cid = string.match(member, '^[^|]*|([^|]*)|(.*)$')
  redis.call('ZADD', KEYS[3], 'NX', tonumber(at), cid)
  redis.call('RPUSH', KEYS[6], '1')
end
if #mine > 0 then
  redis.call('ZREM', KEYS[2], unpack(mine))
  redis.call('LTRIM', KEYS[6], -1000, -1)
end
local expired = {}
local held = redis.call('HGETALL', KEYS[4])
for i = 1, #held, 2 do
  if held[i + 1] == worker then
    redis.call('ZADD', KEYS[5], 'XX', 0, held[i])
    expired[#expired + 1] = held[i]
  end
end
return expired
