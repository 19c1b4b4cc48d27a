-- ARGV: user id. Returns a list of group views (see common.lua).
local out, hide = {}, hidden(ARGV[1])
for _, g in ipairs(redis.call('SMEMBERS', ukey(ARGV[1], ':groups'))) do
  local v = group_view(ARGV[1], g, hide)
  if v then out[#out + 1] = v end
end
return out
