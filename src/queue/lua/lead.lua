-- Take or keep a leader lease (one egress consumer per shard).
-- KEYS: 1 lease   ARGV: 1 holder, 2 ttl ms
-- Returns 1 if `holder` leads now.
local current = redis.call('GET', KEYS[1])
if current == false or current == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
