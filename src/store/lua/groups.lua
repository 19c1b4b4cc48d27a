-- ARGV: user id. Returns a list of group views (see common.lua).
local out = {}
for _, g in ipairs(redis.call('SMEMBERS', ukey(ARGV[1], ':groups'))) do
  local v = group_view(ARGV[1], g)
  if v then out[#out + 1] = v end
end
return out
