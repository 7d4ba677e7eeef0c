-- GCRA in one atomic step (gateway/ratelimit/gcra.py has the same rule in Python).
-- KEYS[1]: the key's bucket. ARGV: seconds per token, burst (tokens), cost (tokens).
-- Time is Redis's own clock (TIME), so every gateway sharing this Redis agrees on it.
-- Returns {allowed (0|1), remaining tokens, retry_after (s, string), reset_after (s, string)}:
-- floats travel as strings, since Redis turns a Lua number into an integer reply.
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then
  tat = now
end
local tolerance = burst * interval
local new_tat = tat + cost * interval
local ahead = new_tat - now
if ahead > tolerance + 1e-9 then
  return {0, 0, string.format('%.6f', ahead - tolerance), string.format('%.6f', tat - now)}
end
-- The key expires when its bucket is full again: a key Redis no longer has is a full bucket.
redis.call('SET', KEYS[1], string.format('%.6f', new_tat), 'PX', math.ceil(ahead * 1000))
local remaining = math.floor((tolerance - ahead) / interval + 1e-9)
return {1, remaining, '0', string.format('%.6f', ahead)}
