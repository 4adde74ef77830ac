-- unit_state.lua: one unit's stored state [n_u, x_u(m1), ...] and how a cell moves it.
-- Expects: the batch layout (ncol, nbm, bcol, bbin, nbuiltin), [cuped] cov_i, cov_j,
-- cov_flag, cov_time, [cap] capped; and num, finite (numbers.lua).
--
-- One cell: {unit_hash, epoch, variant, latest, dn, dx_1, count_1, dx_2, count_2, ...}
-- in the order of batch.metrics, and the unit's stored state (or false). Moves the state
-- and adds the exact change of every sufficient statistic to the stratum's totals:
-- d(x^2) = x1^2 - x0^2, d(xn) = x1*n1 - x0*n0. Returns the new state, encoded, or nil
-- when the stored state is not an array of numbers (then nothing may be written).
-- The state of a unit with none stored. Never moved: every new state is a new table.
local EMPTY = {0}

-- `state` when it is a non-empty array of finite numbers, else nil.
local function valid_table(state)
  if type(state) ~= 'table' or #state == 0 then return nil end
  for j = 1, #state do
    if type(state[j]) ~= 'number' or not finite(state[j]) then return nil end
  end
  return state
end

local function valid_state(raw)
  if not raw then return EMPTY end
  -- A JSON array (states written before MessagePack) or a MessagePack array.
  local ok, state = pcall(string.byte(raw, 1) == 91 and cjson.decode or cmsgpack.unpack, raw)
  if not ok then return nil end
  return valid_table(state)
end

-- The unit's state after the cell: n and every column's x_u; and the report time of a
-- covariate value the cell set (nil if none).
local function next_state(cell, state, key)
  local reported = nil
  -- Built whole by one constructor (an array of ncol + 1 slots): grown one column at a
  -- time, Lua re-allocated it at every power of two.
  local x1 = {cell[5] + state[1], unpack(state, 2, ncol + 1)}
  for j = #state + 1, ncol + 1 do x1[j] = 0 end
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
  for k = 1, #capped do
    local c = capped[k]
    if x1[c[1]] > c[2] then x1[c[1]] = c[2] end
  end
  -- [/cap]
  return x1, reported
end

-- MessagePack (Redis' cmsgpack): doubles are stored as their 8 (or 4, when exact) bytes,
-- so a state round-trips exactly, and packing is C, where formatting 17 digits per
-- column in Lua was a fifth of the script's CPU. States written as JSON still decode.
local function encode_state(state)
  for j = #state + 1, ncol + 1 do state[j] = 0 end
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

local function with_n(state, n)
  local out = {n}
  for j = 2, #state do out[j] = state[j] end
  return out
end
