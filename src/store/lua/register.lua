-- ARGV: folded name, name, password hash. Returns {'ok', id} or {'name_taken'}.
if redis.call('HEXISTS', 'sb:users:byname', ARGV[1]) == 1 then return {'name_taken'} end
local id = redis.call('INCR', 'sb:users:next')
redis.call('HSET', 'sb:users:byname', ARGV[1], id)
redis.call('HSET', ukey(id, ''), 'name', ARGV[2], 'pw', ARGV[3])
return {'ok', id}
