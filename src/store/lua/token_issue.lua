-- ARGV: token digest, user id, ttl secs, now (ms), most live tokens per user. See issue_token.
issue_token(ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]))
return 1
