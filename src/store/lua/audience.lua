-- ARGV: user id, largest group that carries presence. See audience_of.
return audience_of(ARGV[1], tonumber(ARGV[2]))
