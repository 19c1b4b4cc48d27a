-- Cluster: removes one session of a user (session close, reaping). KEYS: 1 sb:{u:ID}:sessions,
-- 2 sb:{u:ID}. ARGV: 1 session id. Returns the user's name when that was the last session,
-- else false.
if redis.call('HDEL', KEYS[1], ARGV[1]) == 1 and redis.call('HLEN', KEYS[1]) == 0 then
  return redis.call('HGET', KEYS[2], 'name') or ''
end
return false
