-- ARGV: node. Removes every session the node registered; returns {{id, name}, ...} of users
-- left with no session at all.
local skey = 'sb:{n:' .. ARGV[1] .. '}:sessions'
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
return out
