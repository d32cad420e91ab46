-- A token bucket shared by every process (Slack's rate limits are per app
-- and workspace). Refills at `rate` per second up to `burst`.
-- KEYS: 1 bucket   ARGV: 1 rate per second, 2 burst, 3 tokens wanted,
--                        4 reserve: tokens that must stay behind (so that
--                          sheddable calls leave room for important ones)
-- Returns 0 when granted, else the ms to wait before asking again.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local want = tonumber(ARGV[3]) + tonumber(ARGV[4])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + (now - at) * rate / 1000)
local wait = 0
if tokens >= want then
  tokens = tokens - tonumber(ARGV[3])
else
  wait = math.ceil((want - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 60000)
return wait
