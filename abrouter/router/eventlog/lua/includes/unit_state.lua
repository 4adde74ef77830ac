-- unit_state.lua: one unit's state [n_u, x_u(m1), ...], its record, and how a cell moves it.
-- Expects: the batch layout (ncol, nbm, bcol, bbin, pcol, order, nbuiltin, and where a
-- cell holds each metric's value and count: dx_at, n_at, cell_end), [cuped] cov_i, cov_j,
-- cov_flag, [regression] more_covs, [cap] capped; and finite (numbers.lua).
--
-- One cell: {unit_hash, epoch, variant, latest, dn, ...}, then each batch metric's value
-- (c[dx_at[i]]) and event count (c[n_at[i]]; a built-in's is dn from version 4 on). Moving a state changes it in place and adds the exact
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

-- A unit's record (docs/storage.md), packed by `struct` (twice as fast as cmsgpack here,
-- doubles exact): its fixed part, then its state's length and that many doubles.
local RECORD_HEAD = '<i4sBsddH'
local HUGE = math.huge
local doubles, records = {}, {}  -- k -> the format of k doubles; of a record with k
local function formats(k)
  local f = doubles[k]
  if not f then
    f = '<' .. string.rep('d', k)
    doubles[k], records[k] = f, RECORD_HEAD .. string.rep('d', k)
  end
  return f, records[k]
end

-- e, v, multiple, latest, granule, covariate time, state; or nil when `raw` is no record.
local function unpack_record(raw)
  local ok, e, v, m, latest, granule, t, k, at = pcall(struct.unpack, RECORD_HEAD, raw)
  if not ok or k == 0 or at + 8 * k ~= #raw + 1 then return nil end
  local state = {struct.unpack((formats(k)), raw, at)}
  state[k + 1] = nil  -- struct.unpack's last value: where it stopped
  for j = 1, k do  -- doubles all: finite?
    local x = state[j]
    if x ~= x or x == HUGE or x == -HUGE then return nil end
  end
  for j = k + 1, ncol + 1 do state[j] = 0 end
  return e, v, m, latest, granule, t, state
end

local function pack_record(e, v, multiple, latest, granule, t, state)
  local k = #state
  local _, format = formats(k)
  return struct.pack(format, e, v, multiple, latest, granule, t, k, unpack(state))
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
-- [regression] Further covariates' columns are set by `set_more`, not the column loop.
for _, mc in ipairs(more_covs) do col_dx[mc[2] - 1], col_dx[mc[3] - 1] = false, false end
local nmore = #more_covs

-- [regression] State index `s` (column s - 1) of a unit counted with n_u = n1 set to `b`,
-- and the change added to the stratum's totals; false if `b` is not finite.
local function put(acc, state, s, b, n1)
  if b ~= b or b == HUGE or b == -HUGE then return false end
  local a, j, w1 = state[s], s - 1, n1 > 0 and 1 or 0
  acc.sum[j] = acc.sum[j] + w1 * (b - a)
  acc.sum_sq[j] = acc.sum_sq[j] + w1 * (b * b - a * a)
  acc.sum_xn[j] = acc.sum_xn[j] + (b - a) * n1
  state[s] = b
  return true
end

-- [regression] Each further covariate the cell carries is taken if the unit has none yet or
-- this one was reported earlier than the stored one (whose time its flag column holds).
-- Returns nil, or the column whose new value is not finite.
local function set_more(acc, state, c, n1)
  for q = 1, nmore do
    local mc = more_covs[q]
    if c[n_at[mc[1]]] > 0 then
      local t, stored = c[cell_end + mc[4]] or 0, state[mc[3]]
      if stored == 0 or (t > 0 and t < stored) then
        if not put(acc, state, mc[2], c[dx_at[mc[1]]], n1) then return order[mc[2] - 1] end
        put(acc, state, mc[3], t > 0 and t or 1, n1)
      end
    end
  end
  return nil
end

-- Moves `state` (in place) by cell `c`, n_u to `n1`, and adds the change to the stratum's
-- totals `acc`. [held] A unit's values count in the sums only once it has an exposure
-- (n_u > 0): an outcome that reaches Redis before its unit's exposure is held in the state
-- and credited, whole, when the exposure lands. [cuped] `stored_t`: the report time of the
-- covariate value the state holds. Returns true and the report time of a covariate value
-- the cell set (nil if none), or nil and the column whose new value is not finite (then
-- nothing may be written: the batch is refused).
local function move(acc, state, c, n1, stored_t)
  local n0 = state[1]
  local w0, w1 = n0 > 0 and 1 or 0, n1 > 0 and 1 or 0
  local events = acc.events
  for i = 1, nbm do
    local j = bcol[i]
    events[j] = events[j] + c[n_at[i]]
  end
  if n0 == 0 and n1 > 0 then acc.units = acc.units + 1 end
  acc.exposures = acc.exposures + (n1 - n0)
  acc.exposures_sq = acc.exposures_sq + n1 * n1 - n0 * n0
  local xy0 = nil  -- [issue 9] each ratio pair's x*y before the move
  if npairs > 0 then
    xy0 = {}
    for p = 1, npairs do xy0[p] = w0 * state[pcol[p][1] + 1] * state[pcol[p][2] + 1] end
  end
  -- [cuped] A covariate in this cell is kept if the unit had none or this one was
  -- reported earlier; else the stored value stays.
  local covariate, reported = false, nil
  if cov_n and c[cov_n] > 0 then
    local t = c[cov_t]
    covariate = state[cov_flag] == 0 or (t and stored_t and t < stored_t) or false
    if covariate then reported = t end
    covariate = covariate and 'take' or 'keep'
  end
  local sum, sum_sq, sum_xn = acc.sum, acc.sum_sq, acc.sum_xn
  for j = 1, ncol do
    local a = state[j + 1]
    local b = a
    local at = col_dx[j]
    if at then
      local dx = c[at]
      if j == cov_col and covariate then
        if covariate == 'take' then b = dx end
      elseif col_bin[j] then
        if dx > b then b = dx end
      else
        b = b + dx
      end
    end
    local cap = cap_at[j]  -- [cap]
    if cap and b > cap then b = cap end
    if a ~= 0 or b ~= 0 then
      if b ~= b or b == HUGE or b == -HUGE then return nil, order[j] end  -- [faults]
      sum[j] = sum[j] + (w1 * b - w0 * a)
      sum_sq[j] = sum_sq[j] + (w1 * b * b - w0 * a * a)
      sum_xn[j] = sum_xn[j] + (b * n1 - a * n0)
      state[j + 1] = b
    end
  end
  if nmore > 0 then  -- [regression] before the products: they take the new values
    local bad = set_more(acc, state, c, n1)
    if bad then return nil, bad end
  end
  state[1] = n1
  if xy0 then
    local sum_xy = acc.sum_xy
    for p = 1, npairs do sum_xy[p] = sum_xy[p] + (w1 * state[pcol[p][1] + 1] * state[pcol[p][2] + 1] - xy0[p]) end
  end
  return true, reported
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
local function keeps_state(c)
  if c[4] ~= 2 then return true end
  for i = nbuiltin + 1, nbm do
    if c[n_at[i]] > 0 then return true end
  end
  return false
end
