-- numbers.lua: numbers as Redis must see them. Pure.
--
-- Every number that reaches Redis must be finite: HINCRBYFLOAT fails on an
-- infinite result, and a state holding inf or nan poisons every later batch of its unit.
local function finite(x)
  return x == x and x ~= math.huge and x ~= -math.huge
end

-- 17 significant digits: the stored per-unit state round-trips exactly (cjson.encode
-- would keep only 14). Zero, the most common value, skips string.format.
local function num(x)
  if x == 0 then return '0' end
  return string.format('%.17g', x)
end
