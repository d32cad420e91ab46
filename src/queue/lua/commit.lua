-- Commit a turn: the reply to the outbox, the answered batch trimmed, the
-- counters bumped, the lease released, the next batch scheduled.
-- KEYS: 1 conv, 2 inbox, 3 leases, 4 holders, 5 ready, 6 affine, 7 workers, 8 wake, 9 outbox, 10 session
-- ARGV: 1 cid, 2 epoch, 3 owner worker ('' to clear), 4 owner slot, 5 owner gen,
--       6 cost (in millionths of a dollar, as every cost here), 7 idle ttl
--       ms, 8 final seq, 9 session id ('' to keep the stored session),
--       10 its transcript from byte ARGV[11] on, 11 that offset (0: the
--       whole transcript; else the stored transcript of the same session
--       must be that long, and the part is appended),
--       12 n: the turn's charge to the day's usage (KEYS[11], when
--       n > 0): ARGV[13 .. 11 + n] spend fields, ARGV[12 + n] the turns
--       field, ARGV[13 + n] the cost, ARGV[14 + n] the usage hash's ttl in
--       seconds; then the reply parts
-- Returns {'ok', owner} (the worker a next batch was routed to and woken, or '')
--       | {'fenced'} | {'session_mismatch'} (nothing written but the charge:
--       send it whole, without the charge)
local conv, inbox, leases = KEYS[1], KEYS[2], KEYS[3]
local cid = ARGV[1]
local now = now_ms()
-- The cost was spent whether or not the commit lands.
local ncharge = tonumber(ARGV[12])
local first_part = 13
if ncharge > 0 then
  local cost = ARGV[13 + ncharge]
  for i = 13, 11 + ncharge do redis.call('HINCRBY', KEYS[11], ARGV[i], cost) end
  -- The day's hash gets its expiry once: when this call made it, the
  -- turns field is new too (only commits write the hash).
  if redis.call('HINCRBY', KEYS[11], ARGV[12 + ncharge], 1) == 1 then
    redis.call('EXPIRE', KEYS[11], ARGV[14 + ncharge])
  end
  first_part = 15 + ncharge
end
-- Every field the commit reads, in one call.
local f = redis.call('HMGET', conv, 'state', 'epoch', 'batch_end', 'dest', 'batch_attempts',
  'progressed', 'session_id', 'turns', 'acked')
if not lease_live(leases, cid, ARGV[2], now, f[1], f[2]) then return {'fenced'} end
if ARGV[9] ~= '' then
  local offset = tonumber(ARGV[11])
  if offset > 0 then
    if f[7] ~= ARGV[9] or redis.call('STRLEN', KEYS[10]) ~= offset then
      return {'session_mismatch'}
    end
    redis.call('APPEND', KEYS[10], ARGV[10])
  else
    redis.call('HSET', conv, 'session_id', ARGV[9])
    redis.call('SET', KEYS[10], ARGV[10], 'PX', ARGV[7])
  end
end
local batch_end = f[3]
-- Only a conversation whose messages were acknowledged has reactions to
-- remove (enqueue.lua marks it).
local acks = f[9] and batch_acks(inbox, batch_end) or '[]'
-- The destination goes with the reply, so egress need not read it back.
local dest = f[4] or ''
-- Nothing was published under this reply's ids before (first attempt, no
-- progress): egress has no reply state to read for them.
local fresh = (f[5] == '1' and not f[6]) and '1' or '0'
for i = first_part, #ARGV do
  local part = i - first_part
  redis.call('XADD', KEYS[9], '*', 'kind', 'final', 'cid', cid,
    'reply_id', cid .. '/' .. batch_end .. '/' .. part, 'part', part,
    'seq', ARGV[8], 'text', ARGV[i], 'acks', acks, 'at_ms', now_arg(), 'dest', dest,
    'fresh', fresh)
end
trim_batch(inbox, batch_end)
-- What after_turn does, with its idle state written in the HSET below.
local waiting = redis.call('XLEN', inbox) > 0
redis.call('HINCRBY', conv, 'cost_micro_usd', ARGV[6])
local done = {'batch_end', 'batch_attempts', 'last_error', 'overflow_notified', 'lease_worker',
  'lease_slot', 'progressed'}
local set = {'turns', (tonumber(f[8]) or 0) + 1, 'last_active_ms', now_arg()}
if not waiting then
  set[#set + 1] = 'state'
  set[#set + 1] = 'idle'
end
if ARGV[3] ~= '' then
  redis.call('HDEL', conv, unpack(done))
  redis.call('HSET', conv, 'owner_worker', ARGV[3], 'owner_slot', ARGV[4], 'owner_gen', ARGV[5],
    unpack(set))
else
  redis.call('HDEL', conv, 'owner_worker', 'owner_slot', 'owner_gen', unpack(done))
  redis.call('HSET', conv, unpack(set))
end
redis.call('ZREM', leases, cid)
redis.call('HDEL', KEYS[4], cid)
redis.call('PEXPIRE', conv, ARGV[7])
redis.call('PEXPIRE', inbox, ARGV[7])
redis.call('PEXPIRE', KEYS[10], ARGV[7])
if not waiting then return {'ok', ''} end
return {'ok', schedule(conv, KEYS[5], KEYS[6], KEYS[7], KEYS[8], cid, now)}
