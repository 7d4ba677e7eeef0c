-- The moving window (gateway/ratelimit/policy.py has the same rule in Python): a request is
-- allowed when fewer than ARGV[1] were allowed in the ARGV[2] seconds before it, on Redis's
-- own clock (TIME). KEYS[1] is a sorted set of the allowed requests' times (never more than
-- ARGV[1] of them) that expires when the newest leaves the window.
-- Returns {allowed (0|1), remaining, retry_after (s, string), reset_after (s, string)}.
local limit = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
-- Times before the window leave; a time exactly at its start is still in it.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. string.format('%.6f', now - period))
local count = redis.call('ZCARD', KEYS[1])
if count >= limit then
  -- Allowed again when the limit-th most recent allowed request leaves the window.
  local oldest = redis.call('ZRANGE', KEYS[1], count - limit, count - limit, 'WITHSCORES')
  local newest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  return {0, 0, string.format('%.6f', tonumber(oldest[2]) + period - now),
    string.format('%.6f', tonumber(newest[2]) + period - now)}
end
-- Two requests in one microsecond get distinct members: the count differs between them.
local stamp = string.format('%.6f', now)
redis.call('ZADD', KEYS[1], stamp, stamp .. ':' .. count)
redis.call('PEXPIRE', KEYS[1], math.ceil(period * 1000) + 1)
return {1, limit - count - 1, '0', string.format('%.6f', period)}
