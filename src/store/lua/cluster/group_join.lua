-- Cluster: the group's part of group_join.lua. KEYS: 1 sb:{g:ID}, 2 members. ARGV: 1 user id.
-- Returns 'ok', 'no_such_group' or 'already_member'.
if redis.call('EXISTS', KEYS[1]) == 0 then return 'no_such_group' end
if redis.call('HSETNX', KEYS[2], ARGV[1], 'member') == 0 then return 'already_member' end
return 'ok'
