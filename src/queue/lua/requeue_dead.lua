-- Retry a dead letter: its messages go back to the conversation's inbox.
-- KEYS: 1 dead, 2 conv, 3 inbox, 4 ready, 5 affine, 6 workers, 7 wake
-- ARGV: 1 dead-letter id, 2 cid, 3 idle ttl ms, 4 destination json, 5.. message json
-- Returns the number of messages requeued, or -1 if the dead letter is gone.
local now = now_ms()
if #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) == 0 then return -1 end
redis.call('XDEL', KEYS[1], ARGV[1])
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('HSET', KEYS[2], 'cid', ARGV[2], 'state', 'idle', 'epoch', '0', 'created_ms', now_arg(),
    'dest', ARGV[4])
end
local id
for i = 5, #ARGV do id = redis.call('XADD', KEYS[3], '*', 'm', ARGV[i]) end
-- The newest message, as enqueue.lua records it.
if id then redis.call('HSET', KEYS[2], 'last_id', id) end
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
if redis.call('HGET', KEYS[2], 'state') == 'idle' then
  schedule(KEYS[2], KEYS[4], KEYS[5], KEYS[6], KEYS[7], ARGV[2], now)
end
return #ARGV - 4
