-- The sliding window counter (gateway/ratelimit/policy.py has the same rule in Python): the
-- current window's count plus the previous one's, weighted by how much of it still overlaps
-- the last ARGV[2] seconds, must stay under ARGV[1]. Windows are aligned on Redis's own clock
-- (TIME). KEYS[1] holds "window:previous:current" and expires when the current count no
-- longer weighs anything.
-- Returns {allowed (0|1), remaining, retry_after (s, string), reset_after (s, string)}.
local limit = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local window = math.floor(now / period)
local previous, current = 0, 0
local stored = redis.call('GET', KEYS[1])
if stored then
  local w, p, c = string.match(stored, '^(%d+):(%d+):(%d+)$')
  w = tonumber(w)
  if w == window then
    previous, current = tonumber(p), tonumber(c)
  elseif w == window - 1 then
    previous = tonumber(c)
  end
end
local finish = (window + 1) * period
local weight = (finish - now) / period
if math.floor(previous * weight + current) + 1 > limit then
  -- Allowed again once the weighted count drops below the limit: later in this window, or
  -- in the next, where this window is the previous one.
  local at
  if current < limit then
    at = finish - period * (limit - current) / previous
  else
    at = finish + period - period * limit / current
  end
  local reset = finish
  if current > 0 then
    reset = finish + period
  end
  return {0, 0, string.format('%.6f', math.max(at - now, 0)), string.format('%.6f', reset - now)}
end
current = current + 1
local expires = finish + period - now
redis.call('SET', KEYS[1], string.format('%d:%d:%d', window, previous, current),
  'PX', math.ceil(expires * 1000))
local remaining = math.max(limit - math.floor(previous * weight + current), 0)
return {1, remaining, '0', string.format('%.6f', expires)}
