-- ARGV: user id. See login_view in common.lua.
return login_view(ARGV[1])
