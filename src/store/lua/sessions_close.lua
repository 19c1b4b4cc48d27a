-- ARGV: node, then pairs of user id and session id. Removes each session as session_close.lua
-- does; returns one flag per pair: 1 when that was the user's last session.
local nkey = 'sb:{n:' .. ARGV[1] .. '}:sessions'
local out = {}
for i = 2, #ARGV - 1, 2 do
  local key = ukey(ARGV[i], ':sessions')
  local removed = redis.call('HDEL', key, ARGV[i + 1])
  redis.call('SREM', nkey, ARGV[i] .. ' ' .. ARGV[i + 1])
  if removed == 1 and redis.call('HLEN', key) == 0 then out[#out + 1] = 1 else out[#out + 1] = 0 end
end
return out
