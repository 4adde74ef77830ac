-- flush.lua: apply one pre-aggregated batch of router events, exactly once.
--
-- The key layout and every field name are documented in router/keys.py; the batch
-- format is built by router/events.py (Aggregator.batch). One call per batch, atomic:
-- either all of a batch's effects happen (and its seq is recorded) or none do.
--
-- KEYS: agg, units, epochs, producers, events, metrics, outcome_ids   (keys.Keys.all())
-- ARGV: producer, seq, allow_gap ("1" or "0"), payload (JSON), raw events (stored
--       untouched), stream MAXLEN in batches, stream cap in raw events, outcome id
--       window in seconds
-- Returns {status, last, repeated}: status 1 applied, 0 duplicate (seq <= last: already
-- applied), -1 refused because seq ~= last + 1 and allow_gap is "0" (the producer's
-- earlier batches are missing, e.g. lost by a Redis restart). last is the producer's
-- sequence number before this call; repeated the number of keyed outcomes skipped
-- because their event_id was already recorded.

local agg, units, epochs, producers, stream, metrics_key, outcome_ids =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local producer, seq, allow_gap = ARGV[1], tonumber(ARGV[2]), ARGV[3] == '1'

-- The guard comes first and costs one HGET: a duplicate is not even decoded.
local last = tonumber(redis.call('HGET', producers, producer) or '0')
if seq <= last then return {0, last, 0} end
if seq ~= last + 1 and not allow_gap then return {-1, last, 0} end

local batch = cjson.decode(ARGV[4])

-- 17 significant digits: the stored per-unit state round-trips exactly (cjson.encode
-- would keep only 14). Zero, the most common value, skips string.format.
local function num(x)
  if x == 0 then return '0' end
  return string.format('%.17g', x)
end

