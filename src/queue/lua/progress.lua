-- Publish a reply's text so far (a later seq supersedes an earlier one).
-- KEYS: 1 conv, 2 leases, 3 outbox   ARGV: 1 cid, 2 epoch, 3 part, 4 seq, 5 text
-- Returns 1, or 0 when fenced.
local now = now_ms()
local f = redis.call('HMGET', KEYS[1], 'state', 'epoch', 'batch_end')
if not lease_live(KEYS[2], ARGV[1], ARGV[2], now, f[1], f[2]) then return 0 end
local batch_end = f[3]
-- The final reply then updates what this posts (see commit.lua's fresh).
redis.call('HSET', KEYS[1], 'progressed', '1')
redis.call('XADD', KEYS[3], '*', 'kind', 'progress', 'cid', ARGV[1],
  'reply_id', ARGV[1] .. '/' .. batch_end .. '/' .. ARGV[3], 'part', ARGV[3],
  'seq', ARGV[4], 'text', ARGV[5], 'at_ms', now_arg())
return 1
