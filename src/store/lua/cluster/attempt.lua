-- Cluster: attempt.lua for one key (each limit key is its own slot; the caller reserves them one
-- after the other and takes a reservation back when a later key is full).
-- KEYS: 1 the limit key. ARGV: 1 now ms, 2 window ms, 3 max, 4 member. Returns 1 or 0.
local now, window, max = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local cutoff = now - window
if redis.call('ZCOUNT', KEYS[1], '(' .. cutoff, '+inf') >= max then return 0 end
redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', cutoff)
redis.call('PEXPIRE', KEYS[1], window)
return 1
