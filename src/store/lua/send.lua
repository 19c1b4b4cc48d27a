-- Stores one message in every recipient's inbox and the sender's, publishing each copy to the
-- inbox owner's channel in the same atomic step, so live order equals inbox order.
-- ARGV: 1 from id, 2 'u' or 'g', 3 target id, 4 message JSON, 5 origin session, 6 client_id
-- ('' for none), 7 msg id, 8 ts, 9 inbox max len, 10 retention cut-off id ("ms-max"),
-- 11 client_id ttl secs, 12 trace context (W3C traceparent or '-'), 13 request fingerprint,
-- 14 text bytes, 15 daily quota (bytes), 16 current quota bucket, 17 oldest bucket still in the
-- window, 18 inbox hard max len. Keys: docs/data-model.md.
-- Returns {'ok', own seq, prev} or {'dup', "id ts seq", prev} or {error code}; prev is the
-- sender's inbox entry just before own seq ('' if none), see protocol guarantee 8.
local from, json = ARGV[1], ARGV[4]
local ownkey = ukey(from, ':inbox')
local function before(seq)
  local e = redis.call('XREVRANGE', ownkey, '(' .. seq, '-', 'COUNT', 1)
  if #e == 1 then return e[1][1] end
  return ''
end
-- The client_id record keeps the three fields of 0.1.x ("id ts seq"), which nodes of that
-- release parse; the fingerprint of the request lives in a key of its own (none: a record of
-- 0.1.x, which counts as a match).
local cidkey, fpkey
if ARGV[6] ~= '' then
  cidkey = ukey(from, ':cid:' .. ARGV[6])
  fpkey = ukey(from, ':cidfp:' .. ARGV[6])
  local prev = redis.call('GET', cidkey)
  if prev then
    local id, ts, seq = string.match(prev, '^(%S+) (%S+) (%S+)$')
    if not id then return {'internal'} end
    local fp = redis.call('GET', fpkey)
    if fp and fp ~= ARGV[13] then return {'client_id_conflict'} end
    return {'dup', prev, before(seq)}
  end
end
local recipients
if ARGV[2] == 'u' then
  if redis.call('EXISTS', ukey(ARGV[3], '')) == 0 then return {'no_such_user'} end
  recipients = {ARGV[3]}
else
  local mkey = gkey(ARGV[3], ':members')
  if redis.call('EXISTS', mkey) == 0 then return {'no_such_group'} end
  if redis.call('HEXISTS', mkey, from) == 0 then return {'not_a_member'} end
  recipients = redis.call('HKEYS', mkey)
end
-- Quota: text bytes per stored copy (the sender's own included), counted in time buckets of
-- the sliding 24 h window; buckets that left the window are dropped here.
local copies = 1
for _, r in ipairs(recipients) do
  if r ~= from then copies = copies + 1 end
end
local charge = tonumber(ARGV[14]) * copies
local qkey, bucket, oldest = ukey(from, ':quota'), tonumber(ARGV[16]), tonumber(ARGV[17])
local flat, used, stale = redis.call('HGETALL', qkey), 0, {}
for i = 1, #flat, 2 do
  if tonumber(flat[i]) < oldest then
    stale[#stale + 1] = flat[i]
  else
    used = used + tonumber(flat[i + 1])
  end
end
if used + charge > tonumber(ARGV[15]) then return {'rate_limited'} end
-- HINCRBY is the first write on purpose: under maxmemory Redis refuses a script at its first
-- write that may grow memory, but not after any earlier write (HDEL would let it through).
-- The key outlives its newest bucket by 25 h, so its TTL is set only when a bucket starts.
if redis.call('HINCRBY', qkey, bucket, charge) == charge then redis.call('EXPIRE', qkey, 90000) end
if #stale > 0 then redis.call('HDEL', qkey, unpack(stale)) end
local hardmax = ARGV[18]
-- Retention: trims entries that are both beyond the newest `maxlen` and older than the cut-off.
-- MINID ~ removes only whole stream nodes older than the cut-off, and LIMIT only as many
-- entries as lie beyond the newest `maxlen` (at most 1000), so nothing else is ever trimmed and
-- no entry is read. Deleting entries inside a node frees no memory before the whole node goes.
local function trim(key)
  local excess = redis.call('XLEN', key) - tonumber(ARGV[9])
  if excess > 0 then
    -- The cut-off "ms-max" is the newest old id; MINID keeps ids from (ms + 1)-0 on.
    local minid = string.format('%d', tonumber(string.match(ARGV[10], '^%d+')) + 1) .. '-0'
    local limit = string.format('%d', math.min(excess, 1000))
    redis.call('XTRIM', key, 'MINID', '~', minid, 'LIMIT', limit)
  end
end
-- Channel payload: M <seq> <origin session> <ts> <traceparent> <json> (see docs/data-model.md).
-- The same bytes as message_payload in src/store/payload.rs, which also parses them; change
-- both together (tests/delivery.rs send_lua_payload_parses checks that they agree).
local tail = ' ' .. ARGV[5] .. ' ' .. ARGV[8] .. ' ' .. ARGV[12] .. ' ' .. json
local function append(uid)
  local key = ukey(uid, ':inbox')
  -- The hard bound, exact (only ever one entry beyond it): no check of its own.
  local seq = redis.call('XADD', key, 'MAXLEN', hardmax, '*', 'f', from, 'm', json)
  -- The retention trim only when the id's millisecond part ends in 00: decided by the seq,
  -- about one append in a hundred (an inbox holds that many more old entries at most, on
  -- average; nothing that the rule keeps is ever trimmed).
  if string.find(seq, '00-', 1, true) then trim(key) end
  redis.call('PUBLISH', ukey(uid, ':ch'), 'M ' .. seq .. tail)
  return seq
end
local last = redis.call('XREVRANGE', ownkey, '+', '-', 'COUNT', 1)
local prev = ''
if #last == 1 then prev = last[1][1] end
local own = append(from)
for _, r in ipairs(recipients) do
  if r ~= from then append(r) end
end
if cidkey then
  redis.call('SET', cidkey, ARGV[7] .. ' ' .. ARGV[8] .. ' ' .. own, 'EX', ARGV[11])
  redis.call('SET', fpkey, ARGV[13], 'EX', ARGV[11])
end
return {'ok', own, prev}
