-- ARGV: user id. Deletes the account in one step (nothing half-done survives a crash of the
-- node: the node's events are live-only). Returns {'ok', name, {friend ids},
-- {{group id, group name, {members before}}, ...}} or {'no_such_user'} (already deleted).
-- The client_id records (sb:{u:ID}:cid:*, :cidfp:*) expire within a day; ids are never reused.
local uid = ARGV[1]
local ukeyh = ukey(uid, '')
local name = redis.call('HGET', ukeyh, 'name')
if not name then return {'no_such_user'} end
revoke_tokens(uid)
local friends = redis.call('SMEMBERS', ukey(uid, ':friends'))
for _, f in ipairs(friends) do redis.call('SREM', ukey(f, ':friends'), uid) end
local groups = {}
for _, g in ipairs(redis.call('SMEMBERS', ukey(uid, ':groups'))) do
  local gname = redis.call('HGET', gkey(g, ''), 'name')
  local mkey = gkey(g, ':members')
  if gname and redis.call('HEXISTS', mkey, uid) == 1 then
    local before = redis.call('HKEYS', mkey)
    redis.call('HDEL', mkey, uid)
    redis.call('HDEL', gkey(g, ':names'), uid)
    if redis.call('HLEN', mkey) == 0 then
      redis.call('DEL', gkey(g, ''), mkey, gkey(g, ':names'))
      redis.call('HDEL', 'sb:groups:byname', string.lower(gname))
    end
    groups[#groups + 1] = {g, gname, before}
  end
end
for _, b in ipairs(redis.call('SMEMBERS', ukey(uid, ':blocks'))) do
  redis.call('SREM', ukey(b, ':blockedby'), uid)
end
for _, b in ipairs(redis.call('SMEMBERS', ukey(uid, ':blockedby'))) do
  redis.call('SREM', ukey(b, ':blocks'), uid)
end
local folded = string.lower(name)
if redis.call('HGET', 'sb:users:byname', folded) == uid then
  redis.call('HDEL', 'sb:users:byname', folded)
end
redis.call('DEL', ukeyh, ukey(uid, ':friends'), ukey(uid, ':groups'), ukey(uid, ':blocks'),
  ukey(uid, ':blockedby'), ukey(uid, ':inbox'), ukey(uid, ':acked'), ukey(uid, ':quota'),
  ukey(uid, ':sessions'), ukey(uid, ':handover'))
return {'ok', name, friends, groups}
