-- Enqueue one message, deduplicated, and schedule its conversation.
-- KEYS: 1 conv, 2 inbox
-- ARGV: 1 cid, 2 message json, 3 destination json, 4 inbox cap, 5 idle ttl ms,
--       6 dedupe ttl s, 7 existing only ('1': follow-ups),
--       8 source id to acknowledge ('' for none): egress shows the user it was seen,
--       9 the shard's base (`ShardKeys::base`), 10 n, 11 .. 10 + n the
--       message's dedupe keys (admit.lua's arguments follow)
-- The other keys, all in the shard's hash tag (so in the slot of KEYS), are
-- named here from the base (shard_key, seen_keys in the prelude): the
-- shard-wide ones (ready, affine, workers, wake, outbox, dead) and each
-- dedupe key's seen mark. An event's call is then short, and it is built,
-- packed and sent for every event.
-- Returns one string, words separated by spaces (one bulk reply is the
-- cheapest for the client to read): 'queued <id> <position> <ahead> <owner>'
-- | 'duplicate' | 'overflow' | 'no_conversation'
--   (ahead: conversations before it in the shared ready queue when this message
--   put it there, else '-'; owner: the worker woken for it, else empty, last
--   so that it may hold anything)
-- The reply to a message that overflowed its conversation's inbox.
local OVERFLOW_TEXT = 'Too many messages are waiting in this conversation, so I had '
  .. 'to set the latest aside. Please wait for my reply before sending more.'
local conv, inbox = KEYS[1], KEYS[2]
local outbox, dead = shard_key(ARGV[9], 'outbox'), shard_key(ARGV[9], 'dead')
local cid = ARGV[1]
local now = now_ms()
-- The conversation's state and owner; false when it does not exist (every
-- script that writes the hash sets a state).
local state, owner = admitted.state, admitted.owner
if not admitted.checked then
  local seen = seen_keys()
  for _, key in ipairs(seen) do
    if redis.call('EXISTS', key) == 1 then return 'duplicate' end
  end
  local st = redis.call('HMGET', conv, 'state', 'owner_worker')
  state, owner = st[1], st[2]
  if ARGV[7] == '1' and not state then return 'no_conversation' end
  for _, key in ipairs(seen) do redis.call('SET', key, '1', 'EX', ARGV[6]) end
end
-- What this message writes to the conversation, in one HSET at the end.
local fields = {'dest', ARGV[3], 'last_active_ms', now_arg()}
local new = not state
if new then
  state = 'idle'
  for _, f in ipairs({'cid', cid, 'epoch', '0', 'created_ms', now_arg()}) do fields[#fields + 1] = f end
end
local function write_conv()
  redis.call('HSET', conv, unpack(fields))
  redis.call('PEXPIRE', conv, ARGV[5])
end
local len = redis.call('XLEN', inbox)
if len >= tonumber(ARGV[4]) then
  if new then
    fields[#fields + 1] = 'state'
    fields[#fields + 1] = 'idle'
  end
  write_conv()
  redis.call('XADD', dead, '*', 'cid', cid, 'reason', 'inbox_overflow', 'attempts', '0',
    'batch', '', 'messages', '[' .. ARGV[2] .. ']', 'dest', ARGV[3], 'at_ms', now_arg())
  if redis.call('HSETNX', conv, 'overflow_notified', '1') == 1 then
    local n = redis.call('HINCRBY', conv, 'overflows', 1)
    redis.call('XADD', outbox, '*', 'kind', 'final', 'cid', cid,
      'reply_id', cid .. '/overflow/' .. n, 'part', '0', 'seq', '0',
      'error', 'inbox_overflow', 'text', OVERFLOW_TEXT, 'at_ms', now_arg())
  end
  return 'overflow'
end
local id = redis.call('XADD', inbox, '*', 'm', ARGV[2])
-- The newest message: the claim freezes its batch up to here.
fields[#fields + 1] = 'last_id'
fields[#fields + 1] = id
if ARGV[8] ~= '' then
  redis.call('XADD', outbox, '*', 'kind', 'ack', 'cid', cid, 'reply_id', cid .. '/ack/' .. id,
    'part', '0', 'seq', '0', 'text', '', 'acks', cjson.encode({ARGV[8]}), 'at_ms', now_arg())
  -- Its commits look for acknowledgements to remove (until it expires).
  fields[#fields + 1] = 'acked'
  fields[#fields + 1] = '1'
end
redis.call('PEXPIRE', inbox, ARGV[5])
local routed, ahead = '', false
if state == 'idle' then
  local ready = shard_key(ARGV[9], 'ready')
  routed = route(ready, shard_key(ARGV[9], 'ready:affine'), shard_key(ARGV[9], 'workers'),
    shard_key(ARGV[9], 'wake'), cid, now, owner)
  for _, f in ipairs({'state', 'scheduled', 'scheduled_ms', now_arg()}) do fields[#fields + 1] = f end
  -- Only the message that puts its conversation in the shared queue learns
  -- its place: the sender is told once per wait, not once per message.
  if routed == '' then ahead = redis.call('ZRANK', ready, cid) end
end
write_conv()
return 'queued ' .. id .. ' ' .. (len + 1) .. ' ' .. (ahead and tostring(ahead) or '-') .. ' ' .. routed
