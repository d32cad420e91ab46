-- A turn failed. Retryable and under the attempt limit: schedule it again
-- (anywhere: the owner is cleared, the session resumes from Redis).
-- Otherwise dead-letter the batch with one error reply.
-- KEYS: 1 conv, 2 inbox, 3 leases, 4 holders, 5 ready, 6 affine, 7 workers, 8 wake, 9 outbox, 10 dead
-- ARGV: 1 cid, 2 epoch, 3 reason, 4 retryable ('1'/'0'), 5 max attempts, 6 dead-letter reply text
-- Returns {'retry'} | {'dead', batch_end} | {'fenced'}
local conv, inbox, leases = KEYS[1], KEYS[2], KEYS[3]
local cid = ARGV[1]
local now = now_ms()
if not holds_lease(conv, leases, cid, ARGV[2], now) then return {'fenced'} end
redis.call('ZREM', leases, cid)
redis.call('HDEL', KEYS[4], cid)
redis.call('HDEL', conv, 'owner_worker', 'owner_slot', 'owner_gen', 'lease_worker', 'lease_slot')
redis.call('HSET', conv, 'last_error', ARGV[3])
local attempts = tonumber(redis.call('HGET', conv, 'batch_attempts') or '0')
if ARGV[4] ~= '1' or attempts >= tonumber(ARGV[5]) then
  local batch_end = redis.call('HGET', conv, 'batch_end')
  dead_letter_batch(conv, inbox, KEYS[10], KEYS[9], cid, batch_end, ARGV[3], attempts, ARGV[6], now)
  after_turn(conv, inbox, KEYS[5], KEYS[6], KEYS[7], KEYS[8], cid, now)
  return {'dead', batch_end}
end
schedule(conv, KEYS[5], KEYS[6], KEYS[7], KEYS[8], cid, now)
return {'retry'}
