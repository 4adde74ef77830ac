-- expiry.lua: per-unit state that is not written for a while goes.
-- Expects: units, unit_seen, CHUNK; num (numbers.lua).
--
-- Unit states not written for `ttl` seconds (by Redis' clock, `now`) expire: at most
-- EXPIRE_PER_BATCH members of unit_seen per batch, so a flush stays short however many
-- are due. A unit's h|u member stands for its record h|u and h (the latest exposure).
-- [old units] An h|f member stands for all the fields of a unit stored before records:
-- h, h|f, its state h|e|v (e|v from h|f) and h|e|v|c. Any other member is its own
-- field's, and a floor only: while its unit's h|u or h|f member is not due, the field is
-- kept and its member takes the unit's score (units written before one member per unit,
-- and outcomes held before the exposure landed, have such members).
local EXPIRE_PER_BATCH = 2000

-- The fields an h|f member stands for.
local function unit_fields(first_field, first, out)
  local h = string.sub(first_field, 1, -3)
  out[#out + 1] = h
  out[#out + 1] = first_field
  local e, v = string.match(first or '', '^(%d+)|([^|]+)')
  if e then
    out[#out + 1] = h .. '|' .. e .. '|' .. v
    out[#out + 1] = h .. '|' .. e .. '|' .. v .. '|c'
  end
end

local function expire_units(now, ttl)
  if ttl <= 0 then return end
  local horizon = now - ttl
  local due = redis.call('ZRANGEBYSCORE', unit_seen, '-inf', '(' .. num(horizon), 'LIMIT', 0, EXPIRE_PER_BATCH)
  if #due == 0 then return end
  local firsts, others, fields, rescore = {}, {}, {}, {}
  for _, m in ipairs(due) do
    local tail = string.sub(m, -2)
    if tail == '|u' then  -- a record: its h and itself
      fields[#fields + 1] = string.sub(m, 1, -3)
      fields[#fields + 1] = m
    elseif tail == '|f' then
      firsts[#firsts + 1] = m
    else
      others[#others + 1] = m
    end
  end
  if #firsts > 0 then
    local values = redis.call('HMGET', units, unpack(firsts))
    for i, f in ipairs(firsts) do unit_fields(f, values[i], fields) end
  end
  if #others > 0 then
    local names = {}
    for i, m in ipairs(others) do
      local h = string.match(m, '^[^|]*')
      names[2 * i - 1], names[2 * i] = h .. '|u', h .. '|f'
    end
    local scores = redis.pcall('ZMSCORE', unit_seen, unpack(names))
    if scores.err then scores = {} end  -- Redis before 6.2: every due field goes, as before
    for i, m in ipairs(others) do
      local kept = tonumber(scores[2 * i - 1]) or tonumber(scores[2 * i])
      if kept and kept >= horizon then
        rescore[#rescore + 1] = kept
        rescore[#rescore + 1] = m
      else
        fields[#fields + 1] = m
      end
    end
  end
  for first = 1, #fields, CHUNK do
    redis.call('HDEL', units, unpack(fields, first, math.min(first + CHUNK - 1, #fields)))
  end
  redis.call('ZREM', unit_seen, unpack(due))
  for first = 1, #rescore, 2 * CHUNK do
    redis.call('ZADD', unit_seen, unpack(rescore, first, math.min(first + 2 * CHUNK - 1, #rescore)))
  end
end
