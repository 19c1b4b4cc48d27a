-- ARGV: user id, folded name, name, desc. Returns {'ok', view} or {'name_taken'}.
if redis.call('EXISTS', ukey(ARGV[1], '')) == 0 then return {'not_logged_in'} end
if redis.call('HEXISTS', 'sb:groups:byname', ARGV[2]) == 1 then return {'name_taken'} end
local id = redis.call('INCR', 'sb:groups:next')
redis.call('HSET', 'sb:groups:byname', ARGV[2], id)
redis.call('HSET', gkey(id, ''), 'name', ARGV[3], 'desc', ARGV[4])
redis.call('HSET', gkey(id, ':members'), ARGV[1], 'creator')
record_names(id, ARGV[1])
redis.call('SADD', ukey(ARGV[1], ':groups'), id)
return {'ok', group_view(ARGV[1], id, hidden(ARGV[1]))}
