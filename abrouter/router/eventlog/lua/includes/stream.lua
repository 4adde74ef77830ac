-- stream.lua: the capped audit stream, trimmed by raw events, not by batches.
-- Expects: stream, stream_n (KEYS[11]; nil from callers before it), meta, producer, batch.
--
-- Each entry's id and raw event count go into the list stream_n, and meta.stream_events
-- holds the events the stream keeps; the oldest entries are deleted until it keeps at
-- most `max_events` events in at most `max_entries` entries. Trimming by the current
-- batch's size (MAXLEN = cap / n) let one large batch cut the stream to a fraction of its
-- cap. A MAXLEN of twice the entry cap stays as a safety net for entries written before
-- the list existed.
local function append_stream(max_entries, max_events, seq_s, raw)
  if batch.n == 0 then return end
  if not stream_n then  -- a caller without the list: by entries at this batch's size, as before
    local maxlen = math.max(1, math.min(max_entries, math.ceil(max_events / batch.n)))
    redis.call('XADD', stream, 'MAXLEN', '~', tostring(maxlen), '*',
               'producer', producer, 'seq', seq_s, 'n', tostring(batch.n), 'events', raw)
    return
  end
  local id = redis.call('XADD', stream, 'MAXLEN', '~', tostring(2 * max_entries), '*',
                        'producer', producer, 'seq', seq_s, 'n', tostring(batch.n), 'events', raw)
  local entries = redis.call('RPUSH', stream_n, id .. ' ' .. batch.n)
  local kept = tonumber(redis.call('HGET', meta, 'stream_events') or '0') + batch.n
  while (kept > max_events or entries > max_entries) and entries > 1 do
    local old_id, n = string.match(redis.call('LPOP', stream_n), '^(%S+) (%d+)$')
    redis.call('XDEL', stream, old_id)
    kept, entries = kept - tonumber(n), entries - 1
  end
  redis.call('HSET', meta, 'stream_events', kept)
end
