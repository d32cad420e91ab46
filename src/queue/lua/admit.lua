-- Admission, checked in the same script as the enqueue that follows it
-- (admit = prelude + admit.lua + enqueue.lua), so that a Slack event costs
-- one round trip: only when every key is in one slot (the buckets and the
-- day's usage live in shard 0; one shard, the default, always qualifies).
-- A follow-up outside a known conversation is not ours, and a retry of a
-- queued message is a duplicate, not a new request: neither takes a token
-- nor is refused. A refused message is not queued, but its ids are marked
-- seen (SET NX checks and marks in one call): a retry of it is a duplicate,
-- and its sender is not told twice.
-- KEYS: as enqueue.lua (1..8, then ARGV[9] seen keys), then ARGV[10]
--       buckets, then the day's usage hash when ARGV[12] > 0
-- ARGV: 1..8 as enqueue.lua, 9 seen keys, 10 buckets, 11 max conversations
--       waiting in the shared ready queue, 12 budget caps, then per bucket:
--       rate per second, burst; then per cap: usage field, cap in USD
-- Returns what enqueue.lua returns, or 'refused rate <i>' (bucket i short),
-- 'refused busy', 'refused budget <i>' (cap i reached).
do
  local nseen, nbuckets, ncaps = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[12])
  -- A follow-up outside a conversation marks nothing seen: the ts it
  -- shares with its app_mention twin must not drop the mention.
  admitted.state = redis.call('HGET', KEYS[1], 'state')
  if ARGV[7] == '1' and not admitted.state then return 'no_conversation' end
  for i = 9, 8 + nseen do
    if not redis.call('SET', KEYS[i], '1', 'NX', 'EX', ARGV[6]) then return 'duplicate' end
  end
  local short = take_tokens(9 + nseen, nbuckets, 1, 0, 13)
  if short > 0 then return 'refused rate ' .. short end
  if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[11]) then return 'refused busy' end
  if ncaps > 0 then
    local usage = KEYS[9 + nseen + nbuckets]
    local argi = 13 + 2 * nbuckets
    for i = 1, ncaps do
      local spent = tonumber(redis.call('HGET', usage, ARGV[argi + 2 * i - 2])) or 0
      if spent >= tonumber(ARGV[argi + 2 * i - 1]) then return 'refused budget ' .. i end
    end
  end
  admitted.checked = true
end
