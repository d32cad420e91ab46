-- Take the next ready conversation for a worker and claim it, in one round
-- trip: its own affinity queue first, then the shared queue; then freeze its
-- batch (every inbox entry up to the newest), count the attempt, bump the
-- epoch and start the lease. A batch past max attempts is dead-lettered
-- instead.
-- KEYS: 1 leases, 2 holders, 3 ready, 4 affine, 5 workers, 6 wake, 7 outbox,
--       8 dead, 9 the worker's own wake list
-- ARGV: 1 conversation key prefix, 2 inbox key prefix (`ShardKeys::conv_prefix`
--       and `inbox_prefix`: the popped conversation's keys are these plus its
--       id, named here because only the pop knows the id; they carry the
--       shard's hash tag, so they are in the same slot as KEYS),
--       3 worker, 4 slot, 5 lease ttl ms, 6 max attempts,
--       7 dead-letter reply text,
--       8 '1' when the caller holds no wake-up for this pop (it pops again
--       because the last pop said more): the wake-up queued with what it
--       takes is removed, so the worker's next wait does not return at once
--       only to pop an empty queue
-- Returns false when nothing is ready, else {outcome, cid, more, ...}; more
-- is '1' when either queue still holds an entry for this worker (it pops
-- again before it waits for a wake-up):
--   {'claimed', cid, more, epoch, attempt, batch_end, owner_worker,
--    owner_slot, owner_gen, session_id, dest, id1, msg1, id2, msg2, ...}
--   | {'stale', cid, more} (its state moved on: pop again)
--   | {'dead', cid, more, batch_end}
local leases, holders, ready, affine = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local worker = ARGV[3]
local now = now_ms()
local cid
local lo, hi = '[' .. worker .. '|', '[' .. worker .. '|\255'
local mine = redis.call('ZRANGEBYLEX', affine, lo, hi, 'LIMIT', 0, 2)
local more = #mine > 1
if #mine > 0 then
  redis.call('ZREM', affine, mine[1])
  cid = string.match(mine[1], '^[^|]*|[^|]*|(.*)$')
  if ARGV[8] == '1' then redis.call('LPOP', KEYS[9]) end
else
  local top = redis.call('ZPOPMIN', ready)
  if #top == 0 then return false end
  cid = top[1]
  if ARGV[8] == '1' then redis.call('LPOP', KEYS[6]) end
end
if not more then more = redis.call('ZCARD', ready) > 0 end
more = more and '1' or '0'

local conv, inbox = ARGV[1] .. cid, ARGV[2] .. cid
-- Everything the claim reads, in one call.
local f = redis.call('HMGET', conv, 'state', 'batch_end', 'batch_attempts', 'epoch',
  'owner_worker', 'owner_slot', 'owner_gen', 'session_id', 'dest', 'last_id')
-- Another pop or a reclaim got there first: leave its lease alone.
if f[1] ~= 'scheduled' then return {'stale', cid, more} end
local batch_end = f[2]
-- A batch frozen by an earlier attempt keeps its count; a new one starts at 0.
local attempt = batch_end and (tonumber(f[3]) or 0) + 1 or 1
-- A new batch ends at the newest message: the one enqueue.lua recorded,
-- else (none recorded, or already trimmed) the inbox's last entry.
local entries
if not batch_end then
  if f[10] then
    entries = redis.call('XRANGE', inbox, '-', f[10])
    if #entries > 0 then batch_end = f[10] end
  end
  if not batch_end then
    local last = redis.call('XREVRANGE', inbox, '+', '-', 'COUNT', 1)
    if #last == 0 then
      redis.call('HSET', conv, 'state', 'idle')
      return {'stale', cid, more}
    end
    batch_end = last[1][1]
    entries = nil
  end
end
if attempt > tonumber(ARGV[6]) then
  local reason = redis.call('HGET', conv, 'last_error') or 'worker lost'
  dead_letter_batch(conv, inbox, KEYS[8], KEYS[7], cid, batch_end, reason, attempt - 1, ARGV[7], now)
  after_turn(conv, inbox, ready, affine, KEYS[5], KEYS[6], cid, now)
  return {'dead', cid, more, batch_end}
end
local epoch = tostring((tonumber(f[4]) or 0) + 1)
attempt = tostring(attempt)
redis.call('HSET', conv, 'state', 'running', 'lease_worker', worker, 'lease_slot', ARGV[4],
  'batch_end', batch_end, 'batch_attempts', attempt, 'epoch', epoch)
redis.call('ZADD', leases, now + tonumber(ARGV[5]), cid)
redis.call('HSET', holders, cid, worker)
local out = {'claimed', cid, more, epoch, attempt, batch_end,
  f[5] or '', f[6] or '', f[7] or '', f[8] or '', f[9] or ''}
for _, e in ipairs(entries or redis.call('XRANGE', inbox, '-', batch_end)) do
  out[#out + 1] = e[1]
  out[#out + 1] = e[2][2]
end
return out
