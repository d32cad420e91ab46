-- Claim a popped conversation: freeze its batch, count the attempt, bump the
-- epoch, start the lease. A batch past max attempts is dead-lettered instead.
-- KEYS: 1 conv, 2 inbox, 3 leases, 4 holders, 5 ready, 6 affine, 7 workers, 8 wake, 9 outbox, 10 dead
-- ARGV: 1 cid, 2 worker, 3 slot, 4 lease ttl ms, 5 max attempts, 6 dead-letter reply text
-- Returns {'claimed', epoch, attempt, batch_end, owner_worker, owner_slot, owner_gen,
--          session_id, dest, id1, msg1, id2, msg2, ...}
--       | {'stale'} | {'dead', batch_end} | {'lost'}
local conv, inbox, leases, holders = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local cid, worker = ARGV[1], ARGV[2]
local now = now_ms()
if redis.call('HGET', holders, cid) ~= worker then return {'lost'} end
local function release()
  redis.call('ZREM', leases, cid)
  redis.call('HDEL', holders, cid)
end
if redis.call('HGET', conv, 'state') ~= 'scheduled' then
  release()
  return {'stale'}
end
local batch_end = redis.call('HGET', conv, 'batch_end')
if not batch_end then
  local last = redis.call('XREVRANGE', inbox, '+', '-', 'COUNT', 1)
  if #last == 0 then
    release()
    redis.call('HSET', conv, 'state', 'idle')
    return {'stale'}
  end
  batch_end = last[1][1]
  redis.call('HSET', conv, 'batch_end', batch_end, 'batch_attempts', 0)
end
local attempt = redis.call('HINCRBY', conv, 'batch_attempts', 1)
if attempt > tonumber(ARGV[5]) then
  local reason = redis.call('HGET', conv, 'last_error') or 'worker lost'
  dead_letter_batch(conv, inbox, KEYS[10], KEYS[9], cid, batch_end, reason, attempt - 1, ARGV[6], now)
  release()
  after_turn(conv, inbox, KEYS[5], KEYS[6], KEYS[7], KEYS[8], cid, now)
  return {'dead', batch_end}
end
local epoch = redis.call('HINCRBY', conv, 'epoch', 1)
redis.call('HSET', conv, 'state', 'running', 'lease_worker', worker, 'lease_slot', ARGV[3])
redis.call('ZADD', leases, now + tonumber(ARGV[4]), cid)
local f = redis.call('HMGET', conv, 'owner_worker', 'owner_slot', 'owner_gen', 'session_id', 'dest')
local out = {'claimed', tostring(epoch), tostring(attempt), batch_end,
  f[1] or '', f[2] or '', f[3] or '', f[4] or '', f[5] or ''}
for _, e in ipairs(redis.call('XRANGE', inbox, '-', batch_end)) do
  out[#out + 1] = e[1]
  out[#out + 1] = e[2][2]
end
return out
