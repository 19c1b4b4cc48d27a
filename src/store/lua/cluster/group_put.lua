-- Cluster: creates a group's keys. KEYS: 1 sb:{g:ID}, 2 sb:{g:ID}:members. ARGV: 1 name,
-- 2 desc, 3 creator id.
redis.call('HSET', KEYS[1], 'name', ARGV[1], 'desc', ARGV[2])
redis.call('HSET', KEYS[2], ARGV[3], 'creator')
return 1
