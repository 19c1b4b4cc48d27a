-- ARGV: now (ms), window (ms), max, member, then the limit keys without their 'sb:' prefix.
-- Reserves one attempt against every key in one step, so that concurrent attempts cannot all
-- pass a check made before any of them is recorded. Each key is a sorted set of attempts
-- (member '<ms>-<8 hex>', score = time in ms), the layout `sb:loginfail:*` always had.
-- Returns 1 when the member was added to every key, 0 (nothing written) when a key is full.
local now, window, max, member = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local cutoff = now - window
for i = 5, #ARGV do
  -- Counting (not trimming) keeps a refusal read-only.
  if redis.call('ZCOUNT', 'sb:' .. ARGV[i], '(' .. cutoff, '+inf') >= max then return 0 end
end
-- ZADD is the first write: under Redis maxmemory it is refused before anything is written.
for i = 5, #ARGV do
  local key = 'sb:' .. ARGV[i]
  redis.call('ZADD', key, now, member)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', cutoff)
  redis.call('PEXPIRE', key, window)
end
return 1
