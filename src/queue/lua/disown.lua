-- A slot is evicted: the conversation no longer lives there. Clears the
-- owner only if it is still this slot at this generation.
-- KEYS: 1 conv   ARGV: 1 worker, 2 slot, 3 generation
-- Returns 1 if cleared.
local o = redis.call('HMGET', KEYS[1], 'owner_worker', 'owner_slot', 'owner_gen')
if o[1] == ARGV[1] and o[2] == ARGV[2] and o[3] == ARGV[3] then
  redis.call('HDEL', KEYS[1], 'owner_worker', 'owner_slot', 'owner_gen')
  return 1
end
return 0
