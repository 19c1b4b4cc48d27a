-- Shared by every switchboard script (prepended at load time). Key layout: docs/data-model.md.
local function ukey(id, suffix) return 'sb:{u:' .. id .. '}' .. suffix end
local function gkey(id, suffix) return 'sb:{g:' .. id .. '}' .. suffix end
local function online(id) return redis.call('EXISTS', ukey(id, ':sessions')) end
-- {id, name, desc, role, {{id, name, role, online}, ...}} as `uid` sees group `gid`, or nil.
local function group_view(uid, gid)
  local g = redis.call('HMGET', gkey(gid, ''), 'name', 'desc')
  if not g[1] then return nil end
  local flat = redis.call('HGETALL', gkey(gid, ':members'))
  local members, role = {}, nil
  for i = 1, #flat, 2 do
    local mid, mrole = flat[i], flat[i + 1]
    if mid == tostring(uid) then role = mrole end
    members[#members + 1] = {mid, redis.call('HGET', ukey(mid, ''), 'name') or '', mrole, online(mid)}
  end
  if not role then return nil end
  return {tostring(gid), g[1], g[2] or '', role, members}
end
