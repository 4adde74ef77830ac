-- columns.lua: the column order of unit states (the `metrics` key).
-- Expects: metrics_key.
--
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
