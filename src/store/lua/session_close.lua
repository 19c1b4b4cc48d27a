-- ARGV: user id, session id, node. Returns 1 when that was the user's last session.
local key = ukey(ARGV[1], ':sessions')
local removed = redis.call('HDEL', key, ARGV[2])
redis.call('SREM', 'sb:{n:' .. ARGV[3] .. '}:sessions', ARGV[1] .. ' ' .. ARGV[2])
if removed == 1 and redis.call('HLEN', key) == 0 then return 1 end
return 0
