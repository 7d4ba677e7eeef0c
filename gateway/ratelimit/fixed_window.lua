-- A fixed window (gateway/ratelimit/policy.py has the same rule in Python): ARGV[1] requests
-- per window of ARGV[2] seconds, windows aligned on Redis's own clock (TIME), so every
-- gateway sharing this Redis agrees on when they turn. KEYS[1] holds "window:count" and
-- expires when its window ends.
-- Returns {allowed (0|1), remaining, retry_after (s, string), reset_after (s, string)}.
local limit = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local window = math.floor(now / period)
local left = (window + 1) * period - now
local count = 0
local stored = redis.call('GET', KEYS[1])
if stored then
  local stored_window, stored_count = string.match(stored, '^(%d+):(%d+)$')
  if tonumber(stored_window) == window then
    count = tonumber(stored_count)
  end
end
local left_text = string.format('%.6f', left)
if count >= limit then
  return {0, 0, left_text, left_text}
end
count = count + 1
redis.call('SET', KEYS[1], string.format('%d:%d', window, count), 'PX', math.ceil(left * 1000))
return {1, limit - count, '0', left_text}
