-- ARGV: user id, other id, largest group that carries presence. Undoes a block (the friendship
-- does not come back). Returns {'ok', other name, 0, presence flows again (0/1), other online}
-- or {'no_such_user'}.
local me, other = ARGV[1], ARGV[2]
local name = redis.call('HGET', ukey(other, ''), 'name')
if not name then return {'no_such_user'} end
local removed = redis.call('SREM', ukey(me, ':blocks'), other)
redis.call('SREM', ukey(other, ':blockedby'), me)
local visible = 0
if removed == 1 and redis.call('SISMEMBER', ukey(me, ':blockedby'), other) == 0 then
  visible = shares_small_group(me, other, tonumber(ARGV[3]))
end
return {'ok', name, 0, visible, online(other)}
