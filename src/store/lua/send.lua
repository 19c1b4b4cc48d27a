-- Stores one message in every recipient's inbox and the sender's, publishing each copy to the
-- inbox owner's channel in the same atomic step, so live order equals inbox order.
-- ARGV: 1 from id, 2 'u' or 'g', 3 target id, 4 message JSON, 5 origin session, 6 client_id
-- ('' for none), 7 msg id, 8 ts, 9 inbox max len, 10 retention cut-off id ("ms-max"),
-- 11 client_id ttl secs, 12 trace context (W3C traceparent or '-'). Returns {'ok', own seq}, {'dup', "id ts seq"} or {error code}.
local from, json = ARGV[1], ARGV[4]
local cidkey
if ARGV[6] ~= '' then
  cidkey = ukey(from, ':cid:' .. ARGV[6])
  local prev = redis.call('GET', cidkey)
  if prev then return {'dup', prev} end
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
local maxlen, cutoff = tonumber(ARGV[9]), ARGV[10]
-- Trims only entries that are both beyond the newest `maxlen` and older than the cut-off.
local function trim(key)
  local excess = redis.call('XLEN', key) - maxlen
  if excess <= 0 then return end
  local old = redis.call('XRANGE', key, '-', cutoff, 'COUNT', math.min(excess, 1000))
  if #old == 0 then return end
  local nxt = redis.call('XRANGE', key, '(' .. old[#old][1], '+', 'COUNT', 1)
  if #nxt == 1 then redis.call('XTRIM', key, 'MINID', nxt[1][1]) end
end
-- Channel payload: M <seq> <origin session> <ts> <traceparent> <json> (see docs/data-model.md).
local tail = ' ' .. ARGV[5] .. ' ' .. ARGV[8] .. ' ' .. ARGV[12] .. ' ' .. json
local function append(uid)
  local key = ukey(uid, ':inbox')
  local seq = redis.call('XADD', key, '*', 'f', from, 'm', json)
  trim(key)
  redis.call('PUBLISH', ukey(uid, ':ch'), 'M ' .. seq .. tail)
  return seq
end
local own = append(from)
for _, r in ipairs(recipients) do
  if r ~= from then append(r) end
end
if cidkey then redis.call('SET', cidkey, ARGV[7] .. ' ' .. ARGV[8] .. ' ' .. own, 'EX', ARGV[11]) end
return {'ok', own}
