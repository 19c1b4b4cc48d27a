-- ARGV: user id, group id. Returns {'ok', view}, {'no_such_group'} or {'already_member'}.
if redis.call('EXISTS', gkey(ARGV[2], '')) == 0 then return {'no_such_group'} end
if redis.call('EXISTS', ukey(ARGV[1], '')) == 0 then return {'not_logged_in'} end
if redis.call('HSETNX', gkey(ARGV[2], ':members'), ARGV[1], 'member') == 0 then return {'already_member'} end
redis.call('SADD', ukey(ARGV[1], ':groups'), ARGV[2])
record_names(ARGV[2], ARGV[1])
return {'ok', group_view(ARGV[1], ARGV[2], hidden(ARGV[1]))}
