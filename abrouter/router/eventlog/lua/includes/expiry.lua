-- expiry.lua: per-unit state that is not written for a while goes.
-- Expects: units, unit_seen; num (numbers.lua).
--
-- Unit states not written for `ttl` seconds (by Redis' clock, `now`) expire: at most
-- EXPIRE_PER_BATCH fields per batch, so a flush stays short however many are due.
local EXPIRE_PER_BATCH = 2000
local function expire_units(now, ttl)
  if ttl <= 0 then return end
  local due = redis.call('ZRANGEBYSCORE', unit_seen, '-inf', '(' .. num(now - ttl), 'LIMIT', 0, EXPIRE_PER_BATCH)
  if #due > 0 then
    redis.call('HDEL', units, unpack(due))
    redis.call('ZREM', unit_seen, unpack(due))
  end
end
