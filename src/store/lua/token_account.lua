-- ARGV: token digest. The account the token belongs to: {id, name, pw, online}, or {}.
local id = redis.call('GET', 'sb:token:' .. ARGV[1])
if not id then return {} end
local a = redis.call('HMGET', ukey(id, ''), 'name', 'pw')
if not a[1] then return {} end
return {id, a[1], a[2], online(id)}
