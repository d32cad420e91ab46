-- Token buckets shared by every process (Slack's rate limits are per app
-- and workspace; admission's per user and channel). Each refills at its
-- rate per second up to its burst. Buckets are taken from in order; the
-- first one short stops the rest (those after it are not touched).
-- KEYS: the buckets   ARGV: 1 tokens wanted, 2 reserve: tokens that must
--                     stay behind (so that sheddable calls leave room for
--                     important ones), then per bucket: rate per second, burst
-- Returns {0, 0} when all were granted, else {i, ms to wait} for the first
-- bucket i (from 1) that was short.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local wanted = tonumber(ARGV[1])
local want = wanted + tonumber(ARGV[2])
for i = 1, #KEYS do
  local rate, burst = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
  local state = redis.call('HMGET', KEYS[i], 'tokens', 'at')
  local tokens = tonumber(state[1]) or burst
  local at = tonumber(state[2]) or now
  tokens = math.min(burst, tokens + (now - at) * rate / 1000)
  local wait = 0
  if tokens >= want then
    tokens = tokens - wanted
  else
    wait = math.ceil((want - tokens) * 1000 / rate)
  end
  redis.call('HSET', KEYS[i], 'tokens', tostring(tokens), 'at', now)
  redis.call('PEXPIRE', KEYS[i], math.ceil(burst * 1000 / rate) + 60000)
  if wait > 0 then return {i, wait} end
end
return {0, 0}
