-- ARGV: user id. Returns {{id, name, online}, ...}.
local out = {}
for _, f in ipairs(redis.call('SMEMBERS', ukey(ARGV[1], ':friends'))) do
  out[#out + 1] = {f, redis.call('HGET', ukey(f, ''), 'name') or '', online(f)}
end
return out
