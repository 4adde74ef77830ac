-- gaps.lua: the exactly-once guard on (producer, seq), and the seqs a producer skipped.
-- Expects: producers, producer (the command's KEYS/ARGV locals).
--
-- Skipped seqs. A seq a producer skipped (its batch was quarantined, or lost by
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

-- 1 when batch `seq` is to be applied, 0 when it already was (a duplicate), -1 when it
-- follows a gap after `last` and gaps are not allowed. Moves the gap ranges in memory
-- only; `save_gaps` writes them in phase 2.
local function admit(seq, last, allow_gap)
  if seq <= last then
    local filled = nil
    for i, r in ipairs(load_gaps()) do
      if seq >= r[1] and seq <= r[2] then filled = i end
    end
    if not filled then return 0 end
    local r = table.remove(gaps, filled)
    if r[1] < seq then table.insert(gaps, filled, {r[1], seq - 1}); filled = filled + 1 end
    if seq < r[2] then table.insert(gaps, filled, {seq + 1, r[2]}) end
    gaps_changed = true
  elseif seq ~= last + 1 then
    if not allow_gap then return -1 end
    local g = load_gaps()
    g[#g + 1] = {last + 1, seq - 1}
    gaps_changed = true
  end
  return 1
end

local function save_gaps()
  if not gaps_changed then return end
  if #gaps > 0 then redis.call('HSET', producers, gaps_field, cjson.encode(gaps))
  else redis.call('HDEL', producers, gaps_field) end
end
