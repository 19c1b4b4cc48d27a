-- ARGV: user id. Returns {{id, name}, ...} of the users it blocks.
local out = {}
for _, b in ipairs(redis.call('SMEMBERS', ukey(ARGV[1], ':blocks'))) do
  out[#out + 1] = {b, redis.call('HGET', ukey(b, ''), 'name') or ''}
end
return out
