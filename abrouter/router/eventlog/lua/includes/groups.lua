-- groups.lua: a batch's cells as runs of one unit each (batch format 7's order).
-- Expects: segs, seg_n, W (the cells, flush.lua).
--
-- [issue 15: version 7] The router sends each unit's cells one after another, the unit named by
-- its record field (h|u), so flush.lua reads a unit's record at the first cell of its run and
-- writes it after the last, with no map from unit to state. Cells that are not in runs (batch
-- formats before 7, or keyed outcomes folded into new cells of units that have others) are
-- put in runs here, once per batch: units in the order of their first cell, each unit's cells
-- in their order (so its first exposure is still its first cell with one), into one flat
-- array, each cell's unit with `suffix` appended (versions before 7 send h).
local function regroup(suffix)
  local runs, order_, nu = {}, {}, 0
  for si = 1, #segs do
    local seg = segs[si]
    for b = 0, (seg_n[si] - 1) * W, W do
      local h = seg[b + 1]
      local run = runs[h]
      if not run then
        run = {}
        runs[h] = run
        nu = nu + 1
        order_[nu] = h
      end
      run[#run + 1] = seg
      run[#run + 1] = b
    end
  end
  local flat, at = {}, 0
  for i = 1, nu do
    local h = order_[i]
    local run = runs[h]
    local unit = suffix and h .. suffix or h
    for r = 1, #run, 2 do
      local seg, b = run[r], run[r + 1]
      flat[at + 1] = unit
      for o = 2, W do flat[at + o] = seg[b + o] end
      at = at + W
    end
  end
  segs, seg_n = {flat}, {at / W}
end
