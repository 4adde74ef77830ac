-- unit_state.lua: one unit's state [n_u, x_u(m1), ...], its record, and how a cell moves it.
-- Expects: the batch layout (ncol, nbm, bcol, bbin, pcol, order, nbuiltin, and where a
-- cell holds each metric's value and count: dx_at, n_at, cell_end), the cells (C, the
-- segment being worked on), [cuped] cov_i, cov_j, cov_flag, [regression] more_covs, [cap]
-- capped; and finite (numbers.lua).
--
-- One cell, at C[b + 1] ...: unit_hash, epoch, variant, latest, dn, then each batch
-- metric's value (C[b + dx_at[i]]) and event count (C[b + n_at[i]]; a built-in's is dn
-- from version 4 on). Moving a state changes it in place and adds the exact
-- change of every sufficient statistic to its stratum's totals: d(x^2) = x1^2 - x0^2,
-- d(xn) = x1*n1 - x0*n0. In place, and in one pass over the columns: a new table per
-- cell, and a second pass, were a fifth of the script's CPU (Lua allocates, then sweeps).

-- A state with nothing in it, read only (the old side of a unit that was not in a stratum).
local EMPTY = {0}

local function new_state()
  local state = {0}
  for j = 2, ncol + 1 do state[j] = 0 end
  return state
end

-- `state`, with a 0 for each column it lacks (columns only grow), when it is a non-empty
-- array of finite numbers; else nil.
local function valid_table(state)
  if type(state) ~= 'table' or #state == 0 then return nil end
  for j = 1, #state do
    if type(state[j]) ~= 'number' or not finite(state[j]) then return nil end
  end
  for j = #state + 1, ncol + 1 do state[j] = 0 end
  return state
end

-- [old fields] A state stored alone (h|e|v): JSON (before MessagePack) or MessagePack.
local function valid_state(raw)
  if not raw then return new_state() end
  local ok, state = pcall(string.byte(raw, 1) == 91 and cjson.decode or cmsgpack.unpack, raw)
  if not ok then return nil end
  return valid_table(state)
end

-- [issue 15] A unit, as this batch reads, moves and writes it, is one Lua table, `u`: its
-- record's fields where struct.unpack puts them, then its state, and rare named flags
-- (legacy, old_first, newly). One table and one unpack per unit: the record's head and its
-- state apart, and a table of named fields beside, cost twice as much (bench/README.md).
-- (The common case needs no table: `move_record`, below.)
--   u[DIRTY] true once a cell moved it (its record is to be written; pcall's `ok` before)
--   u[E] epoch of its first exposure (0: none yet)   u[V] its variant ('': none)
--   u[M] 1 once it was also exposed to another variant   u[LATEST] "e|v" of its latest
--   exposure (units[h]; '': none)   u[U_GRANULE] end of the expiry granule it was last
--   scored in   u[CTIME] [cuped] its covariate's report time (0: none)   u[K] state length
--   u[S + s] its state: s = 1 n_u, s = j + 1 column j's x_u (S = 8)
-- The record (docs/storage.md) is u[E] .. u[S + K], packed by `struct` (twice as fast as
-- cmsgpack here, doubles exact): "<i4sBsddH" and K doubles.
local DIRTY, E, V, M, LATEST, U_GRANULE, CTIME, K, S = 1, 2, 3, 4, 5, 6, 7, 8, 8
local RECORD_HEAD = '<i4sBsddH'
local HUGE = math.huge
local KS = ncol + 1  -- a state's length in this batch's columns (they only grow)
local RECORD = RECORD_HEAD .. string.rep('d', KS)
-- [brief] The common unit's record in short: one whose latest exposure is its first, not a
-- multiple exposure, without a covariate's report time (what the long form would hold is
-- then implied): "<i4sd" and K doubles, -e (negative: the first four bytes tell the forms
-- apart), v, granule, n_u, x_u(m1), ...; K from its length. 21 bytes and four values fewer
-- each way than the long form (bench/README.md). Either form is read; a record is written
-- in the brief form whenever it qualifies.
local BRIEF_HEAD = '<i4sd'
local BRIEF = BRIEF_HEAD .. string.rep('d', KS)
-- [ramped] A unit whose latest exposure is of its first exposure's variant in another epoch
-- (after a ramp step, most returning units), not a multiple exposure, without a covariate's
-- report time: "<i4si4d" and K doubles, -(OFFSET + e), v, the latest exposure's epoch, granule,
-- n_u, x_u(m1), .... The first four bytes are below the brief form's -e (e < OFFSET): its
-- fourth byte is 0x80-0xBF where a brief record's is 0xC0-0xFF. It is 4 bytes longer than a
-- brief record of the same state, so a script from before this form (which takes it for a
-- brief one) finds a state that is not whole doubles and refuses it as corrupt rather than
-- misreading it; that length also tells it from a brief record of an epoch >= OFFSET, if one
-- was ever written. One value more each way than the brief form, four fewer than the long one.
local OFFSET = 2 ^ 30
local RAMPED = '<i4si4d' .. string.rep('d', KS)

