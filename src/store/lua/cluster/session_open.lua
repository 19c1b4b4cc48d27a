-- Cluster: the user's part of session_open.lua. KEYS: 1 sb:{u:ID}:sessions. ARGV: 1 session
-- id, 2 node, 3 max. Returns {'ok', 1 if first else 0} or {'too_many_sessions'}.
local n = redis.call('HLEN', KEYS[1])
if n >= tonumber(ARGV[3]) then return {'too_many_sessions'} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if n == 0 then return {'ok', 1} end
return {'ok', 0}
