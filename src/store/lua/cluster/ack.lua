-- Cluster form of ack.lua with declared keys. KEYS: 1 acked, 2 inbox. ARGV: 1 seq.
local function parse(id)
  local ms, n = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(n)
end
local function less(a, b)
  local am, an = parse(a)
  local bm, bn = parse(b)
  return am < bm or (am == bm and an < bn)
end
local akey, ikey, seq = KEYS[1], KEYS[2], ARGV[1]
local cur = redis.call('GET', akey)
if cur and not less(cur, seq) then return 'ok' end
if #redis.call('XRANGE', ikey, seq, seq) == 1 then
  redis.call('SET', akey, seq)
  return 'ok'
end
local first = redis.call('XRANGE', ikey, '-', '+', 'COUNT', 1)
if #first == 0 then
  local info = redis.call('EXISTS', ikey) == 1 and redis.call('XINFO', 'STREAM', ikey) or nil
  if info then
    for i = 1, #info, 2 do
      if info[i] == 'last-generated-id' and not less(info[i + 1], seq) then return 'ok' end
    end
  end
  return 'bad_request'
end
if less(seq, first[1][1]) then return 'ok' end
return 'bad_request'
