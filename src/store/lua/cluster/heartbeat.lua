-- Cluster form of heartbeat.lua: sb:nodes only; whether another node reaped this one (the mark
-- sb:{n:NODE}:reaped, another slot) is read by the caller before and passed in.
-- KEYS: 1 sb:nodes. ARGV: 1 node, 2 ttl ms, 3 '1' when reaped. Returns {was registered, dead...}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
local prev = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], now, ARGV[1])
if ARGV[3] == '1' then prev = nil end
local out = {prev and 1 or 0}
if not prev or tonumber(prev) < now - ttl then return out end
for _, n in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - ttl))) do
  out[#out + 1] = n
end
return out
