-- Shared by every queue script (prepended at build time).
-- Time comes from the Redis server, so every host agrees on lease deadlines.
-- Read once per script: one clock for everything a script does.
local script_now, script_now_arg = nil, nil
local function now_ms()
  if not script_now then
    local t = redis.call('TIME')
    local ms = math.floor(tonumber(t[2]) / 1000)
    script_now = tonumber(t[1]) * 1000 + ms
    script_now_arg = t[1] .. string.format('%03d', ms)
  end
  return script_now
end

-- The same instant as a command argument: the decimal string redis.call
-- would make of now_ms(), made once. Lua turns a number into a string
-- with a printf of a double, about half a microsecond each time, so
-- scripts pass this (and string constants such as '0') rather than
-- numbers wherever a command takes the time.
local function now_arg()
  now_ms()
  return script_now_arg
end

-- A shard-wide key, from the shard's base (`ShardKeys::base`): `name` is
-- what follows the base in keys.rs (`ShardKeys::ready` is `<base>:ready`;
-- a unit test checks the names these scripts use). Only for keys in the
-- shard's hash tag, so in the slot of the script's KEYS.
local function shard_key(base, name)
  return base .. ':' .. name
end

-- The seen keys of enqueue.lua (and admit.lua): `<base>:seen:<dedupe key>`
-- (`ShardKeys::seen`) for each of the ARGV[10] dedupe keys after it.
local function seen_keys()
  local keys = {}
  for i = 1, tonumber(ARGV[10]) do keys[i] = shard_key(ARGV[9], 'seen:' .. ARGV[10 + i]) end
  return keys
end

-- What admit.lua already did when enqueue.lua runs after it in the same
-- script: checked and marked the seen keys, and read the conversation's
-- state and owner (false when absent).
local admitted = { checked = false, state = false, owner = false }

-- The caller holds the conversation's lease at `epoch`, and it has not
-- expired; `state` and `held` are the conversation's state and epoch fields.
local function lease_live(leases, cid, epoch, now, state, held)
  if state ~= 'running' or held ~= epoch then return false end
  local deadline = redis.call('ZSCORE', leases, cid)
  return deadline ~= false and tonumber(deadline) >= now
end

-- The caller holds the conversation's lease at `epoch`, and it has not expired.
local function holds_lease(conv, leases, cid, epoch, now)
  local st = redis.call('HMGET', conv, 'state', 'epoch')
  return lease_live(leases, cid, epoch, now, st[1], st[2])
end

