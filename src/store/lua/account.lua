-- ARGV: 'n' and a folded name, or 'i' and an id. Returns {id, name, pw, online} or {}.
local id = ARGV[2]
if ARGV[1] == 'n' then
  id = redis.call('HGET', 'sb:users:byname', ARGV[2])
  if not id then return {} end
end
local a = redis.call('HMGET', ukey(id, ''), 'name', 'pw')
if not a[1] then return {} end
return {id, a[1], a[2], online(id)}
