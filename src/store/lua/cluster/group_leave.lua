-- Cluster: the group's part of group_leave.lua. KEYS: 1 sb:{g:ID}, 2 members. ARGV: 1 user id.
-- Returns {'ok', name, {members before}, 1 if the group was deleted} or {error code}.
local name = redis.call('HGET', KEYS[1], 'name')
if not name then return {'no_such_group'} end
local before = redis.call('HKEYS', KEYS[2])
if redis.call('HDEL', KEYS[2], ARGV[1]) == 0 then return {'not_a_member'} end
local gone = 0
if redis.call('HLEN', KEYS[2]) == 0 then
  redis.call('DEL', KEYS[1], KEYS[2])
  gone = 1
end
return {'ok', name, before, gone}
