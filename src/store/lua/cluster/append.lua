-- Cluster, step 2 of a send, once per recipient: the recipient's slot. KEYS: 1 inbox,
-- 2 channel, 3 (sends with a client_id only) the copy's record sb:{u:ID}:mid:<msg id>, which
-- makes a repeated step (a retry finishing an earlier attempt's fan-out) store nothing.
-- ARGV: 1 from id, 2 message JSON, 3 payload tail, 4 inbox max len, 5 retention cut-off id,
-- 6 hard max len, 7 record ttl, 8 '1' when a WAIT follows. Returns the copy's seq.
if KEYS[3] then
  local seq = redis.call('GET', KEYS[3])
  if seq then
    if ARGV[8] == '1' then redis.call('SET', KEYS[3], seq, 'KEEPTTL') end
    return seq
  end
end
local key = KEYS[1]
local seq = redis.call('XADD', key, 'MAXLEN', ARGV[6], '*', 'f', ARGV[1], 'm', ARGV[2])
if string.find(seq, '00-', 1, true) then
  local excess = redis.call('XLEN', key) - tonumber(ARGV[4])
  if excess > 0 then
    local minid = string.format('%d', tonumber(string.match(ARGV[5], '^%d+')) + 1) .. '-0'
    redis.call('XTRIM', key, 'MINID', '~', minid, 'LIMIT', string.format('%d', math.min(excess, 1000)))
  end
end
redis.call('SPUBLISH', KEYS[2], 'M ' .. seq .. ARGV[3])
if KEYS[3] then redis.call('SET', KEYS[3], seq, 'EX', ARGV[7]) end
return seq
