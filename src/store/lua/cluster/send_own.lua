-- Cluster, step 1 of a send: the sender's slot. KEYS: 1 sender's inbox, 2 sender's channel,
-- 3 quota hash, 4 client_id record, 5 client_id fingerprint (4 and 5 only with a client_id).
-- ARGV: 1 from id, 2 message JSON, 3 payload tail (" origin ts trace json"), 4 msg id, 5 ts,
-- 6 inbox max len, 7 retention cut-off id, 8 client_id ttl, 9 fingerprint, 10 charge (text
-- bytes × copies), 11 daily quota, 12 current bucket, 13 oldest bucket, 14 hard max len,
-- 15 '1' when a WAIT follows (a repeat then writes, so the WAIT covers the first copies).
-- Returns {'ok', own seq, prev}, {'dup', "id ts seq", prev, json of the first send or ''},
-- or {error code}. The quota and retention rules are those of send.lua (docs/data-model.md).
local ownkey, from = KEYS[1], ARGV[1]
local function before(seq)
  local e = redis.call('XREVRANGE', ownkey, '(' .. seq, '-', 'COUNT', '1')
  if #e == 1 then return e[1][1] end
  return ''
end
if KEYS[4] then
  local prev = redis.call('GET', KEYS[4])
  if prev then
    local id, ts, seq = string.match(prev, '^(%S+) (%S+) (%S+)$')
    if not id then return {'internal'} end
    local fp = redis.call('GET', KEYS[5])
    if fp and fp ~= ARGV[9] then return {'client_id_conflict'} end
    if ARGV[15] == '1' then redis.call('SET', KEYS[4], prev, 'KEEPTTL') end
    -- The stored copy, so that the caller can finish a fan-out an earlier attempt left undone.
    local e = redis.call('XRANGE', ownkey, seq, seq)
    local json = ''
    if #e == 1 then
      for i = 1, #e[1][2], 2 do if e[1][2][i] == 'm' then json = e[1][2][i + 1] end end
    end
    return {'dup', prev, before(seq), json}
  end
end
local charge = tonumber(ARGV[10])
local qkey, bucket = KEYS[3], ARGV[12]
local sumf = '-' .. bucket
local q = redis.call('HMGET', qkey, sumf, bucket)
local others, flat, oldest, cur = tonumber(q[1]), nil, nil, nil
if not others then
  flat, others, oldest, cur = redis.call('HGETALL', qkey), 0, tonumber(ARGV[13]), tonumber(bucket)
  for i = 1, #flat, 2 do
    local b = tonumber(flat[i])
    if b >= oldest and b ~= cur then others = others + tonumber(flat[i + 1]) end
  end
end
if others + (tonumber(q[2]) or 0) + charge > tonumber(ARGV[11]) then return {'rate_limited'} end
if redis.call('HINCRBY', qkey, bucket, string.format('%d', charge)) == charge then
  redis.call('EXPIRE', qkey, '90000')
end
if flat then
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
local last = redis.call('XREVRANGE', ownkey, '+', '-', 'COUNT', '1')
local prev = ''
if #last == 1 then prev = last[1][1] end
local seq = redis.call('XADD', ownkey, 'MAXLEN', ARGV[14], '*', 'f', from, 'm', ARGV[2])
if string.find(seq, '00-', 1, true) then
  local excess = redis.call('XLEN', ownkey) - tonumber(ARGV[6])
  if excess > 0 then
    local minid = string.format('%d', tonumber(string.match(ARGV[7], '^%d+')) + 1) .. '-0'
    redis.call('XTRIM', ownkey, 'MINID', '~', minid, 'LIMIT', string.format('%d', math.min(excess, 1000)))
  end
end
redis.call('SPUBLISH', KEYS[2], 'M ' .. seq .. ARGV[3])
if KEYS[4] then
  redis.call('SET', KEYS[4], ARGV[4] .. ' ' .. ARGV[5] .. ' ' .. seq, 'EX', ARGV[8])
  redis.call('SET', KEYS[5], ARGV[9], 'EX', ARGV[8])
end
return {'ok', seq, prev}
