-- Take the next ready conversation for a worker: its own affinity queue
-- first, then the shared queue. The pick is held under a lease at once, so a
-- worker that dies before claiming it loses nothing (the reaper reclaims).
-- KEYS: 1 ready, 2 affine, 3 leases, 4 holders, 5 shared wake list,
--       6 the worker's own wake list
-- ARGV: 1 worker, 2 lease ttl ms, 3 '1' when the caller holds no wake-up
--       for this pop (it pops again because the last pop said more): the
--       wake-up queued with what it takes is removed, so the wake lists
--       keep one entry per waiting conversation and a later wait does not
--       return at once only to pop an empty queue
-- Returns {cid, more} or nil; more is '1' when either queue still holds an
-- entry for this worker (it pops again before it waits for a wake-up).
local worker = ARGV[1]
local take_wake = ARGV[3] == '1'
local now = now_ms()
local cid
local lo, hi = '[' .. worker .. '|', '[' .. worker .. '|\255'
local mine = redis.call('ZRANGEBYLEX', KEYS[2], lo, hi, 'LIMIT', 0, 2)
local more = #mine > 1
if #mine > 0 then
  redis.call('ZREM', KEYS[2], mine[1])
  cid = string.match(mine[1], '^[^|]*|[^|]*|(.*)$')
  if take_wake then redis.call('LPOP', KEYS[6]) end
else
  local top = redis.call('ZPOPMIN', KEYS[1])
  if #top == 0 then return false end
  cid = top[1]
  if take_wake then redis.call('LPOP', KEYS[5]) end
end
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[2]), cid)
redis.call('HSET', KEYS[4], cid, worker)
if not more then more = redis.call('ZCARD', KEYS[1]) > 0 end
return {cid, more and '1' or '0'}
