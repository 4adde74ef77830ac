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
local VERSIONS = {[1] = true, [2] = true, [3] = true, [4] = true}
local version = batch.v or 1
if not VERSIONS[version] then
  return {-2, last, 0, 'batch format version ' .. tostring(version) .. ' is not one this script knows (1-4)'}
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
-- [issue 15: version 4] Where a cell holds batch metric i's value (dx_at[i]) and its event
-- count (n_at[i]). Versions 1-3: {h, e, v, latest, n, dx_1, count_1, dx_2, count_2, ...}.
-- Version 4 drops the built-ins' counts, always n (the router measures them on every
-- request): {h, e, v, latest, n, dx_1, ..., dx_b, dx_b+1, count_b+1, ...}, so their count
-- is the cell's n (index 5). A cell's last metric index is cell_end; [cuped] the report
-- time follows it.
local nbuiltin = batch.builtins or 2
local dx_at, n_at = {}, {}
for i = 1, nbm do
  if version >= 4 and i <= nbuiltin then
    dx_at[i], n_at[i] = 5 + i, 5
  elseif version >= 4 then
    dx_at[i] = 4 + nbuiltin + 2 * (i - nbuiltin)
    n_at[i] = dx_at[i] + 1
  else
    dx_at[i], n_at[i] = 4 + 2 * i, 5 + 2 * i
  end
end
local cell_end = nbm == 0 and 5 or math.max(dx_at[nbm], n_at[nbm])

-- [issue 9: ratio cross products] Per pair (numerator, denominator) of a ratio metric
-- over two metrics, the columns whose Σ x_u·y_u the delta method needs. Batches from
-- routers without ratio metrics carry no `products`.
local pairs_ = batch.products or {}
local pcol = {}
for p, pair in ipairs(pairs_) do pcol[p] = {col[pair[1]], col[pair[2]]} end
-- [end issue 9]

