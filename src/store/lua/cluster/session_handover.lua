-- Cluster: sessions_handover.lua for one session. KEYS: 1 sb:{u:ID}:sessions,
-- 2 sb:{u:ID}:handover. ARGV: 1 session id, 2 node. Marks the session handed over if it is
-- still the node's.
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
  redis.call('EXPIRE', KEYS[2], 86400)
end
return 0
