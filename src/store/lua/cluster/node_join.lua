-- Cluster: puts a node into sb:nodes at Redis time when absent (session_open.lua's ZADD NX).
-- KEYS: 1 sb:nodes. ARGV: 1 node.
local t = redis.call('TIME')
return redis.call('ZADD', KEYS[1], 'NX', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), ARGV[1])
