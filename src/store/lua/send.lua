-- Stores one message in every recipient's inbox and the sender's, publishing each copy to the
-- inbox owner's channel in the same atomic step, so live order equals inbox order.
-- ARGV: 1 from id, 2 'u' or 'g', 3 target id, 4 message JSON, 5 origin session, 6 client_id
-- ('' for none), 7 msg id, 8 ts, 9 inbox max len, 10 retention cut-off id ("ms-max"),
-- 11 client_id ttl secs, 12 trace context (W3C traceparent or '-'), 13 request fingerprint,
-- 14 text bytes, 15 daily quota (bytes), 16 current quota bucket, 17 oldest bucket still in the
-- window, 18 inbox hard max len, 19 '1' when the caller WAITs for replicas (else '' or absent). Keys: docs/data-model.md.
-- Returns {'ok', own seq, prev} or {'dup', "id ts seq", prev} or {error code}; prev is the
-- sender's inbox entry just before own seq ('' if none), see protocol guarantee 8.
local from, json = ARGV[1], ARGV[4]
local ownkey = ukey(from, ':inbox')
local function before(seq)
  local e = redis.call('XREVRANGE', ownkey, '(' .. seq, '-', 'COUNT', '1')
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
    -- With a WAIT behind this script (ARGV[19] = '1'), a write that replicates after the
    -- first send's copies, so the WAIT proves they reached the replicas too.
    if ARGV[19] == '1' then redis.call('SET', cidkey, prev, 'KEEPTTL') end
    return {'dup', prev, before(seq)}
  end
end
-- A session that outlived its deleted account must not bring the account's keys back.
if redis.call('EXISTS', ukey(from, '')) == 0 then return {'not_logged_in'} end
local recipients
if ARGV[2] == 'u' then
  if redis.call('EXISTS', ukey(ARGV[3], '')) == 0 then return {'no_such_user'} end
  if redis.call('SISMEMBER', ukey(ARGV[3], ':blocks'), from) == 1 then return {'blocked'} end
  recipients = {ARGV[3]}
else
  local mkey = gkey(ARGV[3], ':members')
  if redis.call('EXISTS', mkey) == 0 then return {'no_such_group'} end
  if redis.call('HEXISTS', mkey, from) == 0 then return {'not_a_member'} end
  recipients = redis.call('HKEYS', mkey)
end
-- Quota: text bytes per stored copy (the sender's own included), counted in time buckets of
-- the sliding 24 h window (field <bucket> → bytes, as in 0.2.0). Field "-<bucket>" holds the sum
-- of every other field in the window while <bucket> is the current one: those do not change
-- meanwhile, so a send reads two fields instead of the whole hash. It is recomputed (HGETALL)
-- when a bucket starts or the field is missing; whoever writes another bucket (a node whose
-- clock is in another hour) recomputes too and deletes it, and so do nodes of 0.2.0, which take
-- a negative field for a bucket that left the window. Buckets that left the window are dropped
-- when the sum is recomputed.
local copies = 1
for _, r in ipairs(recipients) do
  if r ~= from then copies = copies + 1 end
end
local charge = tonumber(ARGV[14]) * copies
local qkey, bucket = ukey(from, ':quota'), ARGV[16]
local sumf = '-' .. bucket
local q = redis.call('HMGET', qkey, sumf, bucket)
local others, flat, oldest, cur = tonumber(q[1]), nil, nil, nil
if not others then
  flat, others, oldest, cur = redis.call('HGETALL', qkey), 0, tonumber(ARGV[17]), tonumber(bucket)
  for i = 1, #flat, 2 do
    local b = tonumber(flat[i])
    if b >= oldest and b ~= cur then others = others + tonumber(flat[i + 1]) end
  end
end
if others + (tonumber(q[2]) or 0) + charge > tonumber(ARGV[15]) then return {'rate_limited'} end
-- HINCRBY is the first write on purpose: under maxmemory Redis refuses a script at its first
-- write that may grow memory, but not after any earlier write (HDEL would let it through).
-- The key outlives its newest bucket by 25 h, so its TTL is set only when a bucket starts.
if redis.call('HINCRBY', qkey, bucket, string.format('%d', charge)) == charge then
  redis.call('EXPIRE', qkey, '90000')
end
if flat then
  -- Every other field goes, and those still in the window come back after the sum: a small
  -- hash is a listpack, searched from its start, so the two fields that every send reads (the
  -- current bucket, which stays, and the sum) come first.
  local del, put = {}, {sumf, string.format('%d', others)}
  for i = 1, #flat, 2 do
    local b = tonumber(flat[i])
    if b ~= cur then
      del[#del + 1] = flat[i]
      if b >= oldest then
        put[#put + 1] = flat[i]
        put[#put + 1] = flat[i + 1]
      end
    end
  end
  if #del > 0 then redis.call('HDEL', qkey, unpack(del)) end
  redis.call('HSET', qkey, unpack(put))
end
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
  -- about one append in a hundred (old entries may stay that many appends longer; nothing
  -- that the rule keeps is ever trimmed).
  if string.find(seq, '00-', 1, true) then trim(key) end
  redis.call('PUBLISH', ukey(uid, ':ch'), 'M ' .. seq .. tail)
  return seq
end
local last = redis.call('XREVRANGE', ownkey, '+', '-', 'COUNT', '1')
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
