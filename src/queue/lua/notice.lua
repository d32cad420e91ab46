-- A notice to a person (a refusal, their place in line): one outbox entry,
-- posted like a reply, keyed by `reply_id` so it goes out once. Creates the
-- conversation record when missing, for its destination.
-- KEYS: 1 conv, 2 outbox   ARGV: 1 cid, 2 destination json, 3 reply id, 4 text, 5 idle ttl ms
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'cid', ARGV[1], 'state', 'idle', 'epoch', '0', 'created_ms', now_arg(),
    'dest', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
end
redis.call('XADD', KEYS[2], '*', 'kind', 'notice', 'cid', ARGV[1], 'reply_id', ARGV[3],
  'part', '0', 'seq', '0', 'text', ARGV[4], 'at_ms', now_arg())
return 1