-- The column order of unit states: the stored list, grown by names it lacks.
local function columns(names)
  local raw = redis.call('GET', metrics_key)
  local order = raw and cjson.decode(raw) or {}
  local col = {}
  for j, m in ipairs(order) do col[m] = j end
  local grown = false
  for _, m in ipairs(names) do
    if not col[m] then
      order[#order + 1] = m
      col[m] = #order
      grown = true
    end
  end
  if grown then redis.call('SET', metrics_key, cjson.encode(order)) end
  return order, col
end

local order, col = columns(batch.metrics)
local ncol, nbm = #order, #batch.metrics
local is_binary = {}
for _, m in ipairs(batch.binary) do is_binary[m] = true end
-- Per batch metric i: its column in the unit state, and whether x_u is a max.
local bcol, bbin = {}, {}
for i, m in ipairs(batch.metrics) do
  bcol[i], bbin[i] = col[m], is_binary[m] or false
end

-- Keyed outcomes {event_id, h, e, v, metric, value, ts}: each id counts once. A new one
-- is folded into the batch's cell for (h, e, v), which keeps cell keys unique per batch.
local cells = batch.cells
local repeated = 0
local keyed = batch.keyed or {}
if #keyed > 0 then
  local newest = 0
  for _, k in ipairs(keyed) do if k[7] > newest then newest = k[7] end end
  redis.call('ZREMRANGEBYSCORE', outcome_ids, '-inf', '(' .. num(newest - tonumber(ARGV[8])))
  local by_key, metric_at = {}, {}
  for _, c in ipairs(cells) do by_key[c[1] .. '|' .. c[2] .. '|' .. c[3]] = c end
  for i, m in ipairs(batch.metrics) do metric_at[m] = i end
  for _, k in ipairs(keyed) do
    if redis.call('ZADD', outcome_ids, 'NX', num(k[7]), k[1]) == 0 then
      repeated = repeated + 1
    else
      local key = k[2] .. '|' .. k[3] .. '|' .. k[4]
      local c = by_key[key]
      if not c then
        c = {k[2], k[3], k[4], 0, 0}
        for i = 1, nbm do c[4 + 2 * i], c[5 + 2 * i] = 0, 0 end
        cells[#cells + 1] = c
        by_key[key] = c
      end
      local i = metric_at[k[5]]
      if bbin[i] then
        if k[6] > c[4 + 2 * i] then c[4 + 2 * i] = k[6] end
      else
        c[4 + 2 * i] = c[4 + 2 * i] + k[6]
      end
      c[5 + 2 * i] = c[5 + 2 * i] + 1
    end
  end
end

-- Changes to agg are summed per stratum in Lua tables over all cells, then written with
-- one HINCRBY(FLOAT) per field: per-cell work builds no field names.
local strata, names = {}, {}
local function stratum(e, v)
  local by_v = names[e]
  if not by_v then by_v = {}; names[e] = by_v end
  local s = by_v[v]
  if not s then
    s = e .. '|' .. v
    by_v[v] = s
    local acc = {units = 0, exposures = 0, exposures_sq = 0, events = {}, sum = {}, sum_sq = {}, sum_xn = {}}
    for j = 1, ncol do acc.events[j], acc.sum[j], acc.sum_sq[j], acc.sum_xn[j] = 0, 0, 0, 0 end
    strata[s] = acc
  end
  return s, strata[s]
end

-- One cell: {unit_hash, epoch, variant, latest, dn, dx_1, count_1, dx_2, count_2, ...}
-- in the order of batch.metrics, and the unit's stored state (or false). Moves the state
-- and adds the exact change of every sufficient statistic to the stratum's totals:
-- d(x^2) = x1^2 - x0^2, d(xn) = x1*n1 - x0*n0. Returns the new state, encoded.
local function apply_cell(cell, raw, acc)
  local state = raw and cjson.decode(raw) or {0}
  local dn = cell[5]
  local n0 = state[1]
  local n1 = n0 + dn
  local x1 = {}
  for j = 1, ncol do x1[j] = state[j + 1] or 0 end
  for i = 1, nbm do
    local j, dx = bcol[i], cell[4 + 2 * i]
    if bbin[i] then
      if dx > x1[j] then x1[j] = dx end
    else
      x1[j] = x1[j] + dx
    end
    acc.events[j] = acc.events[j] + cell[5 + 2 * i]
  end
  if n0 == 0 and n1 > 0 then acc.units = acc.units + 1 end
  acc.exposures = acc.exposures + dn
  acc.exposures_sq = acc.exposures_sq + n1 * n1 - n0 * n0
  -- Every column, not just the batch's: a change of n moves sum_xn of all metrics.
  local parts = {num(n1)}
  for j = 1, ncol do
    local a, b = state[j + 1] or 0, x1[j]
    acc.sum[j] = acc.sum[j] + (b - a)
    acc.sum_sq[j] = acc.sum_sq[j] + (b * b - a * a)
    acc.sum_xn[j] = acc.sum_xn[j] + (b * n1 - a * n0)
    parts[j + 1] = num(b)
  end
  return '[' .. table.concat(parts, ',') .. ']'
end

-- Cells in chunks: one HMGET and one HSET per chunk instead of two calls per cell. A
-- cell key (h|e|v) occurs once per batch, so reading a chunk before writing it is exact.
local CHUNK = 500
for first = 1, #cells, CHUNK do
  local last_cell = math.min(first + CHUNK - 1, #cells)
  local fields = {}
  for i = first, last_cell do
    local c = cells[i]
    fields[#fields + 1] = c[1] .. '|' .. c[2] .. '|' .. c[3]
  end
  local raws = redis.call('HMGET', units, unpack(fields))
  local writes = {}
  for i = first, last_cell do
    local c, k = cells[i], i - first + 1
    local s, acc = stratum(c[2], c[3])
    writes[#writes + 1] = fields[k]
    writes[#writes + 1] = apply_cell(c, raws[k], acc)
    -- The unit's latest exposure in this batch: its stratum credits unit-addressed outcomes.
    if c[4] == 1 then
      writes[#writes + 1] = c[1]
      writes[#writes + 1] = s
    end
  end
  redis.call('HSET', units, unpack(writes))
end

local function incr(field, d)
  if d ~= 0 then redis.call('HINCRBY', agg, field, string.format('%d', d)) end
end
local function incr_float(field, d)
  if d ~= 0 then redis.call('HINCRBYFLOAT', agg, field, string.format('%.17g', d)) end
end
for s, acc in pairs(strata) do
  incr(s .. '|units', acc.units)
  incr(s .. '|exposures', acc.exposures)
  incr(s .. '|exposures_sq', acc.exposures_sq)
  for j, m in ipairs(order) do
    local prefix = s .. '|' .. m .. '|'
    incr(prefix .. 'events', acc.events[j])
    incr_float(prefix .. 'sum', acc.sum[j])
    incr_float(prefix .. 'sum_sq', acc.sum_sq[j])
    incr_float(prefix .. 'sum_xn', acc.sum_xn[j])
  end
end

-- Weights of each epoch: the first registration wins, so replicas cannot disagree later.
for _, pair in ipairs(batch.epochs) do redis.call('HSETNX', epochs, pair[1], pair[2]) end
-- The audit stream keeps about ARGV[7] raw events (at this batch size), at most ARGV[6]
-- batches: its memory stays bounded however busy the router is.
if batch.n > 0 then
  local maxlen = math.max(1, math.min(tonumber(ARGV[6]), math.ceil(tonumber(ARGV[7]) / batch.n)))
  redis.call('XADD', stream, 'MAXLEN', '~', tostring(maxlen), '*',
             'producer', producer, 'seq', ARGV[2], 'n', tostring(batch.n), 'events', ARGV[5])
end

redis.call('HSET', producers, producer, ARGV[2])
return {1, last, repeated}
