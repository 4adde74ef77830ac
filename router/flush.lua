-- flush.lua: apply one pre-aggregated batch of router events, exactly once.
--
-- The key layout and every field name are documented in router/keys.py; the batch
-- format is built by router/events.py (Aggregator.batch). One call per batch, atomic:
-- either all of a batch's effects happen (and its seq is recorded) or none do.
--
-- KEYS: agg, units, epochs, producers, events, metrics   (keys.Keys.all())
-- ARGV: producer, seq, allow_gap ("1" or "0"), payload (JSON), raw events (stored
--       untouched), stream MAXLEN in batches, stream cap in raw events
-- Returns {status, last}: status 1 applied, 0 duplicate (seq <= last: already
-- applied), -1 refused because seq ~= last + 1 and allow_gap is "0" (the producer's
-- earlier batches are missing, e.g. lost by a Redis restart). last is the producer's
-- sequence number before this call.

local agg, units, epochs, producers, stream, metrics_key =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local producer, seq, allow_gap = ARGV[1], tonumber(ARGV[2]), ARGV[3] == '1'

-- The guard comes first and costs one HGET: a duplicate is not even decoded.
local last = tonumber(redis.call('HGET', producers, producer) or '0')
if seq <= last then return {0, last} end
if seq ~= last + 1 and not allow_gap then return {-1, last} end

local batch = cjson.decode(ARGV[4])

-- 17 significant digits: the stored per-unit state round-trips exactly (cjson.encode
-- would keep only 14).
local function num(x) return string.format('%.17g', x) end

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
local binary = {}
for _, m in ipairs(batch.binary) do binary[m] = true end

-- agg increments are summed over the batch's cells first: one HINCRBY per field.
local ints, floats = {}, {}
local function bump(t, field, d)
  if d ~= 0 then t[field] = (t[field] or 0) + d end
end

local function encode_state(n, x)
  local parts = {num(n)}
  for j = 1, #order do parts[j + 1] = num(x[j]) end
  return '[' .. table.concat(parts, ',') .. ']'
end

-- One cell: {unit_hash, epoch, variant, latest, dn, dx_1, count_1, dx_2, count_2, ...}
-- in the order of batch.metrics. Reads the unit's state, moves it, and adds the exact
-- change of every sufficient statistic: d(x^2) = x1^2 - x0^2, d(xn) = x1*n1 - x0*n0.
local function apply_cell(cell)
  local stratum = cell[2] .. '|' .. cell[3]
  local field = cell[1] .. '|' .. stratum
  local raw = redis.call('HGET', units, field)
  local state = raw and cjson.decode(raw) or {0}
  local dn = cell[5]
  local n0 = state[1]
  local n1 = n0 + dn
  local x0, x1 = {}, {}
  for j = 1, #order do
    x0[j] = state[j + 1] or 0
    x1[j] = x0[j]
  end
  for i, m in ipairs(batch.metrics) do
    local j, dx, count = col[m], cell[4 + 2 * i], cell[5 + 2 * i]
    if binary[m] then x1[j] = math.max(x1[j], dx) else x1[j] = x1[j] + dx end
    bump(ints, stratum .. '|' .. m .. '|events', count)
  end
  if n0 == 0 and n1 > 0 then bump(ints, stratum .. '|units', 1) end
  bump(ints, stratum .. '|exposures', dn)
  bump(ints, stratum .. '|exposures_sq', n1 * n1 - n0 * n0)
  -- Every column, not just the batch's: a change of n moves sum_xn of all metrics.
  for j, m in ipairs(order) do
    local prefix = stratum .. '|' .. m .. '|'
    bump(floats, prefix .. 'sum', x1[j] - x0[j])
    bump(floats, prefix .. 'sum_sq', x1[j] * x1[j] - x0[j] * x0[j])
    bump(floats, prefix .. 'sum_xn', x1[j] * n1 - x0[j] * n0)
  end
  redis.call('HSET', units, field, encode_state(n1, x1))
  -- The unit's latest exposure in this batch: its stratum credits unit-addressed outcomes.
  if cell[4] == 1 then redis.call('HSET', units, cell[1], stratum) end
end

for _, cell in ipairs(batch.cells) do apply_cell(cell) end
for field, d in pairs(ints) do redis.call('HINCRBY', agg, field, string.format('%d', d)) end
for field, d in pairs(floats) do redis.call('HINCRBYFLOAT', agg, field, num(d)) end

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
return {1, last}