-- Route a conversation with waiting work to a ready queue: its owner's
-- (affinity) while the owner's heartbeat is live, else the shared one, and
-- wake who should take it. `owner` is the conversation's owner_worker field
-- (false when none). Returns the owner's name when routed to it, or ''.
-- The caller sets the conversation's state (schedule below, or enqueue.lua
-- in the HSET it makes anyway).
-- The owner's wake list (`<wake>:w:<owner>`, see `ShardKeys::wake_worker`)
-- is named here rather than in KEYS: the caller cannot know the owner, and
-- the key shares the shard's hash tag, so it is in the same slot.
local function route(ready, affine, workers, wake, cid, now, owner)
  if owner then
    local hb = redis.call('ZSCORE', workers, owner)
    if hb and tonumber(hb) >= now then
      local member = owner .. '|' .. string.format('%015d', now) .. '|' .. cid
      redis.call('ZADD', affine, '0', member)
      local own_wake = wake .. ':w:' .. owner
      -- At most 1000 wake-ups wait (trimmed only when past that). The list
      -- expires an hour after it was made (its owner pops it empty, which
      -- deletes it, long before that; a dead owner's list goes).
      local waiting = redis.call('RPUSH', own_wake, '1')
      if waiting == 1 then
        redis.call('EXPIRE', own_wake, 3600)
      elseif waiting > 1000 then
        redis.call('LTRIM', own_wake, -1000, -1)
      end
      return owner
    end
  end
  redis.call('ZADD', ready, 'NX', now_arg(), cid)
  if redis.call('RPUSH', wake, '1') > 1000 then redis.call('LTRIM', wake, -1000, -1) end
  return ''
end

-- Put a conversation with waiting work in a ready queue (route) and mark it
-- scheduled. Returns the owner's name when routed to it, or ''.
local function schedule(conv, ready, affine, workers, wake, cid, now)
  local owner = redis.call('HGET', conv, 'owner_worker')
  local routed = route(ready, affine, workers, wake, cid, now, owner)
  redis.call('HSET', conv, 'state', 'scheduled', 'scheduled_ms', now_arg())
  return routed
end

-- The source ids (Slack ts) of the batch's messages, as a JSON array: egress
-- removes the acknowledgement reactions it added to them.
local function batch_acks(inbox, batch_end)
  local ids = {}
  for _, e in ipairs(redis.call('XRANGE', inbox, '-', batch_end)) do
    local ok, m = pcall(cjson.decode, e[2][2])
    if ok and type(m) == 'table' and type(m['external_id']) == 'string' then
      ids[#ids + 1] = m['external_id']
    end
  end
  if #ids == 0 then return '[]' end
  return cjson.encode(ids)
end

-- Inbox ids are "ms-seq"; the id right after `id`.
local function next_id(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return ms .. '-' .. (tonumber(seq) + 1)
end

-- Remove the frozen batch (every inbox entry up to batch_end).
local function trim_batch(inbox, batch_end)
  redis.call('XTRIM', inbox, 'MINID', next_id(batch_end))
end

-- Move the frozen batch to the dead-letter stream and queue one honest
-- error reply under the batch's reply id.
local function dead_letter_batch(conv, inbox, dead, outbox, cid, batch_end, reason, attempts, text, now)
  local entries = redis.call('XRANGE', inbox, '-', batch_end)
  local msgs = {}
  for _, e in ipairs(entries) do msgs[#msgs + 1] = e[2][2] end
  redis.call('XADD', dead, '*', 'cid', cid, 'reason', reason, 'attempts', attempts,
    'batch', batch_end, 'messages', '[' .. table.concat(msgs, ',') .. ']',
    'dest', redis.call('HGET', conv, 'dest') or '', 'at_ms', now_arg())
  redis.call('XADD', outbox, '*', 'kind', 'final', 'cid', cid,
    'reply_id', cid .. '/' .. batch_end .. '/0', 'part', '0', 'seq', '4611686018427387903',
    'error', reason, 'text', text, 'acks', batch_acks(inbox, batch_end), 'at_ms', now_arg())
  trim_batch(inbox, batch_end)
  redis.call('HDEL', conv, 'batch_end', 'batch_attempts', 'last_error', 'progressed')
end

-- After a turn ends (commit, fail, dead letter): run the next batch or go idle.
local function after_turn(conv, inbox, ready, affine, workers, wake, cid, now)
  if redis.call('XLEN', inbox) > 0 then
    return schedule(conv, ready, affine, workers, wake, cid, now)
  end
  redis.call('HSET', conv, 'state', 'idle')
  return ''
end

-- Token buckets shared by every process: take `wanted` tokens from each of
-- the buckets `keys` in order, each refilling at its rate per second up to
-- its burst (ARGV[argi], ARGV[argi + 1] for the first bucket; each next
-- bucket's pair is `stride` arguments on), leaving `reserve` tokens behind.
-- The first bucket short stops the rest (those after it are not touched).
-- Returns 0, 0 when all were granted, else i, ms to wait for the first
-- bucket i (from 1) that was short.
local function take_tokens(keys, wanted, reserve, argi, stride)
  local now = now_ms()
  local want = wanted + reserve
  for i, key in ipairs(keys) do
    local at_arg = argi + stride * (i - 1)
    local rate, burst = tonumber(ARGV[at_arg]), tonumber(ARGV[at_arg + 1])
    local state = redis.call('HMGET', key, 'tokens', 'at', 'ttl_at')
    local tokens = tonumber(state[1]) or burst
    local at = tonumber(state[2]) or now
    tokens = math.min(burst, tokens + (now - at) * rate / 1000)
    local wait = 0
    if tokens >= want then
      tokens = tokens - wanted
    else
      wait = math.ceil((want - tokens) * 1000 / rate)
    end
    -- The TTL (a minute past a full refill) is renewed every 10 s at most:
    -- a busy bucket cannot expire, and most calls skip the PEXPIRE.
    local ttl_at = tonumber(state[3])
    if ttl_at and now - ttl_at < 10000 then
      redis.call('HSET', key, 'tokens', tostring(tokens), 'at', now_arg())
    else
      redis.call('HSET', key, 'tokens', tostring(tokens), 'at', now_arg(), 'ttl_at', now_arg())
      redis.call('PEXPIRE', key, math.ceil(burst * 1000 / rate) + 60000)
    end
    if wait > 0 then return i, wait end
  end
  return 0, 0
end
