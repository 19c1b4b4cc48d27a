-- ARGV: node, (unused: caller's clock), ttl ms, open connections. Returns {was registered (0/1),
-- {dead node names...}, {open connections of every live node that published them...}}.
-- Time comes from Redis, so nodes' clocks do not matter. A node that was itself cut off for
-- longer than the TTL (its own previous beat is missing or stale) declares nobody dead this
-- round: after a Redis outage every score is old, and only nodes that stay silent once the
-- others beat again are dead. A node another node reaped (the mark left by reap.lua) counts as
-- not registered even when a session_open has put it back into sb:nodes since.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
local prev = redis.call('ZSCORE', 'sb:nodes', ARGV[1])
local mark = 'sb:{n:' .. ARGV[1] .. '}:reaped'
local reaped = redis.call('EXISTS', mark) == 1
-- ZADD first: under maxmemory the script must be refused at its first write, before the DEL
-- consumes the mark (a DEL would let the rest of the script through).
redis.call('ZADD', 'sb:nodes', now, ARGV[1])
if reaped then
  redis.call('DEL', mark)
  prev = nil
end
-- This node's open connections, for rebalancing (reap.lua removes a dead node's entry).
redis.call('HSET', 'sb:conns', ARGV[1], ARGV[4])
local counts = {}
local alive = redis.call('ZRANGEBYSCORE', 'sb:nodes', now - ttl, '+inf')
if #alive > 0 then
  for _, c in ipairs(redis.call('HMGET', 'sb:conns', unpack(alive))) do
    if c then counts[#counts + 1] = tonumber(c) end
  end
end
local dead = {}
if prev and tonumber(prev) >= now - ttl then
  for _, n in ipairs(redis.call('ZRANGEBYSCORE', 'sb:nodes', '-inf', '(' .. (now - ttl))) do
    dead[#dead + 1] = n
  end
end
return {prev and 1 or 0, dead, counts}
