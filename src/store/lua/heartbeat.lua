-- ARGV: node, now ms, ttl ms. Returns {was registered (0/1), dead node names...}.
local was = redis.call('ZSCORE', 'sb:nodes', ARGV[1]) and 1 or 0
redis.call('ZADD', 'sb:nodes', ARGV[2], ARGV[1])
local dead = redis.call('ZRANGEBYSCORE', 'sb:nodes', '-inf', '(' .. (tonumber(ARGV[2]) - tonumber(ARGV[3])))
local out = {was}
for _, n in ipairs(dead) do out[#out + 1] = n end
return out
