-- strata.lua: the per-(epoch, variant) sufficient statistics a batch adds to `agg`.
-- Expects: ncol, nbm, bcol, n_at, order, pcol, pairs_, agg, n_counted (unit_state.lua);
-- finite (numbers.lua).
--
-- Changes to agg are summed per stratum in Lua tables over all cells, then written with
-- one HINCRBY(FLOAT) per field: per-cell work builds no field names.
local strata, names = {}, {}
local HUGE = math.huge
-- "e|v", built once per batch: formatting the epoch number in a concatenation is not free.
local function stratum_name(e, v)
  local by_v = names[e]
  if not by_v then by_v = {}; names[e] = by_v end
  local s = by_v[v]
  if not s then
    s = e .. '|' .. v
    by_v[v] = s
  end
  return s
end

-- e -> v -> totals, for a lookup without a call per cell (`acc_of[e][v]`, else `stratum`).
local acc_of = {}

local function stratum(e, v)
  local s = stratum_name(e, v)
  local acc = strata[s]
  if not acc then
    acc = {units = 0, exposures = 0, exposures_sq = 0, dn = 0, events = {}, sum = {}, sum_sq = {}, sum_xn = {},
           sum_xy = {}}
    for j = 1, ncol do acc.events[j], acc.sum[j], acc.sum_sq[j], acc.sum_xn[j] = 0, 0, 0, 0 end
    for p = 1, #pcol do acc.sum_xy[p] = 0 end
    strata[s] = acc
    local by_v = acc_of[e]
    if not by_v then by_v = {}; acc_of[e] = by_v end
    by_v[v] = acc
  end
  return s, acc
end

-- Adds the exact change old -> new of every sufficient statistic to a stratum's totals.
-- `cell` (or nil) brings the event counts.
-- [held] A unit's values count in the sums only once it has an exposure (n_u > 0): an
-- outcome that reaches Redis before its unit's exposure (another router flushed first)
-- is held in the unit state and credited, whole, when the exposure lands. So a stratum's
-- sums never hold units its `units` does not count (a binary sum above its n).
local function accumulate(acc, old, new, cell)
  local n0, n1 = old[1], new[1]
  local w0, w1 = n0 > 0 and 1 or 0, n1 > 0 and 1 or 0
  if cell then
    local events = acc.events
    for i = 1, nbm do
      local j = bcol[i]
      events[j] = events[j] + cell[n_at[i]]
    end
  end
  if n0 == 0 and n1 > 0 then acc.units = acc.units + 1 end
  acc.exposures = acc.exposures + (n1 - n0)
  acc.exposures_sq = acc.exposures_sq + n1 * n1 - n0 * n0
  -- Every column, not just the batch's: a change of n moves sum_xn of all metrics.
  -- A column at 0 before and after (most of an exposure's) changes nothing: skipped.
  local sum, sum_sq, sum_xn = acc.sum, acc.sum_sq, acc.sum_xn
  for j = 1, ncol do
    local a, b = old[j + 1] or 0, new[j + 1]
    if a ~= 0 or b ~= 0 then
      if b ~= b or b == HUGE or b == -HUGE then return nil, order[j] end  -- [faults] not finite
      sum[j] = sum[j] + (w1 * b - w0 * a)
      sum_sq[j] = sum_sq[j] + (w1 * b * b - w0 * a * a)
      sum_xn[j] = sum_xn[j] + (b * n1 - a * n0)
    end
  end
  -- [issue 9] d(x*y) of each ratio pair, from the old and the new state.
  for p = 1, #pcol do
    local jx, jy = pcol[p][1] + 1, pcol[p][2] + 1
    acc.sum_xy[p] = acc.sum_xy[p] + (w1 * new[jx] * new[jy] - w0 * (old[jx] or 0) * (old[jy] or 0))
  end
  return true
end

-- The agg increments of `strata`, as {field, delta, integer?}.
local function increments_of(strata)
  local increments = {}
  local function add(field, d, integer)
    if d ~= 0 then increments[#increments + 1] = {field, d, integer} end
  end
  for s, acc in pairs(strata) do
    -- [issue 15] The columns whose event count is the cells' n (the built-ins from version 4
    -- on): added once per stratum, not per cell (`counted`, unit_state.lua).
    for q = 1, #n_counted do
      local j = n_counted[q]
      acc.events[j] = acc.events[j] + acc.dn
    end
    add(s .. '|units', acc.units, true)
    add(s .. '|exposures', acc.exposures, true)
    add(s .. '|exposures_sq', acc.exposures_sq, true)
    for j, m in ipairs(order) do
      local prefix = s .. '|' .. m .. '|'
      add(prefix .. 'events', acc.events[j], true)
      add(prefix .. 'sum', acc.sum[j], false)
      add(prefix .. 'sum_sq', acc.sum_sq[j], false)
      add(prefix .. 'sum_xn', acc.sum_xn[j], false)
    end
    for p, pair in ipairs(pairs_) do add(s .. '|' .. pair[1] .. '|sum_xy|' .. pair[2], acc.sum_xy[p], false) end
  end
  return increments
end

-- Phase 1: nil when every stored value takes its increment, else why not.
local function check_increments(increments, chunk)
  for first = 1, #increments, chunk do
    local slice, names = {}, {}
    for i = first, math.min(first + chunk - 1, #increments) do
      slice[#slice + 1] = increments[i]
      names[#names + 1] = increments[i][1]
    end
    local stored = redis.call('HMGET', agg, unpack(names))
    for i, op in ipairs(slice) do
      local v = stored[i]
      if v and not (op[3] and string.match(v, '^%-?%d+$') or not op[3] and tonumber(v)) then
        return 'corrupt value ' .. v .. ' in ' .. agg .. ' field ' .. op[1]
      end
      -- the delta and the value it leads to, both finite
      if not finite(op[2]) or not finite((tonumber(v) or 0) + op[2]) then
        return 'non-finite result for ' .. agg .. ' field ' .. op[1]
      end
    end
  end
  return nil
end

-- Phase 2.
local function write_increments(increments)
  for _, op in ipairs(increments) do
    if op[3] then
      redis.call('HINCRBY', agg, op[1], string.format('%d', op[2]))
    else
      redis.call('HINCRBYFLOAT', agg, op[1], string.format('%.17g', op[2]))
    end
  end
end
