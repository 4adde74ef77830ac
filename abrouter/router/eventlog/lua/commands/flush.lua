-- flush.lua: apply one pre-aggregated batch of router events, exactly once.
--
-- The key layout and every field name are documented in abrouter/contract/keys.py (and docs/storage.md); the batch
-- format is built by abrouter/router/eventlog/events.py (Aggregator.encode). One call per batch, atomic:
-- either all of a batch's effects happen (and its seq is recorded) or none do.
--
-- Redis does not undo a script's writes when it fails half-way, so the script works in
-- two phases: the first only reads and computes (and may refuse the batch), the second
-- only writes. Phase 1 checks every key's type, every unit state it moves and every agg
-- value it increments, so a batch the script cannot apply (data some other program
-- wrote) changes nothing, and the router can set it aside (quarantine).
--
-- KEYS: agg, units, epochs, producers, events, metrics, outcome_ids, meta, unit_seen,
--       latency, events_n (keys.Keys.all(); callers from before latency or events_n
--       pass fewer)
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

--- @include "gaps"

-- The guard comes first and costs one HGET: a duplicate is not even decoded.
local last = tonumber(redis.call('HGET', producers, producer) or '0')
local admitted = admit(seq, last, allow_gap)
if admitted ~= 1 then return {admitted, last, 0} end

-- Redis' clock, in seconds (see the header).
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1e6

local batch = cjson.decode(ARGV[4])

-- The batch format: payloads without `v` are version 1. A version this script does not
-- know (a newer router) is refused whole, before anything is written.
local VERSIONS = {[1] = true, [2] = true}
local version = batch.v or 1
if not VERSIONS[version] then
  return {-2, last, 0, 'batch format version ' .. tostring(version) .. ' is not one this script knows (1, 2)'}
end

--- @include "numbers"
local now_s = num(now)  -- formatted once: it scores every id and unit state written
--- @include "columns"

-- ---------------------------------------------------------------- phase 1: read only

-- Phase 2 must not fail half-way: every key it writes must have the type it expects.
local stream_n = KEYS[11]
local want = {[agg] = 'hash', [units] = 'hash', [epochs] = 'hash', [stream] = 'stream',
              [metrics_key] = 'string', [outcome_ids] = 'zset', [meta] = 'hash', [unit_seen] = 'zset'}
if stream_n then want[stream_n] = 'list' end
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

