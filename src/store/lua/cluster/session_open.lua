-- Cluster: the user's part of session_open.lua. KEYS: 1 sb:{u:ID}:sessions, 2 sb:{u:ID}:handover.
-- ARGV: 1 session id, 2 node, 3 max. Returns {'ok', 1 if first else 0} or {'too_many_sessions'}.
-- Sessions a draining node handed over (session_handover.lua) end here, silently: the user is
-- back, and for its audience it never went offline. Their entries in the old node's set (another
-- slot) stay for its reaper, which finds them gone and announces nothing.
local n = redis.call('HLEN', KEYS[1])
local first = n == 0
if n > 0 then
  local flat = redis.call('HGETALL', KEYS[2])
  if #flat > 0 then
    for i = 1, #flat, 2 do redis.call('HDEL', KEYS[1], flat[i]) end
    redis.call('DEL', KEYS[2])
    n = redis.call('HLEN', KEYS[1])
  end
end
if n >= tonumber(ARGV[3]) then return {'too_many_sessions'} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if first then return {'ok', 1} end
return {'ok', 0}
