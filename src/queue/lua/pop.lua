-- Take the next ready conversation for a worker: its own affinity queue
-- first, then the shared queue. The pick is held under a lease at once, so a
-- worker that dies before claiming it loses nothing (the reaper reclaims).
-- KEYS: 1 ready, 2 affine, 3 leases, 4 holders
-- ARGV: 1 worker, 2 lease ttl ms
-- Returns {cid, more} or nil; more is '1' when either queue still holds an
-- entry for this worker (it pops again before it waits for a wake-up).
local worker = ARGV[1]
local now = now_ms()
local cid
local lo, hi = '[' .. worker .. '|', '[' .. worker .. '|\255'
local mine = redis.call('ZRANGEBYLEX', KEYS[2], lo, hi, 'LIMIT', 0, 2)
local more = #mine > 1
if #mine > 0 then
  redis.call('ZREM', KEYS[2], mine[1])
  cid = string.match(mine[1], '^[^|]*|[^|]*|(.*)$')
else
  local top = redis.call('ZPOPMIN', KEYS[1])
  if #top == 0 then return false end
  cid = top[1]
end
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[2]), cid)
redis.call('HSET', KEYS[4], cid, worker)
if not more then more = redis.call('ZCARD', KEYS[1]) > 0 end
return {cid, more and '1' or '0'}
