-- ARGV: node, then pairs of user id and session id: sessions of a draining node whose clients
-- were told to go away (goaway "shutdown") and left. Each record stays (the user stays online)
-- and is marked in sb:{u:ID}:handover: the user's next login removes it silently (open_session
-- in common.lua), so a client back on another node causes no offline/online flap; a client
-- that does not come back is removed, and announced offline, by the dead-node reaper.
for i = 2, #ARGV - 1, 2 do
  local uid, sid = ARGV[i], ARGV[i + 1]
  if redis.call('HGET', ukey(uid, ':sessions'), sid) == ARGV[1] then
    local hkey = ukey(uid, ':handover')
    redis.call('HSET', hkey, sid, ARGV[1])
    -- Far longer than any drain and reap; a stale entry is harmless (its session is gone).
    redis.call('EXPIRE', hkey, 86400)
  end
end
return 0
