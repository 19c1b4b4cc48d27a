-- ARGV: user id, session id, node, max sessions. See open_session in common.lua.
return open_session(ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]))
