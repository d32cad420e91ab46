-- Commit a turn: the reply to the outbox, the answered batch trimmed, the
-- counters bumped, the lease released, the next batch scheduled.
-- KEYS: 1 conv, 2 inbox, 3 leases, 4 holders, 5 ready, 6 affine, 7 workers, 8 wake, 9 outbox, 10 session
-- ARGV: 1 cid, 2 epoch, 3 owner worker ('' to clear), 4 owner slot, 5 owner gen,
--       6 cost usd, 7 idle ttl ms, 8 final seq, 9 session id ('' to keep the
--       stored session), 10 its transcript from byte ARGV[11] on, 11 that
--       offset (0: the whole transcript; else the stored transcript of the
--       same session must be that long, and the part is appended),
--       12.. reply parts
-- Returns {'ok', owner} (the worker a next batch was routed to and woken, or '')
--       | {'fenced'} | {'session_mismatch'} (nothing written: send it whole)
local conv, inbox, leases = KEYS[1], KEYS[2], KEYS[3]
local cid = ARGV[1]
local now = now_ms()
if not holds_lease(conv, leases, cid, ARGV[2], now) then return {'fenced'} end
if ARGV[9] ~= '' then
  local offset = tonumber(ARGV[11])
  if offset > 0 then
    if redis.call('HGET', conv, 'session_id') ~= ARGV[9]
      or redis.call('STRLEN', KEYS[10]) ~= offset then
      return {'session_mismatch'}
    end
    redis.call('APPEND', KEYS[10], ARGV[10])
  else
    redis.call('HSET', conv, 'session_id', ARGV[9])
    redis.call('SET', KEYS[10], ARGV[10], 'PX', ARGV[7])
  end
end
local batch_end = redis.call('HGET', conv, 'batch_end')
local acks = batch_acks(inbox, batch_end)
-- The destination goes with the reply, so egress need not read it back.
local dest = redis.call('HGET', conv, 'dest') or ''
for i = 12, #ARGV do
  local part = i - 12
  redis.call('XADD', KEYS[9], '*', 'kind', 'final', 'cid', cid,
    'reply_id', cid .. '/' .. batch_end .. '/' .. part, 'part', part,
    'seq', ARGV[8], 'text', ARGV[i], 'acks', acks, 'at_ms', now, 'dest', dest)
end
trim_batch(inbox, batch_end)
redis.call('HINCRBY', conv, 'turns', 1)
redis.call('HINCRBYFLOAT', conv, 'cost_usd', ARGV[6])
redis.call('HDEL', conv, 'batch_end', 'batch_attempts', 'last_error', 'overflow_notified',
  'lease_worker', 'lease_slot')
if ARGV[3] ~= '' then
  redis.call('HSET', conv, 'owner_worker', ARGV[3], 'owner_slot', ARGV[4], 'owner_gen', ARGV[5])
else
  redis.call('HDEL', conv, 'owner_worker', 'owner_slot', 'owner_gen')
end
redis.call('HSET', conv, 'last_active_ms', now)
redis.call('ZREM', leases, cid)
redis.call('HDEL', KEYS[4], cid)
redis.call('PEXPIRE', conv, ARGV[7])
redis.call('PEXPIRE', inbox, ARGV[7])
redis.call('PEXPIRE', KEYS[10], ARGV[7])
return {'ok', after_turn(conv, inbox, KEYS[5], KEYS[6], KEYS[7], KEYS[8], cid, now)}
