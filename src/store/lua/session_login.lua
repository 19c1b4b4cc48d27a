-- ARGV: user id, session id, node, max sessions, largest group that carries presence, the
-- user's `presence` (online) event line. A login's whole bookkeeping in one step: the session
-- (open_session), what the reply needs (login_view) and, for the user's first session, the
-- presence announcement (announce). Returns {'ok', first (0/1), friends, groups, acked} or the
-- error of open_session.
local uid = ARGV[1]
local opened = open_session(uid, ARGV[2], ARGV[3], tonumber(ARGV[4]))
if opened[1] ~= 'ok' then return opened end
local view = login_view(uid)
if opened[2] == 1 then announce(uid, ARGV[6], tonumber(ARGV[5])) end
return {'ok', opened[2], view[1], view[2], view[3]}
