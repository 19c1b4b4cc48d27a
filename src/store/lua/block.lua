-- ARGV: user id, other id, largest group that carries presence. `user` blocks `other`; a
-- friendship between them ends. Returns {'ok', other name, were friends (0/1), shared small
-- group (0/1), other online} or {'no_such_user'}.
local me, other = ARGV[1], ARGV[2]
local name = redis.call('HGET', ukey(other, ''), 'name')
if not name then return {'no_such_user'} end
if redis.call('EXISTS', ukey(me, '')) == 0 then return {'not_logged_in'} end
-- A repeated block changes nothing and tells nobody.
if redis.call('SADD', ukey(me, ':blocks'), other) == 0 then return {'ok', name, 0, 0, online(other)} end
redis.call('SADD', ukey(other, ':blockedby'), me)
local friends = redis.call('SREM', ukey(me, ':friends'), other)
redis.call('SREM', ukey(other, ':friends'), me)
return {'ok', name, friends, shares_small_group(me, other, tonumber(ARGV[3])), online(other)}
