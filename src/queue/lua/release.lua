-- Give up a leader lease, if `holder` still has it.
-- KEYS: 1 lease   ARGV: 1 holder
-- Returns 1 if it was released.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
