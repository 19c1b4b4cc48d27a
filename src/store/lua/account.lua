-- ARGV: 'n' and a folded name, or 'i' and an id; the viewing user's id or ''. Returns
-- {id, name, pw, online} or {}; `online` is 0 when a block stands between viewer and user.
local id = ARGV[2]
if ARGV[1] == 'n' then
  id = redis.call('HGET', 'sb:users:byname', ARGV[2])
  if not id then return {} end
end
local a = redis.call('HMGET', ukey(id, ''), 'name', 'pw')
if not a[1] then return {} end
local viewer = ARGV[3] or ''
if viewer ~= '' and (redis.call('SISMEMBER', ukey(viewer, ':blocks'), id) == 1
    or redis.call('SISMEMBER', ukey(viewer, ':blockedby'), id) == 1) then
  return {id, a[1], a[2], 0}
end
return {id, a[1], a[2], online(id)}
