-- ARGV: token digest. The account the token belongs to: {id, name, pw, online}, or {}.
-- Once every token of the user was revoked (field `tok`), only digests recorded in
-- sb:{u:ID}:tokens count: a token issued by a node of 0.3.0 or older, which did not record it,
-- is then refused too.
local id = redis.call('GET', 'sb:token:' .. ARGV[1])
if not id then return {} end
local a = redis.call('HMGET', ukey(id, ''), 'name', 'pw', 'tok')
if not a[1] then return {} end
if a[3] and not redis.call('ZSCORE', ukey(id, ':tokens'), ARGV[1]) then return {} end
return {id, a[1], a[2], online(id)}
