-- ARGV: user id, largest group that carries presence. Friends, and fellow members of groups
-- of at most that many members, without the user and without anyone across a block.
-- Nobody across a block either way.
local seen, out = hidden(ARGV[1]), {}
seen[ARGV[1]] = true
local max = tonumber(ARGV[2])
local function add(id) if not seen[id] then seen[id] = true; out[#out + 1] = id end end
for _, f in ipairs(redis.call('SMEMBERS', ukey(ARGV[1], ':friends'))) do add(f) end
for _, g in ipairs(redis.call('SMEMBERS', ukey(ARGV[1], ':groups'))) do
  local mkey = gkey(g, ':members')
  if redis.call('HLEN', mkey) <= max then
    for _, m in ipairs(redis.call('HKEYS', mkey)) do add(m) end
  end
end
return out
