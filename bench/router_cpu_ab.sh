#!/usr/bin/env bash
# router_cpu_ab.sh - the router's CPU time per HTTP/1.1 request, builds side by side, alternating.
#
#   flock /tmp/abrouter-bench.lock bench/router_cpu_ab.sh TREE_A TREE_B [TREE...]
#
# Each TREE is a directory whose `abrouter` is imported (a checkout built in place with
# `pip install -e .`, or a wheel unpacked as run_router_bench.sh does; the venv's own editable
# install is set aside: bench/in_tree.py). For ROUNDS rounds, each tree in turn: the router (`abrouter serve`,
# event log on, its own Redis) on core 0, the shared harness's nginx upstreams and
# `wrk -t1 -c64 -s post.lua` (POST /predict, a random X-User-Id) on core 1, DURATION s after
# a WARMUP s warm-up; prints the router's CPU time (utime + stime from /proc) per request
# wrk completed. On a shared machine requests per second move with the other processes'
# load; the CPU a request costs moves much less (it is still slowed by their cache misses,
# so compare trees only within one run, alternating). Everything on 127.0.0.1, bounded.
#
# Knobs (env): ROUNDS (3), DURATION (8), WARMUP (3), CONNS (64), EVENT_LOG (1), PY
# (<repo>/.venv/bin/python), REDIS_SERVER (<repo>/.venv/bin/redis-server, else PATH),
# HARNESS_DIR (<repo>/../shared/bench), OUT (a temp dir).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HARNESS_DIR=${HARNESS_DIR:-"$ROOT/../shared/bench"}
PY=${PY:-"$ROOT/.venv/bin/python"}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
WARMUP=${WARMUP:-3}
CONNS=${CONNS:-64}
EVENT_LOG=${EVENT_LOG:-1}
if [[ -z "${REDIS_SERVER:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/redis-server" ]]; then REDIS_SERVER="$ROOT/.venv/bin/redis-server"
  else REDIS_SERVER=$(command -v redis-server); fi
fi
(( $# >= 2 )) || { sed -n '2,4p' "$0"; exit 2; }
OUT=${OUT:-$(mktemp -d /tmp/router-cpu-ab.XXXXXX)}
mkdir -p "$OUT/tmp" "$OUT/logs"

free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
A=$(free_port); B=$(free_port); R=$(free_port); P=$(free_port)
sed -e "s#@RUN@#$OUT#g" -e "s#@PORT_A@#$A#g" -e "s#@PORT_B@#$B#g" "$HARNESS_DIR/conf/upstream-nginx.conf.in" > "$OUT/nginx.conf"
cat > "$OUT/exp.yaml" <<EOF
name: cpu-ab
unit: {header: X-User-Id}
variants:
  - {name: a, upstream: "http://127.0.0.1:$A", weight: 50}
  - {name: b, upstream: "http://127.0.0.1:$B", weight: 50}
EOF
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT
taskset -c 1 nginx -p "$OUT" -e "$OUT/logs/err.log" -c "$OUT/nginx.conf" > "$OUT/logs/nginx.log" 2>&1 & PIDS+=($!)
taskset -c 1 "$REDIS_SERVER" --bind 127.0.0.1 --port "$R" --save '' --appendonly no --dir "$OUT" > "$OUT/logs/redis.log" 2>&1 & PIDS+=($!)
sleep 1

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
printf 'uptime: %s\n' "$(uptime)"
printf '%-5s %-50s %10s %10s %12s\n' round tree requests req/s "cpu us/req"
for round in $(seq "$ROUNDS"); do
  for tree in "$@"; do
    log_flag=(--redis-url "redis://127.0.0.1:$R/0"); [[ "$EVENT_LOG" == 1 ]] || log_flag=(--no-event-log)
    taskset -c 0 "$PY" "$ROOT/bench/in_tree.py" "$tree" -m abrouter --log-level WARNING serve --config "$OUT/exp.yaml" \
      --host 127.0.0.1 --port "$P" --spill-dir "$OUT/spill" "${log_flag[@]}" > "$OUT/logs/router.log" 2>&1 &
    router=$!
    for _ in $(seq 100); do "$PY" -c "import socket; socket.create_connection(('127.0.0.1', $P), 0.2)" 2>/dev/null && break; sleep 0.2; done
    taskset -c 1 wrk -t1 -c"$CONNS" -d"${WARMUP}s" -s "$HARNESS_DIR/wrk/post.lua" "http://127.0.0.1:$P/predict" > /dev/null 2>&1
    before=$(cpu_ticks "$router")
    result=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" -s "$HARNESS_DIR/wrk/post.lua" "http://127.0.0.1:$P/predict" 2>&1 | grep BENCH_RESULT)
    after=$(cpu_ticks "$router")
    kill "$router"; wait "$router" 2>/dev/null || true
    requests=$(sed -n 's/.*requests=\([0-9]*\).*/\1/p' <<<"$result")
    rps=$(sed -n 's/.* rps=\([0-9.]*\).*/\1/p' <<<"$result")
    hz=$(getconf CLK_TCK)
    awk -v r="$round" -v t="$tree" -v n="$requests" -v rps="$rps" -v d=$((after - before)) -v hz="$hz" \
      'BEGIN { printf "%-5s %-50s %10d %10.0f %12.2f\n", r, t, n, rps, d / hz / n * 1e6 }'
  done
done
printf 'uptime: %s\n' "$(uptime)"
