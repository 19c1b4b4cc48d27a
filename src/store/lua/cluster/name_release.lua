-- Cluster: removes a name from a name index only while it still names the given id (a group
-- deleted by its last member). KEYS: 1 the index hash. ARGV: 1 folded name, 2 id.
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
