-- ARGV: largest group that carries presence, then pairs of user id and `presence` event line.
-- Publishes each line (payload `E - <line>`) to the user's audience (see audience_of): the
-- presence of many users in one round trip, for a drain, a logout storm or a reaped node.
-- Returns the number of publishes.
local max, n = tonumber(ARGV[1]), 0
for i = 2, #ARGV - 1, 2 do
  local payload = 'E - ' .. ARGV[i + 1]
  for _, id in ipairs(audience_of(ARGV[i], max)) do
    redis.call('PUBLISH', ukey(id, ':ch'), payload)
    n = n + 1
  end
end
return n
