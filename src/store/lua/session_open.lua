-- ARGV: user id, session id, node, max sessions. Returns {'ok', 1 if first else 0} or {'too_many_sessions'}.
-- The node is put into sb:nodes (at Redis time, only when absent) in the same step as its
-- session: a node that dies before its first heartbeat, or records a session after its final
-- reap at shutdown, is then found dead and reaped by the others like any other dead node.
-- A deleted account (a login racing its deletion) gets no session.
if redis.call('EXISTS', ukey(ARGV[1], '')) == 0 then return {'no_such_user'} end
local key = ukey(ARGV[1], ':sessions')
local n = redis.call('HLEN', key)
if n >= tonumber(ARGV[4]) then return {'too_many_sessions'} end
local t = redis.call('TIME')
redis.call('ZADD', 'sb:nodes', 'NX', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), ARGV[3])
redis.call('HSET', key, ARGV[2], ARGV[3])
redis.call('SADD', 'sb:{n:' .. ARGV[3] .. '}:sessions', ARGV[1] .. ' ' .. ARGV[2])
if n == 0 then return {'ok', 1} end
return {'ok', 0}
