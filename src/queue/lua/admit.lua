-- Admission, checked in the same script as the enqueue that follows it
-- (admit = prelude + admit.lua + enqueue.lua), so that a Slack event costs
-- one round trip: only when every key is in one slot (the buckets and the
-- day's usage live in shard 0; one shard, the default, always qualifies).
-- A follow-up outside a known conversation is not ours, and a retry of a
-- queued message is a duplicate, not a new request: neither takes a token
-- nor is refused. A refused message is not queued, but its ids are marked
-- seen (SET NX checks and marks in one call): a retry of it is a duplicate,
-- and its sender is not told twice.
-- KEYS: as enqueue.lua
-- ARGV: as enqueue.lua (1 .. 10 + n), then from a = 11 + n: a buckets,
--       a + 1 max conversations waiting in the shared ready queue, a + 2
--       budget caps, then per bucket: name (its key is `<base>:bucket:<name>`,
--       `ShardKeys::bucket`), rate per second, burst; then when there are
--       caps, the UTC day (the usage hash is `<base>:usage:<day>`,
--       `ShardKeys::usage`), and per cap: usage field, cap in millionths of
--       a dollar (as the field counts)
-- Returns what enqueue.lua returns, or 'refused rate <i>' (bucket i short),
-- 'refused busy', 'refused budget <i>' (cap i reached).
do
  local base = ARGV[9]
  local a = 11 + tonumber(ARGV[10])
  local nbuckets, ncaps = tonumber(ARGV[a]), tonumber(ARGV[a + 2])
  -- A follow-up outside a conversation marks nothing seen: the ts it
  -- shares with its app_mention twin must not drop the mention.
  local st = redis.call('HMGET', KEYS[1], 'state', 'owner_worker')
  admitted.state, admitted.owner = st[1], st[2]
  if ARGV[7] == '1' and not admitted.state then return 'no_conversation' end
  for _, key in ipairs(seen_keys()) do
    if not redis.call('SET', key, '1', 'NX', 'EX', ARGV[6]) then return 'duplicate' end
  end
  local buckets = {}
  for i = 1, nbuckets do buckets[i] = shard_key(base, 'bucket:' .. ARGV[a + 3 * i]) end
  local short = take_tokens(buckets, 1, 0, a + 4, 3)
  if short > 0 then return 'refused rate ' .. short end
  if redis.call('ZCARD', shard_key(base, 'ready')) >= tonumber(ARGV[a + 1]) then
    return 'refused busy'
  end
  if ncaps > 0 then
    local argi = a + 3 + 3 * nbuckets
    local usage = shard_key(base, 'usage:' .. ARGV[argi])
    for i = 1, ncaps do
      local spent = tonumber(redis.call('HGET', usage, ARGV[argi + 2 * i - 1])) or 0
      if spent >= tonumber(ARGV[argi + 2 * i]) then return 'refused budget ' .. i end
    end
  end
  admitted.checked = true
end
