-- ARGV: user id, other id. Returns {'ok', new (0/1), other name, other online}, {'no_such_user'} or {'blocked'}.
local name = redis.call('HGET', ukey(ARGV[2], ''), 'name')
if not name then return {'no_such_user'} end
if redis.call('EXISTS', ukey(ARGV[1], '')) == 0 then return {'not_logged_in'} end
-- A block either way forbids it (both sets live in the caller's slot).
if redis.call('SISMEMBER', ukey(ARGV[1], ':blocks'), ARGV[2]) == 1
    or redis.call('SISMEMBER', ukey(ARGV[1], ':blockedby'), ARGV[2]) == 1 then
  return {'blocked'}
end
local new = redis.call('SADD', ukey(ARGV[1], ':friends'), ARGV[2])
redis.call('SADD', ukey(ARGV[2], ':friends'), ARGV[1])
return {'ok', new, name, online(ARGV[2])}
