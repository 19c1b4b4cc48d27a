-- ARGV: user id, other id. Returns {'ok', new (0/1), other name, other online} or {'no_such_user'}.
local name = redis.call('HGET', ukey(ARGV[2], ''), 'name')
if not name then return {'no_such_user'} end
local new = redis.call('SADD', ukey(ARGV[1], ':friends'), ARGV[2])
redis.call('SADD', ukey(ARGV[2], ':friends'), ARGV[1])
return {'ok', new, name, online(ARGV[2])}
