-- Shared by every switchboard script (prepended at load time). Key layout: docs/data-model.md.
local function ukey(id, suffix) return 'sb:{u:' .. id .. '}' .. suffix end
local function gkey(id, suffix) return 'sb:{g:' .. id .. '}' .. suffix end
local function online(id) return redis.call('EXISTS', ukey(id, ':sessions')) end
-- The users `uid` must not see as online nor be seen by: those it blocks and those blocking it
-- (both sets live in its own slot). Usually empty: one SUNION of two missing keys.
local function hidden(uid)
  local h = {}
  for _, id in ipairs(redis.call('SUNION', ukey(uid, ':blocks'), ukey(uid, ':blockedby'))) do h[id] = true end
  return h
end
-- {id, name, desc, role, {{id, name, role, online}, ...}} as `uid` sees group `gid`, or nil.
-- `hide` is hidden(uid): those members show as offline.
local function group_view(uid, gid, hide)
  local g = redis.call('HMGET', gkey(gid, ''), 'name', 'desc')
  if not g[1] then return nil end
  local flat = redis.call('HGETALL', gkey(gid, ':members'))
  -- Member names from the group's own copy (one command instead of one per member: a login
  -- into a 1000-member group read 1000 user hashes); a member it lacks (a group of 0.4.0 not
  -- yet backfilled by record_names) is read from its user hash.
  local names = {}
  local nflat = redis.call('HGETALL', gkey(gid, ':names'))
  for i = 1, #nflat, 2 do names[nflat[i]] = nflat[i + 1] end
  local members, role = {}, nil
  for i = 1, #flat, 2 do
    local mid, mrole = flat[i], flat[i + 1]
    if mid == tostring(uid) then role = mrole end
    local on = 0
    if not hide[mid] then on = online(mid) end
    local mname = names[mid] or redis.call('HGET', ukey(mid, ''), 'name') or ''
    members[#members + 1] = {mid, mname, mrole, on}
  end
  if not role then return nil end
  return {tostring(gid), g[1], g[2] or '', role, members}
end
-- Records member `uid`'s name in group `gid`'s sb:{g:ID}:names (names never change and ids are
-- never reused, so the copy cannot go stale). When the copy lacks other members (the group
-- was created before it existed), they are filled in too, once: the join pays for the group's
-- later views.
local function record_names(gid, uid)
  local nkey = gkey(gid, ':names')
  redis.call('HSET', nkey, uid, redis.call('HGET', ukey(uid, ''), 'name') or '')
  local mkey = gkey(gid, ':members')
  if redis.call('HLEN', nkey) < redis.call('HLEN', mkey) then
    for _, mid in ipairs(redis.call('HKEYS', mkey)) do
      if redis.call('HEXISTS', nkey, mid) == 0 then
        redis.call('HSET', nkey, mid, redis.call('HGET', ukey(mid, ''), 'name') or '')
      end
    end
  end
end
-- Who hears of `uid`'s presence: friends, and fellow members of groups of at most `max`
-- members, without `uid` and without anyone across a block.
local function audience_of(uid, max)
  local seen, out = hidden(uid), {}
  seen[uid] = true
  local function add(id) if not seen[id] then seen[id] = true; out[#out + 1] = id end end
  for _, f in ipairs(redis.call('SMEMBERS', ukey(uid, ':friends'))) do add(f) end
  for _, g in ipairs(redis.call('SMEMBERS', ukey(uid, ':groups'))) do
    local mkey = gkey(g, ':members')
    if redis.call('HLEN', mkey) <= max then
      for _, m in ipairs(redis.call('HKEYS', mkey)) do add(m) end
    end
  end
  return out
end
-- 1 when users a and b are both members of a group of at most `max` members (such groups
-- carry presence between them), else 0.
local function shares_small_group(a, b, max)
  for _, g in ipairs(redis.call('SINTER', ukey(a, ':groups'), ukey(b, ':groups'))) do
    if redis.call('HLEN', gkey(g, ':members')) <= max then return 1 end
  end
  return 0
end
-- Records a login token: sb:token:<digest> → user id (expiring), and the digest in the user's
-- sb:{u:ID}:tokens (score = expiry ms), so that every token of the user can be revoked at once.
-- Expired digests leave the set; beyond `max` live tokens the oldest are revoked.
local function issue_token(digest, uid, ttl, now, max)
  local tkey = ukey(uid, ':tokens')
  local expiry = now + ttl * 1000
  redis.call('SET', 'sb:token:' .. digest, uid, 'EX', ttl)
  redis.call('ZADD', tkey, expiry, digest)
  redis.call('ZREMRANGEBYSCORE', tkey, '-inf', now)
  local excess = redis.call('ZCARD', tkey) - max
  if excess > 0 then
    local popped = redis.call('ZPOPMIN', tkey, excess)
    for i = 1, #popped, 2 do redis.call('DEL', 'sb:token:' .. popped[i]) end
  end
  local newest = redis.call('ZRANGE', tkey, -1, -1, 'WITHSCORES')
  redis.call('PEXPIREAT', tkey, math.max(expiry, tonumber(newest[2])))
end
-- Revokes every token recorded in sb:{u:ID}:tokens.
local function revoke_tokens(uid)
  local tkey = ukey(uid, ':tokens')
  for _, d in ipairs(redis.call('ZRANGE', tkey, 0, -1)) do redis.call('DEL', 'sb:token:' .. d) end
  redis.call('DEL', tkey)
end
-- Registers session `sid` of `uid` on `node` (at most `max` per user). Returns {'ok', 1 if it is
-- the user's first session else 0}, {'too_many_sessions'} or {'no_such_user'} (a deleted
-- account: a login racing its deletion). The node is put into sb:nodes (at Redis time, only
-- when absent) in the same step: a node that dies before its first heartbeat, or records a
-- session after its final reap at shutdown, is then found dead and reaped like any other.
local function open_session(uid, sid, node, max)
  if redis.call('EXISTS', ukey(uid, '')) == 0 then return {'no_such_user'} end
  local key = ukey(uid, ':sessions')
  local n = redis.call('HLEN', key)
  local first = n == 0
  if n > 0 then
    -- Sessions a draining node handed over (sessions_handover.lua): the user is back, so they
    -- end now, without a presence event (for the user's audience it never went offline), and
    -- do not count against `max`.
    local hkey = ukey(uid, ':handover')
    local flat = redis.call('HGETALL', hkey)
    if #flat > 0 then
      for i = 1, #flat, 2 do
        if redis.call('HDEL', key, flat[i]) == 1 then
          redis.call('SREM', 'sb:{n:' .. flat[i + 1] .. '}:sessions', uid .. ' ' .. flat[i])
        end
      end
      redis.call('DEL', hkey)
      n = redis.call('HLEN', key)
    end
  end
  if n >= max then return {'too_many_sessions'} end
  local t = redis.call('TIME')
  redis.call('ZADD', 'sb:nodes', 'NX', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), node)
  redis.call('HSET', key, sid, node)
  redis.call('SADD', 'sb:{n:' .. node .. '}:sessions', uid .. ' ' .. sid)
  if first then return {'ok', 1} end
  return {'ok', 0}
end
-- What a login reply and its backlog need: {{friend rows {id, name, online}}, {group views},
-- acked position or ''}.
local function login_view(uid)
  local friends = {}
  for _, f in ipairs(redis.call('SMEMBERS', ukey(uid, ':friends'))) do
    friends[#friends + 1] = {f, redis.call('HGET', ukey(f, ''), 'name') or '', online(f)}
  end
  local groups, hide = {}, hidden(uid)
  for _, g in ipairs(redis.call('SMEMBERS', ukey(uid, ':groups'))) do
    local v = group_view(uid, g, hide)
    if v then groups[#groups + 1] = v end
  end
  return {friends, groups, redis.call('GET', ukey(uid, ':acked')) or ''}
end
-- Publishes the event `line` (payload `E - <line>`) to every member of audience_of(uid, max).
local function announce(uid, line, max)
  local payload = 'E - ' .. line
  for _, id in ipairs(audience_of(uid, max)) do redis.call('PUBLISH', ukey(id, ':ch'), payload) end
end
