-- ARGV: user id, session id, node, max sessions. Returns {'ok', 1 if first else 0} or {'too_many_sessions'}.
local key = ukey(ARGV[1], ':sessions')
local n = redis.call('HLEN', key)
if n >= tonumber(ARGV[4]) then return {'too_many_sessions'} end
redis.call('HSET', key, ARGV[2], ARGV[3])
redis.call('SADD', 'sb:{n:' .. ARGV[3] .. '}:sessions', ARGV[1] .. ' ' .. ARGV[2])
if n == 0 then return {'ok', 1} end
return {'ok', 0}
