-- [latency] Request latency histograms per (epoch, variant) of the serving variant (not
-- intent-to-treat: a latency belongs to the variant that served the request). The
-- router bins (keys.latency_bucket); a batch brings batch.latency = {{e, v, {{b, count},
-- ...}}, ...} and the script adds the counts to latency["e|v|b"]. Fields are bounded by
-- epochs x variants x buckets. Batches from routers without histograms carry none.
-- Expects: latency_key (nil for callers from before the histograms).

-- Phase 1: the increments {field, count} of batch.latency, or nil and why not.
local function latency_increments(rows, chunk)
  local incr = {}
  if not latency_key then return incr end
  local found = redis.call('TYPE', latency_key)['ok']
  if found ~= 'none' and found ~= 'hash' then
    return nil, latency_key .. ' is a ' .. found .. ', not a hash'
  end
  for _, row in ipairs(rows or {}) do
    local prefix = row[1] .. '|' .. row[2] .. '|'
    for _, bc in ipairs(row[3]) do incr[#incr + 1] = {prefix .. string.format('%d', bc[1]), bc[2]} end
  end
  for first = 1, #incr, chunk do
    local names = {}
    for i = first, math.min(first + chunk - 1, #incr) do names[#names + 1] = incr[i][1] end
    local stored = redis.call('HMGET', latency_key, unpack(names))
    for i, name in ipairs(names) do
      local v = stored[i]
      if v and not string.match(v, '^%d+$') then
        return nil, 'corrupt value ' .. v .. ' in ' .. latency_key .. ' field ' .. name
      end
    end
  end
  return incr
end

-- Phase 2.
local function write_latency(incr)
  for _, op in ipairs(incr) do redis.call('HINCRBY', latency_key, op[1], string.format('%d', op[2])) end
end