--- @include "unit_state"
--- @include "strata"

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
      new_ids[#new_ids + 1] = now_s
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

-- Changes to agg are summed per stratum in Lua tables over all cells (`strata`), then
-- written with one HINCRBY(FLOAT) per field: per-cell work builds no field names.
local seen_members = {}  -- ZADD arguments for unit_seen: time, field, ...

-- [expiry] The age of unit fields (unit_seen) is refreshed once per unit per granule of
-- ttl/8, not on every write: a ZADD per field per batch was a third of the script's CPU.
-- A unit with a first exposure has one member, its h|f, which stands for all its fields
-- (h, h|f, its state and the state's |c; expiry.lua): one member per field was half of
-- a unit's memory. It is scored with the *end* of the granule in which the unit was last
-- written, so the unit expires up to a granule late, never early; a unit whose h|f
-- value already names the current granule's end (h|f is read anyway; a ZMSCORE of
-- unit_seen cost ~0.4 us a cell) is `fresh` and scores nothing. Fields of units without
-- a first exposure (outcomes held until it lands) are scored each; units with state
-- from before intent-to-treat (legacy) and anonymous requests keep a score per field
-- and write, at `now`.
local ttl = tonumber(ARGV[10])
local GRANULE = ttl > 0 and ttl / 8 or 86400
local granule_end = (math.floor(now / GRANULE) + 1) * GRANULE
local granule_s = num(granule_end)
local function age(score, field)
  seen_members[#seen_members + 1] = score
  seen_members[#seen_members + 1] = field
end
-- Scores `field` of the unit of cell `c` if needed; `created`: the field is new.
local function mark(info, c, field, created)
  if info.legacy or c[4] >= 2 then
    age(now_s, field)
  elseif not info.e and (created or not info.fresh) then  -- with a first exposure: its h|f, below
    age(granule_s, field)
  end
end

-- [issue 9: intent-to-treat] Each unit is credited once, to the (epoch, variant) of its
-- first exposure, recorded in units[h|f] as "e|v" ("e|v|m" once the unit has also been
-- exposed to another variant: a multiple exposure), then "|" and the unit's granule. Every later cell of the unit, in any
-- epoch or variant, moves that one state h|e0|v0. A multiple-exposure unit's sums are
-- also kept in the shadow stratum "e0|v0~mx", so the analyzer can report them and, by
-- policy, subtract them. A unit with state from before this change (units[h] set, no
-- h|f) keeps the old per-(unit, epoch, variant) accounting, so old data stays exact.
local MX = '~mx'
local firsts = {}   -- h -> {e, v, multiple, legacy, ...}, as moved by this batch so far
local cached = {}   -- state field -> state after this batch's cells so far
local absent = {}   -- state field -> true when Redis had none before this batch

-- Cells in chunks: two HMGETs (now) and one HSET (in phase 2) per chunk instead of calls
-- per cell. A cell's stratum and state field are its own (e, v) for a unit without a first
-- exposure or with legacy state, else the unit's first exposure's. Several cells of one unit may now share one state, so states moved by this
-- batch are taken from `cached`, and the last write of a field wins in phase 2.
local CHUNK = 500
local unit_writes = {}
-- The parts of each distinct h|f value: few (epochs x variants x granules) for many units.
local first_values = {}
for first = 1, #cells, CHUNK do
  local last_cell = math.min(first + CHUNK - 1, #cells)
  local ids = {}
  for i = first, last_cell do
    local h, k = cells[i][1], 2 * (i - first)
    ids[k + 1], ids[k + 2] = h .. '|f', h
  end
  local known = redis.call('HMGET', units, unpack(ids))
  for i = first, last_cell do
    local c = cells[i]
    local h = c[1]
    local info = firsts[h]
    if not info then
      local k = 2 * (i - first) + 1
      local f, pointer = known[k], known[k + 1]
      if f then
        local parsed = first_values[f]
        if not parsed then
          -- [expiry] "e|v", "e|v|m", or either with the granule it was last scored in: "e|v||g", "e|v|m|g"
          local e, v, m, g = string.match(f, '^(%d+)|([^|]+)|?(m?)|?([^|]*)$')
          if not e then return {-2, last, 0, 'corrupt first exposure in ' .. units .. ' field ' .. ids[k]} end
          parsed = {tonumber(e), v, m == 'm', g == granule_s}
          first_values[f] = parsed
        end
        info = {e = parsed[1], v = parsed[2], multiple = parsed[3], stored = true, legacy = false,
                pointer = pointer or false, fresh = parsed[4], changed = false, newly = false, stateless = false}
      else
        info = {e = false, v = false, multiple = false, stored = false, legacy = pointer and true or false,
                pointer = pointer or false, fresh = false, changed = false, newly = false, stateless = false}
      end
      firsts[h] = info
    end
    if c[5] > 0 and not info.legacy then
      if not info.e then
        info.e, info.v, info.changed = c[2], c[3], true
      elseif c[3] ~= info.v and not info.multiple then
        info.multiple, info.changed, info.newly = true, true, true
      end
    end
  end
  -- Each cell's stratum and state field under intent-to-treat, built once.
  local fields, wanted, state_key, cell_e, cell_v = {}, {}, {}, {}, {}
  for i = first, last_cell do
    local c = cells[i]
    local info = firsts[c[1]]
    local e, v = c[2], c[3]
    if info.e and not info.legacy then e, v = info.e, info.v end
    local key = c[1] .. '|' .. stratum_name(e, v)
    state_key[i], cell_e[i], cell_v[i] = key, e, v
    if cached[key] == nil and not wanted[key] then
      wanted[key] = true
      fields[#fields + 1] = key
    end
  end
  -- [cuped] the report times of the stored covariates the chunk's cells may replace
  local times = {}
  if cov_i then
    for i = first, last_cell do
      local c, key = cells[i], state_key[i]
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
    local raw = raws[k]
    if not raw then
      absent[key] = true  -- [expiry] created by this batch
      cached[key] = EMPTY
    else
      local state = valid_state(raw)
      if not state then
        return {-2, last, 0, 'corrupt unit state in ' .. units .. ' field ' .. key}
      end
      cached[key] = state
    end
  end
  local writes, nw = {}, 0
  for i = first, last_cell do
    local c = cells[i]
    local info = firsts[c[1]]
    local e, v, key = cell_e[i], cell_v[i], state_key[i]
    local multiple = info.multiple and info.e and not info.legacy
    local old = cached[key]
    local latest = c[4]
    local anonymous = latest >= 2
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
      accumulate(mx, info.newly and EMPTY or old, new, nil)  -- sums only, no event counts
      info.newly = false
    end
    cached[key] = new
    if reported then  -- [cuped] the report time of the covariate value now stored
      cov_time[key] = reported
      writes[nw + 1], writes[nw + 2], nw = key .. '|c', num(reported), nw + 2
      if anonymous or not info.e then age(anonymous and now_s or granule_s, key .. '|c') end
    end
    if keeps_state(c) then  -- [faults] an anonymous request keeps no state
      writes[nw + 1], writes[nw + 2], nw = key, encode_state(new), nw + 2
      mark(info, c, key, absent[key])
      absent[key] = nil
    else
      info.stateless = true
    end
    -- The unit's latest exposure in this batch: its stratum credits unit-addressed outcomes.
    -- Written only when it moves: a returning unit's pointer rarely does.
    if latest == 1 then
      local pointer = stratum_name(c[2], c[3])
      if pointer ~= info.pointer then
        writes[nw + 1], writes[nw + 2], nw = c[1], pointer, nw + 2
      end
      mark(info, c, c[1], not info.pointer)
      info.pointer = pointer
    end
  end
  if nw > 0 then unit_writes[#unit_writes + 1] = writes end
end
-- [expiry] A unit with a first exposure records in h|f the granule it was last scored
-- in, so the next batch knows it is fresh without asking unit_seen: h|f is rewritten
-- (and the unit scored) once per granule, and whenever its first exposure changes.
local first_writes = {}
for h, info in pairs(firsts) do
  if info.e and not info.stateless and not info.legacy and (info.changed or not info.fresh) then
    first_writes[#first_writes + 1] = h .. '|f'
    first_writes[#first_writes + 1] = info.e .. '|' .. info.v .. (info.multiple and '|m|' or '||') .. granule_s
    if not info.fresh then age(granule_s, h .. '|f') end
  end
end
-- [end issue 9: intent-to-treat]

-- The agg increments; the stored values must take them.
local increments = increments_of(strata)
local bad = check_increments(increments, CHUNK)
if bad then return {-2, last, 0, bad} end

local latency_key = KEYS[10]
--- @include "latency"
--- @include "stream"
local latency_incr, bad_latency = latency_increments(batch.latency, CHUNK)
if not latency_incr then return {-2, last, 0, bad_latency} end

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
  created = now_s
  redis.call('HSET', meta, 'created', created)
end
if reset == 1 then
  local at = tonumber(redis.call('HGET', meta, 'reset_at') or '0')
  if at < tonumber(created) then
    redis.call('HSET', meta, 'reset_at', created)
    redis.call('HINCRBY', meta, 'resets', 1)
  end
end
save_gaps()
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

write_increments(increments)
write_latency(latency_incr)

-- Weights of each epoch: the first registration wins, so replicas cannot disagree later.
for _, pair in ipairs(batch.epochs) do redis.call('HSETNX', epochs, pair[1], pair[2]) end
-- The audit stream keeps at most ARGV[7] raw events in at most ARGV[6] batches: its
-- memory stays bounded however busy the router is.
append_stream(tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[2], ARGV[5])

if seq > last then redis.call('HSET', producers, producer, ARGV[2]) end
if #keyed > 0 then redis.call('ZREMRANGEBYSCORE', outcome_ids, '-inf', '(' .. num(forget_before)) end
--- @include "expiry"
expire_units(now, ttl)
return {1, last, repeated, created, reset}
