-- ARGV: node, reaping node. Removes every session the node registered; returns {{id, name}, ...}
-- of users left with no session at all. When another node reaps, it leaves the mark
-- sb:{n:NODE}:reaped, so that a node reaped while alive learns it at its next heartbeat even if
-- a session_open has put it back into sb:nodes meanwhile; a node reaping itself clears it.
local skey = 'sb:{n:' .. ARGV[1] .. '}:sessions'
local mark = 'sb:{n:' .. ARGV[1] .. '}:reaped'
local out = {}
for _, entry in ipairs(redis.call('SMEMBERS', skey)) do
  local uid, sid = string.match(entry, '^(%d+) (.+)$')
  if uid then
    local key = ukey(uid, ':sessions')
    if redis.call('HDEL', key, sid) == 1 and redis.call('HLEN', key) == 0 then
      out[#out + 1] = {uid, redis.call('HGET', ukey(uid, ''), 'name') or ''}
    end
  end
end
redis.call('DEL', skey)
redis.call('ZREM', 'sb:nodes', ARGV[1])
redis.call('HDEL', 'sb:conns', ARGV[1])
if ARGV[2] and ARGV[2] ~= ARGV[1] then
  -- A day is far longer than any outage a node survives; the mark of a node that is gone for
  -- good must not stay forever.
  redis.call('SET', mark, ARGV[2], 'EX', 86400)
else
  redis.call('DEL', mark)
end
return out
