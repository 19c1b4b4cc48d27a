-- ARGV: largest group that carries presence, then pairs of user id and `presence` event line.
-- Publishes each line (payload `E - <line>`) to the user's audience (see audience_of): the
-- presence of many users in one round trip, for a drain, a logout storm or a reaped node.
-- Returns 1.
local max = tonumber(ARGV[1])
for i = 2, #ARGV - 1, 2 do announce(ARGV[i], ARGV[i + 1], max) end
return 1
