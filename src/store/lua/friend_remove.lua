-- ARGV: user id, other id. Returns {'ok', other name} or {'no_such_user'} (not a friend).
if redis.call('SREM', ukey(ARGV[1], ':friends'), ARGV[2]) == 0 then return {'no_such_user'} end
redis.call('SREM', ukey(ARGV[2], ':friends'), ARGV[1])
return {'ok', redis.call('HGET', ukey(ARGV[2], ''), 'name') or ''}
