-- ARGV: user id, group id. Returns {'ok', name, {members before}}, {'no_such_group'} or {'not_a_member'}.
local name = redis.call('HGET', gkey(ARGV[2], ''), 'name')
if not name then return {'no_such_group'} end
local mkey = gkey(ARGV[2], ':members')
local before = redis.call('HKEYS', mkey)
if redis.call('HDEL', mkey, ARGV[1]) == 0 then return {'not_a_member'} end
redis.call('SREM', ukey(ARGV[1], ':groups'), ARGV[2])
redis.call('HDEL', gkey(ARGV[2], ':names'), ARGV[1])
if redis.call('HLEN', mkey) == 0 then
  redis.call('DEL', gkey(ARGV[2], ''), mkey, gkey(ARGV[2], ':names'))
  redis.call('HDEL', 'sb:groups:byname', string.lower(name))
end
return {'ok', name, before}
