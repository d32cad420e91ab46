-- Token buckets shared by every process (Slack's rate limits are per app
-- and workspace; admission's per user and channel): see `take_tokens` in
-- the prelude.
-- KEYS: the buckets   ARGV: 1 tokens wanted, 2 reserve: tokens that must
--                     stay behind (so that sheddable calls leave room for
--                     important ones), then per bucket: rate per second, burst
-- Returns {0, 0} when all were granted, else {i, ms to wait} for the first
-- bucket i (from 1) that was short.
local i, wait = take_tokens(KEYS, tonumber(ARGV[1]), tonumber(ARGV[2]), 3, 2)
return {i, wait}
