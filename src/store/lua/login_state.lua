-- ARGV: user id. What a login reply and its backlog need, in one round trip:
-- {{friend rows (see friends.lua)}, {group views (see groups.lua)}, acked position or ''}.
local uid = ARGV[1]
local friends = {}
for _, f in ipairs(redis.call('SMEMBERS', ukey(uid, ':friends'))) do
  friends[#friends + 1] = {f, redis.call('HGET', ukey(f, ''), 'name') or '', online(f)}
end
local groups, hide = {}, hidden(uid)
for _, g in ipairs(redis.call('SMEMBERS', ukey(uid, ':groups'))) do
  local v = group_view(uid, g, hide)
  if v then groups[#groups + 1] = v end
end
return {friends, groups, redis.call('GET', ukey(uid, ':acked')) or ''}
