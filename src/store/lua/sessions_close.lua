-- ARGV: node, largest group that carries presence, then triples of user id, session id and
-- the user's `presence` (offline) event line ('' for none). Removes each session as
-- session_close.lua does and announces a user whose last session it was (see announce);
-- returns one flag per triple: 1 when that was the user's last session.
local nkey = 'sb:{n:' .. ARGV[1] .. '}:sessions'
local max = tonumber(ARGV[2])
local out = {}
for i = 3, #ARGV - 2, 3 do
  local uid, sid, line = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local key = ukey(uid, ':sessions')
  local removed = redis.call('HDEL', key, sid)
  redis.call('SREM', nkey, uid .. ' ' .. sid)
  if removed == 1 and redis.call('HLEN', key) == 0 then
    out[#out + 1] = 1
    if line ~= '' then announce(uid, line, max) end
  else
    out[#out + 1] = 0
  end
end
return out
