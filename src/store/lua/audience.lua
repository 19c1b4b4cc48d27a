-- ARGV: user id. Friends and fellow group members, without the user.
local seen, out = {[ARGV[1]] = true}, {}
local function add(id) if not seen[id] then seen[id] = true; out[#out + 1] = id end end
for _, f in ipairs(redis.call('SMEMBERS', ukey(ARGV[1], ':friends'))) do add(f) end
for _, g in ipairs(redis.call('SMEMBERS', ukey(ARGV[1], ':groups'))) do
  for _, m in ipairs(redis.call('HKEYS', gkey(g, ':members'))) do add(m) end
end
return out
