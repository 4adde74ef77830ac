#!/usr/bin/env bash
# grpc_profile.sh - where a saturated router's CPU goes: py-spy of `abrouter serve --grpc-port`
# while bench/h2_load.py keeps 64 unary calls in flight.
#
#   bench/grpc_profile.sh OUT [TREE]      # TREE: a checkout with its own .venv (default: this one)
#   .venv/bin/python bench/spy_shares.py OUT 90
#
# Like grpc_bench.py's closed loop: the router (event log on) pinned to core 0; the echo upstream
# (h2_load.py --serve, both arms), a private redis-server and the load on core 1. An 8 s warm-up
# (its line: calls/s and the router's CPU over the window, so calls per core = calls_per_s /
# (proxy_cpu_s / window_s)), then 20 s under `py-spy record --native -r 200 -d 15 -f raw` (slower:
# py-spy takes CPU too). Runs hold /tmp/abrouter-bench.lock, so two never overlap. Ports:
# PORT_BASE (51001) .. PORT_BASE+4 on 127.0.0.1. py-spy is not a dependency: `pip install py-spy`.
set -euo pipefail
OUT=${1:?usage: grpc_profile.sh OUT [TREE]}
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TREE="$(cd "${2:-$HERE/..}" && pwd)"
PY="$HERE/../.venv/bin/python"
SPY=$(command -v py-spy || echo "$HERE/../.venv/bin/py-spy")
[[ -x "$SPY" ]] || { echo "grpc_profile.sh: no py-spy (pip install py-spy)" >&2; exit 2; }
B=${PORT_BASE:-51001}
exec 9>/tmp/abrouter-bench.lock
flock 9
TMP=$(mktemp -d)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; sleep 1; rm -rf "$TMP"' EXIT
cat > "$TMP/exp.yaml" <<YAML
name: grpc-profile
unit: {header: X-User-Id}
variants:
  - {name: control, upstream: "http://127.0.0.1:9", grpc_upstream: "127.0.0.1:$B", weight: 50}
  - {name: candidate, upstream: "http://127.0.0.1:9", grpc_upstream: "127.0.0.1:$((B + 1))", weight: 50}
metrics:
  - {name: conversion, kind: binary}
YAML
REDIS=$("$PY" -c 'from abrouter.router.redis_server import find_binary; print(find_binary())')
taskset -c 1 "$PY" "$HERE/h2_load.py" --serve "$B,$((B + 1))" > "$TMP/upstream.log" 2>&1 & PIDS+=($!)
taskset -c 1 "$REDIS" --bind 127.0.0.1 --port $((B + 2)) --save '' --appendonly no --dir "$TMP" > "$TMP/redis.log" 2>&1 & PIDS+=($!)
(cd "$TREE" && exec taskset -c 0 "$TREE/.venv/bin/python" -m abrouter --log-level WARNING serve --config "$TMP/exp.yaml" \
  --host 127.0.0.1 --port $((B + 3)) --grpc-port $((B + 4)) --spill-dir "$TMP/spill" \
  --redis-url "redis://127.0.0.1:$((B + 2))/0" > "$TMP/router.log" 2>&1) & RT=$!
PIDS+=($RT)
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$((B + 4))) 2>/dev/null && break; sleep 0.2; done
taskset -c 1 "$PY" "$HERE/h2_load.py" --target 127.0.0.1:$((B + 4)) --seconds 8 --concurrency 64 --cpu-pid "$RT"
taskset -c 1 "$PY" "$HERE/h2_load.py" --target 127.0.0.1:$((B + 4)) --seconds 20 --concurrency 64 --cpu-pid "$RT" & LD=$!
sleep 2
"$SPY" record --native -r 200 -d 15 -f raw -p "$RT" -o "$OUT" > /dev/null 2>&1
wait "$LD"
