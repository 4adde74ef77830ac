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
--       unit state lifetime in seconds (0: forever), [version 6] the packed cells
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
local VERSIONS = {[1] = true, [2] = true, [3] = true, [4] = true, [5] = true, [6] = true, [7] = true}
local version = batch.v or 1
if not VERSIONS[version] then
  return {-2, last, 0, 'batch format version ' .. tostring(version) .. ' is not one this script knows (1-7)'}
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

-- [issue 15: version 5] The cells are one flat array C of batch.width values each: cell i's
-- value at offset o (the indexes above) is C[(i - 1) * W + o]. A Lua table per cell was half
-- of what decoding a cell cost, and the garbage it left more (bench/lua_prims.py). The
-- nested cells of versions 1-4 are flattened here, each padded to the widest (at least a
-- whole cell and its report times) with false (a cell without a report time has none).
local function flatten(nested, min_width)
  local flat, width = {}, min_width
  for _, c in ipairs(nested) do
    if #c > width then width = #c end
  end
  for i, c in ipairs(nested) do
    local b = (i - 1) * width
    for o = 1, width do
      local x = c[o]
      if x == nil then x = false end
      flat[b + o] = x
    end
  end
  return flat, width
end

-- [issue 15: version 6] The cells come apart from the document, in ARGV[11], packed by
-- `struct`: per cell h and v zero-terminated, every number a little-endian double ("<sds"
-- then width - 3 "d"), batch.ncells of them. One struct.unpack reads a segment of up to
-- SEG cells into one flat table, a third of what cjson took for the same values
-- (bench/lua_prims.py). The cells are then in segments (`segs`, `seg_n` cells each), and C
-- is the segment being worked on.
-- A cell ends with a report time per covariate.
local min_width = cell_end + (batch.covariates and #batch.covariates or batch.covariate and 1 or 0)
local C, W
local segs, seg_n = {}, {}
local function malformed(what)
  return {-2, last, 0, 'batch cells are not a whole number of cells of width ' .. tostring(W) .. what}
end
if version >= 6 then
  W = batch.width
  local n, blob = batch.ncells, ARGV[11] or ''
  if type(W) ~= 'number' or W < min_width or W % 1 ~= 0 or type(n) ~= 'number' or n < 0 or n % 1 ~= 0 then
    return malformed('')
  end
  local cell = 'sds' .. string.rep('d', W - 3)
  local SEG = math.max(1, math.floor(6000 / W))  -- values per call within Lua's C stack (8,000)
  local whole = string.rep(cell, SEG)
  local pos = 1
  while n > 0 do
    local m = math.min(SEG, n)
    local ok, seg = pcall(function() return {struct.unpack('<' .. (m == SEG and whole or string.rep(cell, m)), blob, pos)} end)
    if not ok then return malformed(' (' .. tostring(seg) .. ')') end
    pos = seg[m * W + 1]
    seg[m * W + 1] = nil
    segs[#segs + 1], seg_n[#seg_n + 1] = seg, m
    n = n - m
  end
  if pos ~= #blob + 1 then return malformed(' (bytes left over)') end
  C = segs[1] or {}
  if #segs > 1 and #(batch.keyed or {}) > 0 then  -- keyed outcomes are folded into one flat array
    C = {}
    local at = 0
    for si, seg in ipairs(segs) do
      for o = 1, seg_n[si] * W do C[at + o] = seg[o] end
      at = at + seg_n[si] * W
    end
    segs, seg_n = {C}, {at / W}
  end
elseif version == 5 then
  C, W = batch.cells, batch.width
  if type(W) ~= 'number' or W < min_width or W % 1 ~= 0 or #C % W ~= 0 then return malformed('') end
else
  C, W = flatten(batch.cells, min_width)
end
if version < 6 then segs[1], seg_n[1] = C, #C / W end

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
local ncells = seg_n[1] or 0  -- (the cells of segment 1: all of them when keyed outcomes are folded in)
local repeated = 0
local keyed = batch.keyed or {}
local new_ids = {}  -- ZADD arguments: score, id, ...
local forget_before = now - tonumber(ARGV[8])
local scattered = version < 7  -- [version 7] whether a unit's cells may be apart (`regroup`)
if #keyed > 0 then
  local by_key, metric_at, has_cells = {}, {}, {}
  for b = 0, (ncells - 1) * W, W do
    by_key[C[b + 1] .. '|' .. C[b + 2] .. '|' .. C[b + 3]] = b
    has_cells[C[b + 1]] = true
  end
  for i, m in ipairs(batch.metrics) do metric_at[m] = i end
  for _, k in ipairs(keyed) do
    local seen = tonumber(redis.call('ZSCORE', outcome_ids, k[1]))
    if seen and seen >= forget_before then
      repeated = repeated + 1
    else
      new_ids[#new_ids + 1] = now_s
      new_ids[#new_ids + 1] = k[1]
      local unit = version >= 7 and k[2] .. '|u' or k[2]  -- [version 7] a cell's unit is its record field
      local key = unit .. '|' .. k[3] .. '|' .. k[4]
      local b = by_key[key]
      if not b then
        b = ncells * W
        ncells = ncells + 1
        C[b + 1], C[b + 2], C[b + 3], C[b + 4], C[b + 5] = unit, k[3], k[4], k[8] == 1 and 3 or 0, 0  -- [anonymous] k[8]: by an anonymous request
        if has_cells[unit] then scattered = true end  -- the unit's cells are no longer one run
        has_cells[unit] = true
        for o = 6, cell_end do C[b + o] = 0 end
        for o = cell_end + 1, W do C[b + o] = false end  -- no covariate, so no report time
        by_key[key] = b
      end
      local i = metric_at[k[5]]
      local at = b + dx_at[i]  -- a keyed outcome is never a built-in's: it has a count of its own
      if bbin[i] then
        if k[6] > C[at] then C[at] = k[6] end
      else
        C[at] = C[at] + k[6]
      end
      C[b + n_at[i]] = C[b + n_at[i]] + 1
    end
  end
  if #segs == 0 then segs[1] = C end
  seg_n[1] = ncells
end
--- @include "groups"
if scattered then regroup(version < 7 and '|u' or nil) end

-- Changes to agg are summed per stratum in Lua tables over all cells (`strata`), then
-- written with one HINCRBY(FLOAT) per field: per-cell work builds no field names.
local seen_members, nseen = {}, 0  -- ZADD arguments for unit_seen: time, field, ...
local function age(score, field)
  seen_members[nseen + 1], seen_members[nseen + 2], nseen = score, field, nseen + 2
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
-- (`pack_unit`, unit_state.lua): its first exposure (e, v; 0 and "" before it has one),
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
local cached = {}   -- [legacy] state field -> state after this batch's cells so far
local first_values = {}  -- [old units] the parts of each distinct h|f value
-- [issue 15] Each unit's record, written when its run of cells ends: {field, record, ...}. (A
-- run cut by the end of a chunk is written there and again when it ends: HSET keeps the last.)
local records, nrec = {}, 0

-- A unit without a record: from its old fields (h|f, the value of h), or new; nil and why
-- not when corrupt. [legacy] A unit with h but no h|f is `legacy` (no record, ever).
local function unit_without_record(h, old_first, pointer)
  local u = new_unit()
  if pointer then u[LATEST] = pointer end
  if old_first then
    local parsed = first_values[old_first]
    if not parsed then
      local e, v, m = string.match(old_first, '^(%d+)|([^|]+)|?(m?)|?[^|]*$')
      if not e then return nil, 'corrupt first exposure in ' .. units .. ' field ' .. h .. '|f' end
      parsed = {tonumber(e), v, m == 'm' and 1 or 0}
      first_values[old_first] = parsed
    end
    u[E], u[V], u[M], u.old_first = parsed[1], parsed[2], parsed[3], true
  elseif pointer then
    u.legacy = true
  end
  return u
end

-- Cells in chunks: a few HMGETs (now) and one HSET (in phase 2) per chunk instead of
-- calls per cell.
local CHUNK = 500
local stratum_names = names  -- strata.lua's e -> v -> "e|v" (`names` below is a chunk's fields)
local move_record = nil  -- compiled at the first chunk (`mover`)
local function no_mover() return false end  -- (without loadstring every unit takes its table)
-- `move_record`, compiled with the ramped form's code or without it (unit_state.lua); a mover
-- without it compiles the one with it when it meets a ramped record (`again`), once a batch.
local function mover(ramped)
  local chunk = record_mover and record_mover(ramped)
  if not chunk then return no_mover end
  return chunk(RECORD, BRIEF, RAMPED, KS, acc_of, stratum, stratum_names, stratum_name, granule_end, counted_at,
               cap_at, set_more, order, HUGE, struct.unpack, struct.pack, pcall, string.byte, latest_epoch,
               function(raw, b, cells)
                 move_record = mover(true)
                 return move_record(raw, b, cells)
               end)
end
local sub = string.sub
local unit_writes = {}   -- [legacy] states and pointers, per chunk
local olds = {}          -- [old units] fields to delete, once read into a record
local old_members = {}   -- [old units] their unit_seen members
local ranges = {}  -- {segment, first cell, last cell}: up to CHUNK cells of one segment each
for si = 1, #segs do
  for first = 1, seg_n[si], CHUNK do ranges[#ranges + 1] = {si, first, math.min(first + CHUNK - 1, seg_n[si])} end
end
local function refused(why) return {-2, last, 0, why} end
-- The runs (`groups`): each unit's cells are one run, its unit the record's field h|u. met[h]:
-- its run was met (a second run of it refuses the batch); prev: the unit of the last run
-- named, which may go on into the next chunk; cur: the run being moved, cu the unit as moved
-- so far (its record, or its table: `unit_of`), dirty and stale whether its record moved
-- since it was last written and whether that record named an older expiry granule.
local met, prev = {}, false
local cur, cu, dirty, stale = false, nil, false, false
for _, range in ipairs(ranges) do
  C = segs[range[1]]
  local first, last_cell = range[2], range[3]
  local first_b, last_b = (first - 1) * W, (last_cell - 1) * W
  -- The records of the runs that start in this chunk, names[k] the k-th one's unit.
  local names, nh = {}, 0  -- (counted: # is a search in Lua 5.1)
  for b = first_b, last_b, W do
    local h = C[b + 1]
    if h ~= prev then
      if met[h] then return refused('batch cells: the cells of unit ' .. h .. ' are not one run') end
      if sub(h, -2) ~= '|u' then return refused('batch cells: unit ' .. h .. ' is not a record field (h|u)') end
      met[h], prev = true, h
      nh = nh + 1
      names[nh] = h
    end
  end
  local raws = nh > 0 and redis.call('HMGET', units, unpack(names)) or {}
  if not move_record then
    -- [ramped] The ramped form's code (a third of what is compiled) is compiled when one of the
    -- batch's first records is ramped (after a ramp step most are), else only if one is met.
    local ramped = false
    for q = 1, nh < 16 and nh or 16 do
      local b4 = raws[q] and string.byte(raws[q], 4) or 0
      if b4 >= 128 and b4 < 192 then ramped = true; break end
    end
    move_record = mover(ramped)
  end
  -- [old units] The units without a record among the runs from the k0-th (its first cell at
  -- b0) to the chunk's end, as tables in `raws`: new, or stored before records (their old
  -- fields read into the table, to be deleted). Read when the first of them is met, for all
  -- of them at once: most chunks of a running experiment have none. Returns why not, if corrupt.
  local function prepare(k0, b0)
    local bare, at, nbare = {}, {}, 0
    local k, p = k0 - 1, false
    for b = b0, last_b, W do
      local h = C[b + 1]
      if h ~= p then
        p, k = h, k + 1
        if not raws[k] then nbare, bare[nbare + 1], at[nbare + 1] = nbare + 1, k, b end
      end
    end
    local ids = {}
    for n = 1, nbare do
      local h = sub(names[bare[n]], 1, -3)
      ids[2 * n - 1], ids[2 * n] = h .. '|f', h
    end
    local old_raw = redis.call('HMGET', units, unpack(ids))
    local fields, whose = {}, {}  -- old states to read (h|e|v, [cuped] then h|e|v|c), and their unit
    for n = 1, nbare do
      local h = ids[2 * n]
      local u, bad = unit_without_record(h, old_raw[2 * n - 1], old_raw[2 * n])
      if not u then return bad end
      raws[bare[n]] = u
      if not u.legacy then
        local b = at[n]
        local old = h .. '|' .. stratum_name(u[E] ~= 0 and u[E] or C[b + 2], u[V] ~= '' and u[V] or C[b + 3])
        fields[#fields + 1], whose[#fields + 1] = old, n
        if cov_i then fields[#fields + 1] = old .. '|c' end
      end
    end
    if #fields == 0 then return nil end
    local found = redis.call('HMGET', units, unpack(fields))
    for i = 1, #fields do
      local n = whose[i]
      if n then
        local state = valid_state(found[i])
        if not state then return 'corrupt unit state in ' .. units .. ' field ' .. fields[i] end
        local u = raws[bare[n]]
        for s = 1, KS do u[S + s] = state[s] end
        u[CTIME] = cov_i and tonumber(found[i + 1]) or 0
        if u.old_first or found[i] then  -- into the unit's record; the old fields go
          local h = ids[2 * n]
          olds[#olds + 1] = h .. '|f'
          olds[#olds + 1] = fields[i]
          olds[#olds + 1] = fields[i] .. '|c'
          old_members[#old_members + 1] = h .. '|f'  -- [expiry] it would delete h, now the record's
        end
      end
    end
    return nil
  end
  -- The cells in order, a run at a time (one step past the chunk's last cell ends the last
  -- run; it goes on if the next chunk starts with its unit).
  local writes, nw = {}, 0
  local k = 0
  for b = first_b, last_b + W, W do
    local h = b <= last_b and C[b + 1]
    if h ~= cur then
      if dirty then  -- the run of `cur` ended: its record is written
        records[nrec + 1], records[nrec + 2], nrec = cur, cu, nrec + 2
        if stale then age(granule_s, cur) end
      elseif cur and type(cu) == 'table' and cu[DIRTY] then
        if cu[U_GRANULE] ~= granule_end then age(granule_s, cur) end
        records[nrec + 1], records[nrec + 2], nrec = cur, pack_unit(cu, granule_end), nrec + 2
        cu[DIRTY] = false
      end
      dirty, stale = false, false
      if not h then break end
      k = k + 1
      cur, cu = h, raws[k]
      if not cu then
        local bad = prepare(k, b)
        if bad then return refused(bad) end
        cu = raws[k]
      end
    end
    local rec = false
    if type(cu) == 'string' then  -- a record not read into a table
      local pointer, was_stale
      rec, pointer, was_stale = move_record(cu, b, C)
      if rec then
        cu, dirty = rec, true
        if was_stale then stale = true end
        if pointer then writes[nw + 1], writes[nw + 2], nw = sub(h, 1, -3), pointer, nw + 2 end
      elseif rec == nil then
        return refused('non-finite ' .. pointer .. ' in the new unit state of ' .. units .. ' field ' .. h)
      else  -- not the common case: the unit as a table
        local u = unit_of(cu)
        if not u then return refused('corrupt unit record in ' .. units .. ' field ' .. h) end
        if dirty then u[DIRTY] = true end
        if stale then u[U_GRANULE] = 0 end  -- (scored when written, as it would have been)
        cu, dirty, stale = u, false, false
      end
    end
    if not rec then
      local u, hash = cu, sub(h, 1, -3)
      local latest = C[b + 4]
      local anonymous = latest >= 2
      local legacy = u.legacy
      local e, v, key, st, o, stored_t
      if legacy then
        e, v = C[b + 2], C[b + 3]
        key = hash .. '|' .. stratum_name(e, v)
        if cached[key] == nil then  -- (rare: units stored before intent-to-treat)
          local got = redis.call('HMGET', units, key, key .. '|c')
          local state = valid_state(got[1])
          if not state then return refused('corrupt unit state in ' .. units .. ' field ' .. key) end
          cached[key], cov_time[key] = state, cov_i and tonumber(got[2]) or false
        end
        st, o, stored_t = cached[key], 0, cov_time[key]
      else
        -- Its first exposure, or a second variant: a multiple exposure from this cell on (the
        -- cells come in the order of their first exposure, outcomes alone last).
        if C[b + 5] > 0 then
          if u[E] == 0 then
            u[E], u[V] = C[b + 2], C[b + 3]
          elseif C[b + 3] ~= u[V] and u[M] == 0 then
            u[M], u.newly = 1, true
          end
        end
        e, v = u[E], u[V]
        if e == 0 then e, v = C[b + 2], C[b + 3] end
        st, o, stored_t = u, S, u[CTIME]
        if stored_t == 0 then stored_t = false end
      end
      local n1
      if anonymous then  -- [anonymous]
        if st[o + 1] == 0 then st[o + 1] = 1 end
        n1 = 1
      else
        n1 = st[o + 1] + C[b + 5]
      end
      local multiple = not legacy and u[M] == 1 and u[E] ~= 0
      local before = multiple and {unpack(st, o + 1, o + KS)}
      local by_v = acc_of[e]
      local acc = by_v and by_v[v]
      if not acc then acc = select(2, stratum(e, v)) end
      local ok, reported = move(acc, st, o, b, n1, stored_t, C)
      if not ok then
        return refused('non-finite ' .. reported .. ' in the new unit state of ' .. units .. ' field ' .. (key or h))
      end
      if anonymous and C[b + 5] > 0 then  -- [anonymous] the unit and its one exposure
        acc.units, acc.exposures, acc.exposures_sq = acc.units + 1, acc.exposures + 1, acc.exposures_sq + 1
      end
      if multiple then
        -- The unit's whole state enters the shadow stratum the first time it switches.
        local _, mx = stratum(e, v .. MX)
        accumulate(mx, u.newly and EMPTY or before, {unpack(st, o + 1, o + KS)}, nil)  -- sums only, no event counts
        u.newly = false
      end
      local keeps = not anonymous or keeps_state(b)  -- [faults] an anonymous request keeps no state
      if legacy then
        if reported then  -- [cuped] the report time of the covariate value now stored
          cov_time[key] = reported
          writes[nw + 1], writes[nw + 2], nw = key .. '|c', num(reported), nw + 2
          age(now_s, key .. '|c')
        end
        writes[nw + 1], writes[nw + 2], nw = key, encode_state(st), nw + 2
        age(now_s, key)
      else
        if reported then u[CTIME] = reported end
        if keeps then u[DIRTY] = true end
      end
      -- The unit's latest exposure in this batch: its stratum credits unit-addressed outcomes.
      -- Written only when it moves: a returning unit's pointer rarely does.
      if latest == 1 then
        local by_e = stratum_names[C[b + 2]]
        local pointer = by_e and by_e[C[b + 3]] or stratum_name(C[b + 2], C[b + 3])
        if pointer ~= u[LATEST] then
          writes[nw + 1], writes[nw + 2], nw = hash, pointer, nw + 2
          u[LATEST] = pointer
        end
        if legacy then age(now_s, hash) end
      end
    end
  end
  if nw > 0 then unit_writes[#unit_writes + 1] = writes end
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
