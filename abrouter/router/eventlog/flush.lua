-- flush.lua: apply one pre-aggregated batch of router events, exactly once.
--
-- The key layout and every field name are documented in router/keys.py; the batch
-- format is built by router/events.py (Aggregator.batch). One call per batch, atomic:
-- either all of a batch's effects happen (and its seq is recorded) or none do.
--
-- Redis does not undo a script's writes when it fails half-way, so the script works in
-- two phases: the first only reads and computes (and may refuse the batch), the second
-- only writes. Phase 1 checks every key's type, every unit state it moves and every agg
-- value it increments, so a batch the script cannot apply (data some other program
-- wrote) changes nothing, and the router can set it aside (quarantine).
--
-- KEYS: agg, units, epochs, producers, events, metrics, outcome_ids, meta, unit_seen,
--       latency (keys.Keys.all())
-- ARGV: producer, seq, allow_gap ("1" or "0"), payload (JSON), raw events (stored
--       untouched), stream MAXLEN in batches, stream cap in raw events, outcome id
--       window in seconds, the meta `created` this producer saw last ("" if none),
--       unit state lifetime in seconds (0: forever)
-- Returns {status, last, repeated, created, reset}: status 1 applied, 0 duplicate (seq
-- <= last: already applied), -1 refused because seq ~= last + 1 and allow_gap is "0"
-- (the producer's earlier batches are missing, e.g. lost by a Redis restart). last is
-- the producer's sequence number before this call; repeated the number of keyed
-- outcomes skipped because their event_id was already recorded; created the meta
-- marker's `created` and reset 1 when it differs from ARGV[9] (Redis lost the
-- experiment's data). {-2, last, 0, reason}: refused, nothing written, because the
-- batch cannot be applied as it is (see `reason`).
--
-- Times (outcome ids, unit state ages, the marker) come from Redis' own clock (TIME),
-- never from the producers': one replica with a clock days ahead must not prune what
-- the others still need.

local agg, units, epochs, producers, stream, metrics_key, outcome_ids, meta, unit_seen =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local producer, seq, allow_gap = ARGV[1], tonumber(ARGV[2]), ARGV[3] == '1'

-- [faults] Skipped seqs. A seq a producer skipped (its batch was quarantined, or lost by
-- a Redis restart) is kept in producers[<producer>|gaps] as ranges {{from, to}, ...}, so
-- a later replay of that batch under its own (producer, seq) applies once, and a replay
-- of one that applied is a duplicate. Every range is kept, however many: dropping the
-- oldest made their batches count as duplicates when the quarantine was replayed. A
-- range costs ~20 bytes and is removed when its seqs are all replayed.
local gaps_field = producer .. '|gaps'
local gaps, gaps_changed = nil, false
local function load_gaps()
  if gaps == nil then
    local raw = redis.call('HGET', producers, gaps_field)
    gaps = raw and cjson.decode(raw) or {}
  end
  return gaps
end

-- The guard comes first and costs one HGET: a duplicate is not even decoded.
local last = tonumber(redis.call('HGET', producers, producer) or '0')
if seq <= last then
  local filled = nil
  for i, r in ipairs(load_gaps()) do
    if seq >= r[1] and seq <= r[2] then filled = i end
  end
  if not filled then return {0, last, 0} end
  local r = table.remove(gaps, filled)
  if r[1] < seq then table.insert(gaps, filled, {r[1], seq - 1}); filled = filled + 1 end
  if seq < r[2] then table.insert(gaps, filled, {seq + 1, r[2]}) end
  gaps_changed = true
elseif seq ~= last + 1 then
  if not allow_gap then return {-1, last, 0} end
  local g = load_gaps()
  g[#g + 1] = {last + 1, seq - 1}
  gaps_changed = true
end
-- [/faults]

-- Redis' clock, in seconds (see the header).
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1e6

local batch = cjson.decode(ARGV[4])

-- [faults] Every number that reaches Redis must be finite: HINCRBYFLOAT fails on an
-- infinite result, and a state holding inf or nan poisons every later batch of its unit.
local function finite(x)
  return x == x and x ~= math.huge and x ~= -math.huge
end
-- [/faults]

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
  return order, col, grown
end

-- ---------------------------------------------------------------- phase 1: read only

-- Phase 2 must not fail half-way: every key it writes must have the type it expects.
local want = {[agg] = 'hash', [units] = 'hash', [epochs] = 'hash', [stream] = 'stream',
              [metrics_key] = 'string', [outcome_ids] = 'zset', [meta] = 'hash', [unit_seen] = 'zset'}
for key, kind in pairs(want) do
  local found = redis.call('TYPE', key)['ok']
  if found ~= 'none' and found ~= kind then
    return {-2, last, 0, key .. ' is a ' .. found .. ', not a ' .. kind}
  end
end

local order, col, order_grown = columns(batch.metrics)
local ncol, nbm = #order, #batch.metrics
local is_binary = {}
for _, m in ipairs(batch.binary) do is_binary[m] = true end
-- Per batch metric i: its column in the unit state, and whether x_u is a max.
local bcol, bbin = {}, {}
for i, m in ipairs(batch.metrics) do
  bcol[i], bbin[i] = col[m], is_binary[m] or false
end

-- [issue 9: ratio cross products] Per pair (numerator, denominator) of a ratio metric
-- over two metrics, the columns whose Σ x_u·y_u the delta method needs. Batches from
-- routers without ratio metrics carry no `products`.
local pairs_ = batch.products or {}
local pcol = {}
for p, pair in ipairs(pairs_) do pcol[p] = {col[pair[1]], col[pair[2]]} end
-- [end issue 9]

-- [cuped] The covariate column (batch.covariate, absent without CUPED) is set once per
-- unit: the earliest *reported* value stays. A cell brings its report time after its
-- metric columns (cell[6 + 2 * nbm]); the time of the stored value is kept in
-- units["<state field>|c"], and a value reported earlier than it (by another router that
-- flushed later) replaces it, one reported later is ignored. A stored value without a
-- time (written before report times were kept) stays. Its flag column "<covariate>~set"
-- (binary, a max) says the unit has one, so a first value of 0 is kept too. Σx·c of each adjusted metric is an ordinary pair in
-- batch.products, so it is right whether the covariate comes before or after outcomes.
local cov_i, cov_j, cov_flag = nil, nil, nil  -- batch index, state index of value and flag
local cov_time = {}  -- state field -> report time of its covariate (false: none stored)
if batch.covariate then
  for i, m in ipairs(batch.metrics) do
    if m == batch.covariate then cov_i = i end
  end
  cov_j, cov_flag = col[batch.covariate] + 1, col[batch.covariate .. '~set'] + 1
end
-- [/cuped]

-- [cap] Per-unit caps {metric, cap}: a capped metric's stored total is min(total, cap)
-- after every change, so the sums hold the capped totals.
local capped = {}  -- {state index, cap}
for _, c in ipairs(batch.caps or {}) do
  if col[c[1]] then capped[#capped + 1] = {col[c[1]] + 1, c[2]} end
end
-- [/cap]

-- Keyed outcomes {event_id, h, e, v, metric, value, ts, anonymous}: each id counts once. A new one
-- is folded into the batch's cell for (h, e, v), which keeps cell keys unique per batch.
-- An id recorded before `forget_before` has left the window and counts as new.
local cells = batch.cells
local repeated = 0
local keyed = batch.keyed or {}
local new_ids = {}  -- ZADD arguments: score, id, ...
local forget_before = now - tonumber(ARGV[8])
if #keyed > 0 then
  local by_key, metric_at = {}, {}
  for _, c in ipairs(cells) do by_key[c[1] .. '|' .. c[2] .. '|' .. c[3]] = c end
  for i, m in ipairs(batch.metrics) do metric_at[m] = i end
  for _, k in ipairs(keyed) do
    local seen = tonumber(redis.call('ZSCORE', outcome_ids, k[1]))
    if seen and seen >= forget_before then
      repeated = repeated + 1
    else
      new_ids[#new_ids + 1] = num(now)
      new_ids[#new_ids + 1] = k[1]
      local key = k[2] .. '|' .. k[3] .. '|' .. k[4]
      local c = by_key[key]
      if not c then
        c = {k[2], k[3], k[4], k[8] == 1 and 3 or 0, 0}  -- [anonymous] k[8]: by an anonymous request
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
    local acc = {units = 0, exposures = 0, exposures_sq = 0, events = {}, sum = {}, sum_sq = {}, sum_xn = {},
                 sum_xy = {}}
    for j = 1, ncol do acc.events[j], acc.sum[j], acc.sum_sq[j], acc.sum_xn[j] = 0, 0, 0, 0 end
    for p = 1, #pcol do acc.sum_xy[p] = 0 end
    strata[s] = acc
  end
  return s, strata[s]
end

-- One cell: {unit_hash, epoch, variant, latest, dn, dx_1, count_1, dx_2, count_2, ...}
-- in the order of batch.metrics, and the unit's stored state (or false). Moves the state
-- and adds the exact change of every sufficient statistic to the stratum's totals:
-- d(x^2) = x1^2 - x0^2, d(xn) = x1*n1 - x0*n0. Returns the new state, encoded, or nil
-- when the stored state is not an array of numbers (then nothing may be written).
local function valid_state(raw)
  if not raw then return {0} end
  local ok, state = pcall(cjson.decode, raw)
  if not ok or type(state) ~= 'table' or #state == 0 then return nil end
  for j = 1, #state do
    if type(state[j]) ~= 'number' or not finite(state[j]) then return nil end
  end
  return state
end

-- The unit's state after the cell: n and every column's x_u; and the report time of a
-- covariate value the cell set (nil if none).
local function next_state(cell, state, key)
  local reported = nil
  local x1 = {cell[5] + state[1]}
  for j = 1, ncol do x1[j + 1] = state[j + 1] or 0 end
  for i = 1, nbm do
    local j, dx = bcol[i] + 1, cell[4 + 2 * i]
    if bbin[i] then
      if dx > x1[j] then x1[j] = dx end
    else
      x1[j] = x1[j] + dx
    end
  end
  -- [cuped] a covariate in this cell: kept if the unit had none or this one was reported earlier
  if cov_i and cell[5 + 2 * cov_i] > 0 then
    local t, stored_t = cell[6 + 2 * nbm], cov_time[key]
    if (state[cov_flag] or 0) == 0 or (t and stored_t and t < stored_t) then
      x1[cov_j], reported = cell[4 + 2 * cov_i], t
    else
      x1[cov_j] = state[cov_j] or 0
    end
  end
  -- [/cuped]
  -- [cap]
  for _, c in ipairs(capped) do
    if x1[c[1]] > c[2] then x1[c[1]] = c[2] end
  end
  -- [/cap]
  return x1, reported
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
    for i = 1, nbm do acc.events[bcol[i]] = acc.events[bcol[i]] + cell[5 + 2 * i] end
  end
  if n0 == 0 and n1 > 0 then acc.units = acc.units + 1 end
  acc.exposures = acc.exposures + (n1 - n0)
  acc.exposures_sq = acc.exposures_sq + n1 * n1 - n0 * n0
  -- Every column, not just the batch's: a change of n moves sum_xn of all metrics.
  for j = 1, ncol do
    local a, b = old[j + 1] or 0, new[j + 1]
    if not finite(b) then return nil, order[j] end  -- [faults]
    acc.sum[j] = acc.sum[j] + (w1 * b - w0 * a)
    acc.sum_sq[j] = acc.sum_sq[j] + (w1 * b * b - w0 * a * a)
    acc.sum_xn[j] = acc.sum_xn[j] + (b * n1 - a * n0)
  end
  -- [issue 9] d(x*y) of each ratio pair, from the old and the new state.
  for p, c in ipairs(pcol) do
    local jx, jy = c[1] + 1, c[2] + 1
    acc.sum_xy[p] = acc.sum_xy[p] + (w1 * new[jx] * new[jy] - w0 * (old[jx] or 0) * (old[jy] or 0))
  end
  return true
end

local function encode_state(state)
  local parts = {}
  for j = 1, ncol + 1 do parts[j] = num(state[j] or 0) end
  return '[' .. table.concat(parts, ',') .. ']'
end

-- [faults] Anonymous requests (latest == 2: no unit id, each its own unit) keep no unit
-- state: their cell is complete in itself. Unless an outcome came with them: then the
-- state is kept, so that a later outcome for the same request id extends it.
-- [anonymous] An anonymous unit has exactly one exposure, so its n_u is 1 whatever the
-- order of batches: a cell of its outcomes alone (latest == 3, the request id said it
-- was anonymous) finds no state when the exposure came in an earlier batch, and takes
-- n_u = 1, not 0 (sum_xn was missing x_u); the exposure's cell adds the unit and its one
-- exposure itself, whether its outcomes came before or after.
-- The built-ins (the first batch.builtins metrics; 2 in batches from before slow_requests)
-- are measured by the router, not outcomes.
local nbuiltin = batch.builtins or 2
local function keeps_state(c)
  if c[4] ~= 2 then return true end
  for i = nbuiltin + 1, nbm do
    if c[5 + 2 * i] > 0 then return true end
  end
  return false
end
local seen_members = {}  -- ZADD arguments for unit_seen: now, field, ...
local function with_n(state, n)
  local out = {n}
  for j = 2, #state do out[j] = state[j] end
  return out
end
-- [/faults]

-- [issue 9: intent-to-treat] Each unit is credited once, to the (epoch, variant) of its
-- first exposure, recorded in units[h|f] as "e|v" ("e|v|m" once the unit has also been
-- exposed to another variant: a multiple exposure). Every later cell of the unit, in any
-- epoch or variant, moves that one state h|e0|v0. A multiple-exposure unit's sums are
-- also kept in the shadow stratum "e0|v0~mx", so the analyzer can report them and, by
-- policy, subtract them. A unit with state from before this change (units[h] set, no
-- h|f) keeps the old per-(unit, epoch, variant) accounting, so old data stays exact.
local MX = '~mx'
local firsts = {}   -- h -> {e, v, multiple, legacy}, as moved by this batch so far
local cached = {}   -- state field -> state after this batch's cells so far
local function target(c, info)
  -- The cell's stratum (e, v) and its state field under intent-to-treat.
  if info.legacy or not info.e then return c[2], c[3], false end
  return info.e, info.v, info.multiple
end

-- Cells in chunks: two HMGETs (now) and one HSET (in phase 2) per chunk instead of calls
-- per cell. Several cells of one unit may now share one state, so states moved by this
-- batch are taken from `cached`, and the last write of a field wins in phase 2.
local CHUNK = 500
local unit_writes = {}
for first = 1, #cells, CHUNK do
  local last_cell = math.min(first + CHUNK - 1, #cells)
  local ids = {}
  for i = first, last_cell do
    local h = cells[i][1]
    ids[#ids + 1] = h .. '|f'
    ids[#ids + 1] = h
  end
  local known = redis.call('HMGET', units, unpack(ids))
  for i = first, last_cell do
    local c, k = cells[i], 2 * (i - first) + 1
    local info = firsts[c[1]]
    if not info then
      info = {}
      local f = known[k]
      if f then
        local e, v, m = string.match(f, '^(%d+)|([^|]+)|?(m?)$')
        if not e then return {-2, last, 0, 'corrupt first exposure in ' .. units .. ' field ' .. ids[k]} end
        info.e, info.v, info.multiple, info.stored = tonumber(e), v, m == 'm', true
      elseif known[k + 1] then
        info.legacy = true
      end
      firsts[c[1]] = info
    end
    if not info.legacy and c[5] > 0 then
      if not info.e then
        info.e, info.v, info.changed = c[2], c[3], true
      elseif c[3] ~= info.v and not info.multiple then
        info.multiple, info.changed, info.newly = true, true, true
      end
    end
  end
  local fields, wanted = {}, {}
  for i = first, last_cell do
    local c = cells[i]
    local e, v = target(c, firsts[c[1]])
    local key = c[1] .. '|' .. e .. '|' .. v
    if cached[key] == nil and not wanted[key] then
      wanted[key] = true
      fields[#fields + 1] = key
    end
  end
  -- [cuped] the report times of the stored covariates the chunk's cells may replace
  local times = {}
  if cov_i then
    for i = first, last_cell do
      local c = cells[i]
      local e, v = target(c, firsts[c[1]])
      local key = c[1] .. '|' .. e .. '|' .. v
      if c[5 + 2 * cov_i] > 0 and cov_time[key] == nil then
        cov_time[key] = false
        times[#times + 1] = key
      end
    end
    local names = {}
    for k, key in ipairs(times) do names[k] = key .. '|c' end
    local raw_times = #names > 0 and redis.call('HMGET', units, unpack(names)) or {}
    for k, key in ipairs(times) do cov_time[key] = tonumber(raw_times[k]) or false end
  end
  local raws = #fields > 0 and redis.call('HMGET', units, unpack(fields)) or {}
  for k, key in ipairs(fields) do
    local state = valid_state(raws[k])
    if not state then
      return {-2, last, 0, 'corrupt unit state in ' .. units .. ' field ' .. key}
    end
    cached[key] = state
  end
  local writes = {}
  for i = first, last_cell do
    local c = cells[i]
    local info = firsts[c[1]]
    local e, v, multiple = target(c, info)
    local key = c[1] .. '|' .. e .. '|' .. v
    local old = cached[key]
    local anonymous = c[4] >= 2
    if anonymous and old[1] == 0 then old = with_n(old, 1) end  -- [anonymous]
    local new, reported = next_state(c, old, key)
    if anonymous then new[1] = 1 end
    local _, acc = stratum(e, v)
    local ok, bad = accumulate(acc, old, new, c)
    if not ok then
      return {-2, last, 0, 'non-finite ' .. bad .. ' in the new unit state of ' .. units .. ' field ' .. key}
    end
    if anonymous and c[5] > 0 then  -- [anonymous] the unit and its one exposure
      acc.units, acc.exposures, acc.exposures_sq = acc.units + 1, acc.exposures + 1, acc.exposures_sq + 1
    end
    if multiple then
      -- The unit's whole state enters the shadow stratum the first time it switches.
      local _, mx = stratum(e, v .. MX)
      accumulate(mx, info.newly and {0} or old, new, nil)  -- sums only, no event counts
      info.newly = false
    end
    cached[key] = new
    if reported then  -- [cuped] the report time of the covariate value now stored
      cov_time[key] = reported
      writes[#writes + 1] = key .. '|c'
      writes[#writes + 1] = num(reported)
      seen_members[#seen_members + 1] = num(now)
      seen_members[#seen_members + 1] = key .. '|c'
    end
    if keeps_state(c) then  -- [faults] an anonymous request keeps no state
      writes[#writes + 1] = key
      writes[#writes + 1] = encode_state(new)
      seen_members[#seen_members + 1] = num(now)
      seen_members[#seen_members + 1] = key
    else
      info.stateless = true
    end
    -- The unit's latest exposure in this batch: its stratum credits unit-addressed outcomes.
    if c[4] == 1 then
      writes[#writes + 1] = c[1]
      writes[#writes + 1] = c[2] .. '|' .. c[3]
      seen_members[#seen_members + 1] = num(now)
      seen_members[#seen_members + 1] = c[1]
    end
  end
  if #writes > 0 then unit_writes[#unit_writes + 1] = writes end
end
local first_writes = {}
for h, info in pairs(firsts) do
  if info.changed and not info.stateless then
    first_writes[#first_writes + 1] = h .. '|f'
    first_writes[#first_writes + 1] = info.e .. '|' .. info.v .. (info.multiple and '|m' or '')
  end
  if info.e and not info.stateless then  -- [faults] expires with the unit's state, not before
    seen_members[#seen_members + 1] = num(now)
    seen_members[#seen_members + 1] = h .. '|f'
  end
end
-- [end issue 9: intent-to-treat]

-- The agg increments, as {field, delta, integer?}; the stored values must take them.
local increments = {}
local function add(field, d, integer)
  if d ~= 0 then increments[#increments + 1] = {field, d, integer} end
end
for s, acc in pairs(strata) do
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
for first = 1, #increments, CHUNK do
  local slice, names = {}, {}
  for i = first, math.min(first + CHUNK - 1, #increments) do
    slice[#slice + 1] = increments[i]
    names[#names + 1] = increments[i][1]
  end
  local stored = redis.call('HMGET', agg, unpack(names))
  for i, op in ipairs(slice) do
    local v = stored[i]
    if v and not (op[3] and string.match(v, '^%-?%d+$') or not op[3] and tonumber(v)) then
      return {-2, last, 0, 'corrupt value ' .. v .. ' in ' .. agg .. ' field ' .. op[1]}
    end
    -- [faults] the delta and the value it leads to, both finite
    if not finite(op[2]) or not finite((tonumber(v) or 0) + op[2]) then
      return {-2, last, 0, 'non-finite result for ' .. agg .. ' field ' .. op[1]}
    end
  end
end

-- [latency] Request latency histograms per (epoch, variant) of the serving variant (not
-- intent-to-treat: a latency belongs to the variant that served the request). The
-- router bins (keys.latency_bucket); a batch brings batch.latency = {{e, v, {{b, count},
-- ...}}, ...} and the script adds the counts to latency["e|v|b"]. Fields are bounded by
-- epochs x variants x buckets. Batches from routers without histograms carry none.
local latency_key = KEYS[10]
local latency_incr = {}  -- {field, count}
if latency_key then
  local found = redis.call('TYPE', latency_key)['ok']
  if found ~= 'none' and found ~= 'hash' then
    return {-2, last, 0, latency_key .. ' is a ' .. found .. ', not a hash'}
  end
  for _, row in ipairs(batch.latency or {}) do
    local prefix = row[1] .. '|' .. row[2] .. '|'
    for _, bc in ipairs(row[3]) do latency_incr[#latency_incr + 1] = {prefix .. string.format('%d', bc[1]), bc[2]} end
  end
  for first = 1, #latency_incr, CHUNK do
    local names = {}
    for i = first, math.min(first + CHUNK - 1, #latency_incr) do names[#names + 1] = latency_incr[i][1] end
    local stored = redis.call('HMGET', latency_key, unpack(names))
    for i, name in ipairs(names) do
      local v = stored[i]
      if v and not string.match(v, '^%d+$') then
        return {-2, last, 0, 'corrupt value ' .. v .. ' in ' .. latency_key .. ' field ' .. name}
      end
    end
  end
end
-- [/latency]

-- [faults] The marker: meta.created is set once, when the experiment's first batch lands
-- in this Redis. A producer that saw another value (ARGV[9]) is talking to a Redis that
-- lost the experiment's data (it restarted empty): meta.reset_at records since when the
-- data is incomplete, and meta.resets counts such losses.
local created = redis.call('HGET', meta, 'created')
local seen_created = ARGV[9]
local reset = 0
if seen_created ~= '' and created ~= seen_created then reset = 1 end
-- [/faults]

-- ---------------------------------------------------------------- phase 2: write only
-- A Redis at maxmemory refuses a script's first write that may grow memory, and lets a
-- script that has written anything run to the end. So every write here may grow memory,
-- except the pruning of old outcome ids, which comes last: a full Redis then refuses
-- the batch before any effect, and the router spills it until there is room.

if order_grown then redis.call('SET', metrics_key, cjson.encode(order)) end
-- [faults] marker, skipped seqs
if not created then
  created = num(now)
  redis.call('HSET', meta, 'created', created)
end
if reset == 1 then
  local at = tonumber(redis.call('HGET', meta, 'reset_at') or '0')
  if at < tonumber(created) then
    redis.call('HSET', meta, 'reset_at', created)
    redis.call('HINCRBY', meta, 'resets', 1)
  end
end
if gaps_changed then
  if #gaps > 0 then redis.call('HSET', producers, gaps_field, cjson.encode(gaps))
  else redis.call('HDEL', producers, gaps_field) end
end
-- [/faults]
-- In slices: Lua's unpack() fails beyond ~8,000 values.
for first = 1, #new_ids, 2 * CHUNK do
  redis.call('ZADD', outcome_ids, unpack(new_ids, first, math.min(first + 2 * CHUNK - 1, #new_ids)))
end
for _, writes in ipairs(unit_writes) do redis.call('HSET', units, unpack(writes)) end
for first = 1, #first_writes, 2 * CHUNK do
  redis.call('HSET', units, unpack(first_writes, first, math.min(first + 2 * CHUNK - 1, #first_writes)))
end
-- [faults] unit state ages: the time each units field was last written
for first = 1, #seen_members, 2 * CHUNK do
  redis.call('ZADD', unit_seen, unpack(seen_members, first, math.min(first + 2 * CHUNK - 1, #seen_members)))
end
-- [/faults]

for _, op in ipairs(increments) do
  if op[3] then
    redis.call('HINCRBY', agg, op[1], string.format('%d', op[2]))
  else
    redis.call('HINCRBYFLOAT', agg, op[1], string.format('%.17g', op[2]))
  end
end

-- [latency]
for _, op in ipairs(latency_incr) do redis.call('HINCRBY', latency_key, op[1], string.format('%d', op[2])) end
-- [/latency]

-- Weights of each epoch: the first registration wins, so replicas cannot disagree later.
for _, pair in ipairs(batch.epochs) do redis.call('HSETNX', epochs, pair[1], pair[2]) end
-- The audit stream keeps about ARGV[7] raw events (at this batch size), at most ARGV[6]
-- batches: its memory stays bounded however busy the router is.
if batch.n > 0 then
  local maxlen = math.max(1, math.min(tonumber(ARGV[6]), math.ceil(tonumber(ARGV[7]) / batch.n)))
  redis.call('XADD', stream, 'MAXLEN', '~', tostring(maxlen), '*',
             'producer', producer, 'seq', ARGV[2], 'n', tostring(batch.n), 'events', ARGV[5])
end

if seq > last then redis.call('HSET', producers, producer, ARGV[2]) end
if #keyed > 0 then redis.call('ZREMRANGEBYSCORE', outcome_ids, '-inf', '(' .. num(forget_before)) end
-- [faults] Unit states not written for ARGV[10] seconds expire: at most EXPIRE_PER_BATCH
-- fields per batch, so a flush stays short however many are due.
local ttl = tonumber(ARGV[10])
if ttl > 0 then
  local EXPIRE_PER_BATCH = 2000
  local due = redis.call('ZRANGEBYSCORE', unit_seen, '-inf', '(' .. num(now - ttl), 'LIMIT', 0, EXPIRE_PER_BATCH)
  if #due > 0 then
    redis.call('HDEL', units, unpack(due))
    redis.call('ZREM', unit_seen, unpack(due))
  end
end
-- [/faults]
return {1, last, repeated, created, reset}