-- [ramped] The epoch of `latest` ("e|v", a record's latest exposure) when its variant is `v`
-- and it fits the ramped form's int32; else nil.
local function latest_epoch(latest, v)
  local bar = string.find(latest, '|', 1, true)
  if not bar or string.sub(latest, bar + 1) ~= v then return nil end
  local le = tonumber(string.sub(latest, 1, bar - 1))
  if le and le >= 1 and le < 2 ^ 31 and le % 1 == 0 then return le end
  return nil
end

-- A unit that has no record: no exposure, an empty state.
local function new_unit()
  local u = {false, 0, '', 0, '', 0, 0, KS}
  for at = S + 1, S + KS do u[at] = 0 end
  return u
end

-- [old records] A record with a shorter state (written before columns were added), or
-- none: nil.
local function short_unit(raw)
  local ok, e, v, m, latest, granule, t, k, at = pcall(struct.unpack, RECORD_HEAD, raw)
  if not ok or k == 0 or k > KS or at + 8 * k ~= #raw + 1 then return nil end
  local u = {true, e, v, m, latest, granule, t, KS, struct.unpack('<' .. string.rep('d', k), raw, at)}
  for at = S + k + 1, S + KS + 1 do u[at] = 0 end  -- (over struct.unpack's last value: where it stopped)
  return u
end

-- [brief] A record in the brief form, or [ramped] the ramped one (told apart by their length:
-- the ramped form has 4 bytes more than whole doubles after v and the brief form's granule),
-- with any state length up to KS, as a unit; nil if it is not one.
local function brief_unit(raw)
  local ok, x, v, at = pcall(struct.unpack, '<i4s', raw)
  if not ok or x >= 0 then return nil end
  local e, le = -x, -x
  if (#raw + 1 - at) % 8 == 4 then e, le, at = -x - OFFSET, struct.unpack('<i4', raw, at) end  -- [ramped]
  if e < 1 or le < 1 then return nil end
  local granule
  ok, granule, at = pcall(struct.unpack, '<d', raw, at)
  if not ok then return nil end
  local k = (#raw + 1 - at) / 8
  if k < 1 or k > KS or k % 1 ~= 0 then return nil end
  local u = {true, e, v, 0, le .. '|' .. v, granule, 0, KS, struct.unpack('<' .. string.rep('d', k), raw, at)}
  for at = S + k + 1, S + KS + 1 do u[at] = 0 end  -- (over struct.unpack's last value: where it stopped)
  return u
end

-- Whether `raw` is in the brief or [ramped] the ramped form: its first four bytes are negative.
local function is_brief(raw)
  return (string.byte(raw, 4) or 0) >= 128
end

-- The unit of record `raw`, or nil when `raw` is no record (or holds a number that is not finite).
local function unit_of(raw)
  local u
  if is_brief(raw) then
    u = brief_unit(raw)
    if not u then return nil end
  else
    u = {pcall(struct.unpack, RECORD, raw)}
    if not (u[1] and u[K] == KS and u[S + KS + 1] == #raw + 1) then
      u = short_unit(raw)
      if not u then return nil end
    end
  end
  for at = S + 1, S + KS do  -- doubles all: finite? (x - x is NaN for NaN and for an infinity)
    local x = u[at]
    if x - x ~= 0 then return nil end
  end
  u[DIRTY] = false
  return u
end

-- Its record, in the current granule: brief, or [ramped] ramped, when it qualifies.
local function pack_unit(u, granule)
  u[U_GRANULE], u[K] = granule, KS
  local e = u[E]
  if e > 0 and u[M] == 0 and u[CTIME] == 0 then
    if u[LATEST] == e .. '|' .. u[V] then return struct.pack(BRIEF, -e, u[V], granule, unpack(u, S + 1, S + KS)) end
    local le = e < OFFSET and latest_epoch(u[LATEST], u[V])  -- [ramped]
    if le then return struct.pack(RAMPED, -OFFSET - e, u[V], le, granule, unpack(u, S + 1, S + KS)) end
  end
  return struct.pack(RECORD, unpack(u, E, S + KS))
end

-- Per column of the state, once per batch: where a cell holds its value (false: the batch
-- does not carry it), whether it is a max (binary), [cap] its cap. The cell loop then does
-- no index arithmetic and no lookups through the batch metric.
local col_dx, col_bin, cap_at = {}, {}, {}
for j = 1, ncol do col_dx[j], col_bin[j] = false, false end
for i = 1, nbm do col_dx[bcol[i]], col_bin[bcol[i]] = dx_at[i], bbin[i] end
for _, c in ipairs(capped) do cap_at[c[1] - 1] = c[2] end
local cov_col = cov_j and cov_j - 1 or false  -- [cuped] the covariate's column
local cov_n = cov_i and n_at[cov_i]
local cov_t = cell_end + 1  -- [cuped] where a cell holds its covariate's report time
local npairs = #pcol
-- [issue 15] The batch metrics whose event count a cell holds apart (their columns and where
-- in a cell), and the columns whose count is the cell's n (the built-ins from version 4 on):
-- a stratum adds up n once (acc.dn) and gives it to each of those when written (strata.lua).
local counted, counted_at, n_counted = {}, {}, {}
for i = 1, nbm do
  if n_at[i] == 5 then
    n_counted[#n_counted + 1] = bcol[i]
  else
    counted[#counted + 1], counted_at[#counted_at + 1] = bcol[i], n_at[i]
  end
end
local ncounted = #counted
-- [regression] Further covariates' columns are set by `set_more`, not the column loop.
for _, mc in ipairs(more_covs) do col_dx[mc[2] - 1], col_dx[mc[3] - 1] = false, false end
local nmore = #more_covs

-- [regression] State index `s` (column s - 1) of a state (`st`, at offset `o`: see `move`)
-- counted with n_u = n1 set to `x`, and the change added to the stratum's totals; false if
-- `x` is not finite.
local function put(acc, st, o, s, x, n1)
  if x ~= x or x == HUGE or x == -HUGE then return false end
  local a, j, w1 = st[o + s], s - 1, n1 > 0 and 1 or 0
  acc.sum[j] = acc.sum[j] + w1 * (x - a)
  acc.sum_sq[j] = acc.sum_sq[j] + w1 * (x * x - a * a)
  acc.sum_xn[j] = acc.sum_xn[j] + (x - a) * n1
  st[o + s] = x
  return true
end

-- [regression] Each further covariate the cell carries is taken if the unit has none yet or
-- this one was reported earlier than the stored one (whose time its flag column holds).
-- Returns nil, or the column whose new value is not finite.
local function set_more(acc, st, o, b, n1)
  for q = 1, nmore do
    local mc = more_covs[q]
    if C[b + n_at[mc[1]]] > 0 then
      local t, stored = C[b + cell_end + mc[4]] or 0, st[o + mc[3]]
      if stored == 0 or (t > 0 and t < stored) then
        if not put(acc, st, o, mc[2], C[b + dx_at[mc[1]]], n1) then return order[mc[2] - 1] end
        put(acc, st, o, mc[3], t > 0 and t or 1, n1)
      end
    end
  end
  return nil
end

-- Moves a state (in place; `st`, n_u at st[o + 1] and column j at st[o + j + 1]: a unit's, o = S,
-- or [legacy] a bare state, o = 0) by the cell at C[b + 1], n_u to `n1`, and adds the change to the stratum's
-- totals `acc`. [held] A unit's values count in the sums only once it has an exposure
-- (n_u > 0): an outcome that reaches Redis before its unit's exposure is held in the state
-- and credited, whole, when the exposure lands. [cuped] `stored_t`: the report time of the
-- covariate value the state holds. Returns true and the report time of a covariate value
-- the cell set (nil if none), or nil and the column whose new value is not finite (then
-- nothing may be written: the batch is refused).
local function move(acc, st, o, b, n1, stored_t)
  local n0 = st[o + 1]
  local w0, w1 = n0 > 0 and 1 or 0, n1 > 0 and 1 or 0
  local events = acc.events
  acc.dn = acc.dn + C[b + 5]
  for q = 1, ncounted do
    local j = counted[q]
    events[j] = events[j] + C[b + counted_at[q]]
  end
  if n0 == 0 and n1 > 0 then acc.units = acc.units + 1 end
  acc.exposures = acc.exposures + (n1 - n0)
  acc.exposures_sq = acc.exposures_sq + n1 * n1 - n0 * n0
  local xy0 = nil  -- [issue 9] each ratio pair's x*y before the move
  if npairs > 0 then
    xy0 = {}
    for p = 1, npairs do xy0[p] = w0 * st[o + pcol[p][1] + 1] * st[o + pcol[p][2] + 1] end
  end
  -- [cuped] A covariate in this cell is kept if the unit had none or this one was
  -- reported earlier; else the stored value stays.
  local covariate, reported = false, nil
  if cov_n and C[b + cov_n] > 0 then
    local t = C[b + cov_t]
    covariate = st[o + cov_flag] == 0 or (t and stored_t and t < stored_t) or false
    if covariate then reported = t end
    covariate = covariate and 'take' or 'keep'
  end
  local sum, sum_sq, sum_xn = acc.sum, acc.sum_sq, acc.sum_xn
  for j = 1, ncol do
    local a = st[o + j + 1]
    local x = a
    local at = col_dx[j]
    if at then
      local dx = C[b + at]
      if j == cov_col and covariate then
        if covariate == 'take' then x = dx end
      elseif col_bin[j] then
        if dx > x then x = dx end
      else
        x = x + dx
      end
    end
    local cap = cap_at[j]  -- [cap]
    if cap and x > cap then x = cap end
    if a ~= 0 or x ~= 0 then
      if x ~= x or x == HUGE or x == -HUGE then return nil, order[j] end  -- [faults]
      sum[j] = sum[j] + (w1 * x - w0 * a)
      sum_sq[j] = sum_sq[j] + (w1 * x * x - w0 * a * a)
      sum_xn[j] = sum_xn[j] + (x * n1 - a * n0)
      st[o + j + 1] = x
    end
  end
  if nmore > 0 then  -- [regression] before the products: they take the new values
    local bad = set_more(acc, st, o, b, n1)
    if bad then return nil, bad end
  end
  st[o + 1] = n1
  if xy0 then
    local sum_xy = acc.sum_xy
    for p = 1, npairs do sum_xy[p] = sum_xy[p] + (w1 * st[o + pcol[p][1] + 1] * st[o + pcol[p][2] + 1] - xy0[p]) end
  end
  return true, reported
end

-- [issue 15] `move`, written out for this batch's layout: the same statements with every
-- per-column lookup (where a cell holds the value, binary or not, capped, the covariate)
-- decided once per batch, the column loop unrolled, and the cells (C) an argument. Compiled
-- once per batch by loadstring (Redis 6.2 and 7.0 have it; without it, the `move` above). The
-- compiled code sees no globals (its environment is not the script's): what it calls comes in.
-- The arithmetic is the same expressions in the same order, so the sums are the same to the
-- bit (bench/README.md: a fifth of the script's CPU was this loop). `slot(s)` names state
-- index s: `st[o + s]` in `move`, a local in `move_record` (below).
local function move_body(w, slot, returning)
  -- `returning`: the unit had exposures and keeps them (n0 > 0 and n1 > 0, checked by the
  -- caller), so both weights are 1 and the unit is not new to its stratum: the same sums,
  -- without the weights (a product by 1 is exact) and the branches they need.
  w('local n0 = ' .. slot(1))
  if not returning then w('local w0, w1 = n0 > 0 and 1 or 0, n1 > 0 and 1 or 0') end
  w('local events = acc.events')
  w('acc.dn = acc.dn + C[b + 5]')
  for q = 1, ncounted do
    w(string.format('events[%d] = events[%d] + C[b + %d]', counted[q], counted[q], counted_at[q]))
  end
  if not returning then w('if n0 == 0 and n1 > 0 then acc.units = acc.units + 1 end') end
  w('acc.exposures = acc.exposures + (n1 - n0)')
  w('acc.exposures_sq = acc.exposures_sq + n1 * n1 - n0 * n0')
  local w0_, w1_ = returning and '' or 'w0 * ', returning and '' or 'w1 * '
  for p = 1, npairs do
    w(string.format('local xy0_%d = %s%s * %s', p, w0_, slot(pcol[p][1] + 1), slot(pcol[p][2] + 1)))
  end
  w('local covariate, reported = false, nil')
  if cov_n then
    w(string.format('if C[b + %d] > 0 then', cov_n))
    w(string.format('local t = C[b + %d]', cov_t))
    w(string.format('covariate = %s == 0 or (t and stored_t and t < stored_t) or false', slot(cov_flag)))
    w('if covariate then reported = t end')
    w("covariate = covariate and 'take' or 'keep'")
    w('end')
  end
  w('local sum, sum_sq, sum_xn = acc.sum, acc.sum_sq, acc.sum_xn')
  w(returning and 'local same_n = n0 == n1' or 'local same_w, same_n = w0 == w1, n0 == n1')
  for j = 1, ncol do
    local at = col_dx[j]
    w(string.format('do local a = %s', slot(j + 1)))
    -- A column the cell leaves as it was (x = a: most of an exposure's; a is finite, every
    -- stored state is) changes sum and sum_sq by exactly 0 when n_u keeps its weight, and
    -- sum_xn by exactly 0 when n_u does not move: those additions are skipped.
    local unchanged = nil
    if not cap_at[j] and j ~= cov_col then
      if not at then
        unchanged = 'true'
      else
        w(string.format('local dx = C[b + %d]', at))
        unchanged = col_bin[j] and 'dx <= a' or 'dx == 0'
      end
    end
    if unchanged then
      w('if ' .. unchanged .. ' then')
      w('if a ~= 0 then')
      w(string.format('if not same_n then sum_xn[%d] = sum_xn[%d] + (a * n1 - a * n0) end', j, j))
      if not returning then
        w('if not same_w then')
        w(string.format('sum[%d] = sum[%d] + (w1 * a - w0 * a)', j, j))
        w(string.format('sum_sq[%d] = sum_sq[%d] + (w1 * a * a - w0 * a * a)', j, j))
        w('end')
      end
      w('end else')
    end
    w('local x = a')
    if at then
      if not unchanged then w(string.format('local dx = C[b + %d]', at)) end
      local plain = col_bin[j] and 'if dx > x then x = dx end' or 'x = x + dx'
      if j == cov_col then
        w("if covariate then if covariate == 'take' then x = dx end else " .. plain .. ' end')
      else
        w(plain)
      end
    end
    if cap_at[j] then w(string.format('if x > cap_at[%d] then x = cap_at[%d] end', j, j)) end
    w('if a ~= 0 or x ~= 0 then')
    w(string.format('if x ~= x or x == HUGE or x == -HUGE then return nil, order[%d] end', j))
    w(string.format('sum[%d] = sum[%d] + (%sx - %sa)', j, j, w1_, w0_))
    w(string.format('sum_sq[%d] = sum_sq[%d] + (%sx * x - %sa * a)', j, j, w1_, w0_))
    w(string.format('sum_xn[%d] = sum_xn[%d] + (x * n1 - a * n0)', j, j))
    w(string.format('%s = x', slot(j + 1)))
    w(unchanged and 'end end end' or 'end end')
  end
  if nmore > 0 then w('local bad = set_more(acc, st, o, b, n1) if bad then return nil, bad end') end
  w(slot(1) .. ' = n1')
  if npairs > 0 then
    w('local sum_xy = acc.sum_xy')
    for p = 1, npairs do
      w(string.format('sum_xy[%d] = sum_xy[%d] + (%s%s * %s - xy0_%d)', p, p, w1_, slot(pcol[p][1] + 1),
                      slot(pcol[p][2] + 1), p))
    end
  end
end

local function move_source()
  local out = {'local counted_at, cap_at, set_more, order, HUGE = ...',
               'return function(acc, st, o, b, n1, stored_t, C)'}
  move_body(function(line) out[#out + 1] = line end, function(s) return 'st[o + ' .. s .. ']' end)
  out[#out + 1] = 'return true, reported'
  out[#out + 1] = 'end'
  return table.concat(out, '\n')
end

-- [issue 15] The common case without a Lua table: a unit's record read (struct.unpack into
-- locals), checked, moved by one cell and packed again, as `unit_of`, the cell loop
-- (flush.lua) and `pack_unit` would, for a unit that has a whole record (no column missing),
-- not a multiple exposure, and a cell that is not anonymous and does not make it one (no
-- second variant), in a batch without covariates; a unit whose record holds no exposure
-- yet (outcomes held) too, the cell's exposure then its first. Returns the packed record, the pointer to write to units[h] (nil: it did not
-- move) and whether the record named an older expiry granule; false when the unit is not
-- that case (the caller then takes the table: `unit_of`); nil and the column when a value
-- is not finite (the batch is refused). A record (a string) is the unit's whole state
-- between its cells: a unit's second cell unpacks the first one's result.
local function move_record_source(ramped)
  local out = {'local RECORD, BRIEF, RAMPED, KS, acc_of, stratum, stratum_names, stratum_name, granule_end, '
                 .. 'counted_at, cap_at, set_more, order, HUGE, unpack_, pack_, pcall_, byte_, latest_epoch, again = ...',
               'return function(raw, b, C)'}
  local function w(line) out[#out + 1] = line end
  local states = {}
  for s = 1, KS do states[s] = 's' .. s end
  local list = table.concat(states, ', ')
  local finite_ = {}
  for s = 1, KS do finite_[s] = string.format('s%d - s%d ~= 0', s, s) end
  local checks = table.concat(finite_, ' or ')  -- true when a value is not finite
  -- A cell of the stratum of the unit's latest exposure (`latest`), which is its first's
  -- variant, on a unit with exposures: the common cell of a returning unit. Moved in its first
  -- exposure's stratum (`first`) with both weights 1, the pointer unmoved; packed again in its
  -- own short form (`form`: the pack's leading arguments).
  local function own_cell(latest, first, form)
    w('if C[b + 2] == ' .. latest .. ' and C[b + 3] == v and C[b + 4] < 2 and s1 > 0 then')
    w('local n1 = s1 + C[b + 5]')
    w('if n1 > 0 and not (' .. checks .. ') then')
    w('local by_v = acc_of[' .. first .. ']')
    w('local acc = by_v and by_v[v]')
    w('if not acc then local _ _, acc = stratum(' .. first .. ', v) end')
    w('local stored_t = false')
    move_body(w, function(s) return 's' .. s end, true)
    w('return pack_(' .. form .. ', granule_end, ' .. list .. '), nil, granule ~= granule_end')
    w('end end')
  end
  w('local ok, e, v, m, latest, granule, t, k, ' .. list .. ', after')
  -- The epoch of the latest exposure when it is of the first's variant (false: unknown or not).
  w('local le = false')
  w('local b4 = byte_(raw, 4) or 0')
  w('if b4 >= 192 then')  -- [brief]
  w('ok, e, v, granule, ' .. list .. ', after = pcall_(unpack_, BRIEF, raw)')
  w('if not ok or after ~= #raw + 1 then return false end')
  -- [brief] Its latest exposure is its first: the common cell stays brief.
  own_cell('-e', '-e', 'BRIEF, e, v')
  w('e, m, t, le = -e, 0, 0, -e')
  w('local by_e = stratum_names[e]')
  w('latest = by_e and by_e[v] or stratum_name(e, v)')
  -- [ramped] Its own branch and its own copy of the move, so that the brief form's common cell
  -- runs exactly the instructions it ran before this form; the copy is compiled only for a
  -- batch that has ramped records (`ramped`; bench/README.md). (Not ramped, by its length: a
  -- brief record of an epoch >= OFFSET, which `unit_of` reads.)
  w('elseif b4 >= 128 then')
  if not ramped then
    -- [ramped] Without the ramped form's code (a batch whose first records hold none, most of
    -- them before a ramp step): the first ramped record compiles it (`again`, flush.lua).
    w('return again(raw, b, C)')
  else
    w('ok, e, v, le, granule, ' .. list .. ', after = pcall_(unpack_, RAMPED, raw)')
    w(string.format('if not ok or after ~= #raw + 1 or e >= -%d or le < 1 then return false end', OFFSET))
    w(string.format('local fe = -%d - e', OFFSET))
    -- [ramped] After a ramp step, a returning unit's common cell: its latest epoch's stratum.
    own_cell('le', 'fe', 'RAMPED, e, v, le')
    w('e, m, t = fe, 0, 0')
    w('local by_e = stratum_names[le]')
    w('latest = by_e and by_e[v] or stratum_name(le, v)')
  end
  w('else')
  w('ok, e, v, m, latest, granule, t, k, ' .. list .. ', after = pcall_(unpack_, RECORD, raw)')
  w('if not ok or k ~= KS or after ~= #raw + 1 then return false end')
  w('if m == 0 and t == 0 and e > 0 then le = latest_epoch(latest, v) or false end')  -- (not a held unit)
  w('end')
  w('if m ~= 0 or C[b + 4] >= 2 then return false end')
  -- A unit without an exposure yet (its outcomes came first) is moved in the cell's stratum,
  -- and takes the cell's (e, v) as its first exposure when the cell has one.
  w('local se, sv = e, v')
  w('if e == 0 then se, sv = C[b + 2], C[b + 3] if C[b + 5] > 0 then e, v = se, sv end')
  w('elseif C[b + 5] > 0 and C[b + 3] ~= v then return false end')
  w('if ' .. checks .. ' then return false end')  -- not finite: unit_of refuses it
  w('local by_v = acc_of[se]')
  w('local acc = by_v and by_v[sv]')
  w('if not acc then local _ _, acc = stratum(se, sv) end')
  w('local n1 = s1 + C[b + 5]')
  w('local stored_t = false')
  move_body(w, function(s) return 's' .. s end)
  w('local pointer = nil')
  w('if C[b + 4] == 1 then')
  w('local by_e = stratum_names[C[b + 2]]')
  w('local p = by_e and by_e[C[b + 3]] or stratum_name(C[b + 2], C[b + 3])')
  w('if p ~= latest then latest, pointer = p, p end')
  w('le = C[b + 3] == v and C[b + 2]')
  w('end')
  w('if t == 0 and e > 0 and le then')  -- [brief], [ramped] (m is 0 here)
  w('if le == e then')
  w('return pack_(BRIEF, -e, v, granule_end, ' .. list .. '), pointer, granule ~= granule_end')
  w(string.format('elseif e < %d and le >= 1 and le < %d then', OFFSET, 2 ^ 31))
  w(string.format('return pack_(RAMPED, -%d - e, v, le, granule_end, ', OFFSET) .. list .. '), pointer, granule ~= granule_end')
  w('end end')
  w('return pack_(RECORD, e, v, m, latest, granule_end, t, KS, ' .. list .. '), pointer, granule ~= granule_end')
  w('end')
  return table.concat(out, '\n')
end

-- `move` is compiled when a cell first needs it: a batch whose units all take `move_record`
-- (returning units, the common case) compiles only that (compiling was 0.1 µs an event).
-- record_mover(ramped): the chunk that makes `move_record` (flush.lua, once the strata and the granule
-- exist), with the ramped form's code or without it; nil: none.
local record_mover = nil
if loadstring then
  local plain_move = move
  move = function(...)
    local chunk = loadstring(move_source(), 'move')
    move = chunk and chunk(counted_at, cap_at, set_more, order, HUGE) or plain_move
    return move(...)
  end
  if not cov_n and nmore == 0 and KS <= 60 then  -- (Lua 5.1: at most 200 locals, 250 registers)
    record_mover = function(ramped) return loadstring(move_record_source(ramped), 'move_record') end
  end
end

-- [legacy] A bare state, stored alone: MessagePack (Redis' cmsgpack).
local function encode_state(state)
  return cmsgpack.pack(state)
end

-- [faults] Anonymous requests (latest == 2: no unit id, each its own unit) keep no unit
-- state: their cell is complete in itself. Unless an outcome came with them: then the
-- state is kept, so that a later outcome for the same request id extends it.
-- [anonymous] An anonymous unit has exactly one exposure, so its n_u is 1 whatever the
-- order of batches: a cell of its outcomes alone (latest == 3, the request id said it
-- was anonymous) finds no state when the exposure came in an earlier batch, and takes
-- n_u = 1, not 0 (sum_xn was missing x_u); the exposure's cell adds the unit and its one
-- exposure itself, whether its outcomes came before or after.
-- The built-ins (the first batch.builtins metrics, `nbuiltin`; 2 in batches from before
-- slow_requests) are measured by the router, not outcomes.
local function keeps_state(b)
  if C[b + 4] ~= 2 then return true end
  for i = nbuiltin + 1, nbm do
    if C[b + n_at[i]] > 0 then return true end
  end
  return false
end
