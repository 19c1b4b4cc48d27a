-- ARGV: user id, new password hash, new token digest, ttl secs, now (ms), most live tokens.
-- Sets the password, revokes every token of the user and records the new one, in one step.
-- Returns {'ok'} or {'no_such_user'}.
local uid = ARGV[1]
if redis.call('EXISTS', ukey(uid, '')) == 0 then return {'no_such_user'} end
redis.call('HSET', ukey(uid, ''), 'pw', ARGV[2], 'tok', '1')
revoke_tokens(uid)
issue_token(ARGV[3], uid, tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]))
return {'ok'}