-- [cuped] The covariate column (batch.covariate, absent without CUPED) is set once per
-- unit: the earliest *reported* value stays. A cell brings its report time after its
-- metric columns (cell[cell_end + 1]); the time of the stored value is kept in the unit's
-- record ([legacy] units["<state field>|c"]), and a value reported earlier than it (by another router that
-- flushed later) replaces it, one reported later is ignored. A stored value without a
-- time (written before report times were kept) stays. Its flag column "<covariate>~set"
-- (binary, a max) says the unit has one, so a first value of 0 is kept too. Σx·c of each adjusted metric is an ordinary pair in
-- batch.products, so it is right whether the covariate comes before or after outcomes.
-- [regression] batch.covariates (several; one is sent as batch.covariate): the first is
-- kept as above, each further one likewise set once by its earliest report, the report
-- time of its value held in its own flag column (0: none), so the record needs no field
-- for it. A cell brings covariate k's report time at cell[cell_end + k].
local covs = batch.covariates or {batch.covariate}
local cov_i, cov_j, cov_flag = nil, nil, nil  -- batch index, state index of value and flag
local cov_time = {}  -- [legacy] state field h|e|v -> report time of its covariate (false: none)
local more_covs = {}  -- [regression] {batch index, state index of value, of flag, k}
for k, name in ipairs(covs) do
  local at
  for i, m in ipairs(batch.metrics) do
    if m == name then at = i end
  end
  if k == 1 then
    cov_i, cov_j, cov_flag = at, col[name] + 1, col[name .. '~set'] + 1
  elseif at then
    more_covs[#more_covs + 1] = {at, col[name] + 1, col[name .. '~set'] + 1, k}
  end
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
        for j = 6, cell_end do c[j] = 0 end
        cells[#cells + 1] = c
        by_key[key] = c
      end
      local i = metric_at[k[5]]
      local at = dx_at[i]  -- a keyed outcome is never a built-in's: it has a count of its own
      if bbin[i] then
        if k[6] > c[at] then c[at] = k[6] end
      else
        c[at] = c[at] + k[6]
      end
      c[n_at[i]] = c[n_at[i]] + 1
    end
  end
end

-- Changes to agg are summed per stratum in Lua tables over all cells (`strata`), then
-- written with one HINCRBY(FLOAT) per field: per-cell work builds no field names.
local seen_members = {}  -- ZADD arguments for unit_seen: time, field, ...
local function age(score, field)
  seen_members[#seen_members + 1] = score
  seen_members[#seen_members + 1] = field
end

-- [expiry] A unit's age (unit_seen) is refreshed once per granule of ttl/8, not on every
-- write, with the *end* of the granule in which it was last written, so it expires up to
-- a granule late, never early. Its record (below) names that granule: a unit whose record
-- already names the current one is fresh and scores nothing, with no read of unit_seen.
local ttl = tonumber(ARGV[10])
local GRANULE = ttl > 0 and ttl / 8 or 86400
local granule_end = (math.floor(now / GRANULE) + 1) * GRANULE
local granule_s = num(granule_end)

-- [issue 15: one record per unit] A unit's whole state is one field, units[h|u]
-- (`pack_record`, unit_state.lua): its first exposure (e, v; 0 and "" before it has one),
-- 1 once it was also exposed to another variant, the "e|v" of its latest exposure (what
-- units[h] holds; "" none), the expiry granule it was last scored in, its covariate's
-- report time (0: none) and its state. One read and one write per unit and batch, where
-- its fields apart (h|f, h and the state h|e|v, with a ZMSCORE of unit_seen) took three
-- reads per cell (bench/flush_cost.py). units[h] is still written when the latest
-- exposure moves: the router reads it (lookup_units).
--
-- [issue 9: intent-to-treat] Each unit is credited once, to the (epoch, variant) of its
-- first exposure. Every later cell of the unit, in any epoch or variant, moves its one
-- state and the sums of that stratum. A unit exposed to another variant later is a
-- multiple exposure: its sums are also kept in the shadow stratum "e|v~mx", so the
-- analyzer can report them and, by policy, subtract them. A unit without an exposure yet
-- (its outcomes reached Redis first) holds them in its state; they enter the sums, whole,
-- with the exposure.
--
-- Units stored before records (h|f "e|v[|m][|granule]", the state h|e|v, its report
-- time h|e|v|c, a unit_seen member h|f) are read that way once, and rewritten as a record
-- (the old fields deleted). A unit with state from before intent-to-treat (units[h] set,
-- no h|f: `legacy`) keeps the old per-(unit, epoch, variant) accounting, one bare state
-- per cell in h|e|v, so old data stays exact.
local MX = '~mx'
local NO_V = ''
local firsts = {}   -- h -> the unit as moved by this batch so far (`unit_info`)
local cached = {}   -- [legacy] state field -> state after this batch's cells so far
local first_values = {}  -- [old units] the parts of each distinct h|f value

-- A unit from its record, its old fields, or nothing; nil and why not when corrupt.
local function unit_info(h, raw, old_first, pointer)
  if raw then
    local e, v, m, latest, granule, t, state = unpack_record(raw)
    if not e then return nil, 'corrupt unit record in ' .. units .. ' field ' .. h .. '|u' end
    -- Eight fields, all set here (a table's hash part is sized once; a field added later
    -- doubles it). Unset and so false: legacy, changed, newly, stateless.
    return {e = e ~= 0 and e or false, v = v ~= NO_V and v or false, multiple = m == 1,
            pointer = latest ~= '' and latest or false, fresh = granule == granule_end, ctime = t ~= 0 and t or false,
            state = state, dirty = false}
  end
  local info = {e = false, v = false, multiple = false, pointer = pointer or false, fresh = false, ctime = false,
                state = false, dirty = false}
  if old_first then
    local parsed = first_values[old_first]
    if not parsed then
      local e, v, m = string.match(old_first, '^(%d+)|([^|]+)|?(m?)|?[^|]*$')
      if not e then return nil, 'corrupt first exposure in ' .. units .. ' field ' .. h .. '|f' end
      parsed = {tonumber(e), v, m == 'm'}
      first_values[old_first] = parsed
    end
    info.e, info.v, info.multiple, info.old_first = parsed[1], parsed[2], parsed[3], true
  elseif pointer then
    info.legacy = true
  end
  return info
end

local function record_of(info)
  return pack_record(info.e or 0, info.v or NO_V, info.multiple and 1 or 0, info.pointer or '', granule_end,
                     info.ctime or 0, info.state)
end

-- Cells in chunks: a few HMGETs (now) and one HSET (in phase 2) per chunk instead of
-- calls per cell.
local CHUNK = 500
local stratum_names = names  -- strata.lua's e -> v -> "e|v" (`names` below is a chunk's fields)
local unit_writes = {}   -- [legacy] states and pointers, per chunk
local olds = {}          -- [old units] fields to delete, once read into a record
local old_members = {}   -- [old units] their unit_seen members
for first = 1, #cells, CHUNK do
  local last_cell = math.min(first + CHUNK - 1, #cells)
  -- The records of the chunk's units not met before in this batch.
  local hs, names, at = {}, {}, {}
  for i = first, last_cell do
    local h = cells[i][1]
    if not firsts[h] and not at[h] then
      hs[#hs + 1], names[#names + 1] = h, h .. '|u'
      at[h] = i
    end
  end
  local raws = #names > 0 and redis.call('HMGET', units, unpack(names)) or {}
  -- Units without a record: their old fields, if any.
  local bare = {}
  for k, h in ipairs(hs) do
    if not raws[k] then bare[#bare + 1] = k end
  end
  local old_raw = {}
  if #bare > 0 then
    local ids = {}
    for n, k in ipairs(bare) do ids[2 * n - 1], ids[2 * n] = hs[k] .. '|f', hs[k] end
    old_raw = redis.call('HMGET', units, unpack(ids))
  end
  local old_of = {}  -- k -> index of its h|f in old_raw
  for n, k in ipairs(bare) do old_of[k] = 2 * n - 1 end
  local any_legacy = false  -- most chunks have none: no pass over their cells for legacy states
  for k, h in ipairs(hs) do
    local j = old_of[k]
    local info, bad = unit_info(h, raws[k], j and old_raw[j] or false, j and old_raw[j + 1] or false)
    if not info then return {-2, last, 0, bad} end
    firsts[h] = info
    if info.legacy then any_legacy = true end
  end
  for i = first, last_cell do
    local c = cells[i]
    local info = firsts[c[1]]
    if c[5] > 0 and not info.legacy then
      if not info.e then
        info.e, info.v, info.changed = c[2], c[3], true
      elseif c[3] ~= info.v and not info.multiple then
        info.multiple, info.changed, info.newly = true, true, true
      end
    end
  end
  -- Old fields: legacy states per cell, and the state (and report time) of units without
  -- a record (written before it, or held before their exposure), read into their record.
  local fields, wanted, kinds = {}, {}, {}
  local function want(field, kind)
    if not wanted[field] then
      wanted[field] = true
      fields[#fields + 1], kinds[#kinds + 1] = field, kind
    end
  end
  for k, h in ipairs(hs) do
    local info = firsts[h]
    if not raws[k] and not info.legacy then
      local c = cells[at[h]]
      info.old = h .. '|' .. stratum_name(info.e or c[2], info.v or c[3])
      want(info.old, h)
      if cov_i then want(info.old .. '|c', false) end
    end
  end
  for i = first, any_legacy and last_cell or first - 1 do
    local c = cells[i]
    if firsts[c[1]].legacy then
      local key = c[1] .. '|' .. stratum_name(c[2], c[3])
      if cached[key] == nil then
        want(key, true)
        if cov_i then want(key .. '|c', false) end
      end
    end
  end
  if #fields > 0 then
    local found = redis.call('HMGET', units, unpack(fields))
    local value = {}
    for k, field in ipairs(fields) do value[field] = found[k] end
    for k, field in ipairs(fields) do
      local kind = kinds[k]
      if kind then
        local state = valid_state(found[k])
        if not state then return {-2, last, 0, 'corrupt unit state in ' .. units .. ' field ' .. field} end
        local t = cov_i and tonumber(value[field .. '|c']) or false
        if kind == true then  -- [legacy]
          cached[field], cov_time[field] = state, t
        else  -- into the unit's record; the old fields go
          local info = firsts[kind]
          info.state, info.ctime = state, t
          if info.old_first or found[k] then
            olds[#olds + 1] = kind .. '|f'
            olds[#olds + 1] = field
            olds[#olds + 1] = field .. '|c'
            old_members[#old_members + 1] = kind .. '|f'  -- [expiry] it would delete h, now the record's
          end
        end
      end
    end
  end
  local writes, nw = {}, 0
  for i = first, last_cell do
    local c = cells[i]
    local h = c[1]
    local info = firsts[h]
    local latest = c[4]
    local anonymous = latest >= 2
    local e, v, key, state, stored_t
    if info.legacy then
      e, v = c[2], c[3]
      key = h .. '|' .. stratum_name(e, v)
      state, stored_t = cached[key], cov_time[key]
    else
      e, v = info.e or c[2], info.v or c[3]
      state, stored_t = info.state, info.ctime
    end
    local n1
    if anonymous then  -- [anonymous]
      if state[1] == 0 then state[1] = 1 end
      n1 = 1
    else
      n1 = state[1] + c[5]
    end
    local multiple = info.multiple and not info.legacy and info.e
    local before = multiple and {unpack(state)}
    local by_v = acc_of[e]
    local acc = by_v and by_v[v]
    if not acc then acc = select(2, stratum(e, v)) end
    local ok, reported = move(acc, state, c, n1, stored_t)
    if not ok then
      key = key or h .. '|u'
      return {-2, last, 0, 'non-finite ' .. reported .. ' in the new unit state of ' .. units .. ' field ' .. key}
    end
    if anonymous and c[5] > 0 then  -- [anonymous] the unit and its one exposure
      acc.units, acc.exposures, acc.exposures_sq = acc.units + 1, acc.exposures + 1, acc.exposures_sq + 1
    end
    if multiple then
      -- The unit's whole state enters the shadow stratum the first time it switches.
      local _, mx = stratum(e, v .. MX)
      accumulate(mx, info.newly and EMPTY or before, state, nil)  -- sums only, no event counts
      info.newly = false
    end
    local keeps = not anonymous or keeps_state(c)  -- [faults] an anonymous request keeps no state
    if info.legacy then
      if reported then  -- [cuped] the report time of the covariate value now stored
        cov_time[key] = reported
        writes[nw + 1], writes[nw + 2], nw = key .. '|c', num(reported), nw + 2
        age(now_s, key .. '|c')
      end
      writes[nw + 1], writes[nw + 2], nw = key, encode_state(state), nw + 2
      age(now_s, key)
    else
      if reported then info.ctime = reported end
      if keeps then info.dirty = true else info.stateless = true end
    end
    -- The unit's latest exposure in this batch: its stratum credits unit-addressed outcomes.
    -- Written only when it moves: a returning unit's pointer rarely does.
    if latest == 1 then
      local by_e = stratum_names[c[2]]
      local pointer = by_e and by_e[c[3]] or stratum_name(c[2], c[3])
      if pointer ~= info.pointer then
        writes[nw + 1], writes[nw + 2], nw = h, pointer, nw + 2
        info.pointer = pointer
      end
      if info.legacy then age(now_s, h) end
    end
  end
  if nw > 0 then unit_writes[#unit_writes + 1] = writes end
end
-- Each unit's record, once per batch however many cells it had; scored when not fresh.
local records = {}
for h, info in pairs(firsts) do
  if info.dirty then
    records[#records + 1] = h .. '|u'
    records[#records + 1] = record_of(info)
    if not info.fresh then age(granule_s, h .. '|u') end
  end
end
-- [end issue 15, issue 9]

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
for first = 1, #records, 2 * CHUNK do
  redis.call('HSET', units, unpack(records, first, math.min(first + 2 * CHUNK - 1, #records)))
end
-- [issue 15] the fields of units now kept as one record (after it: HDEL never grows memory)
for first = 1, #olds, CHUNK do redis.call('HDEL', units, unpack(olds, first, math.min(first + CHUNK - 1, #olds))) end
for first = 1, #old_members, CHUNK do
  redis.call('ZREM', unit_seen, unpack(old_members, first, math.min(first + CHUNK - 1, #old_members)))
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
