#!/usr/bin/env bash
# CPU profile of the floor and of Tollgate's plain and full routes under the load of load.sh (same
# backend, same configs, proxy alone on CPU 1 with one worker, wrk -t1 -c64 on CPU 0), one after the
# other: per target a 2 s warm-up, then `perf record -g` on the proxy for SECONDS while wrk runs. Prints
# each target's CPU µs/request (from /proc, as load.sh) and the top symbols by self time, and leaves the
# perf.data files in $PROFILE_OUT (default /tmp/tollgate-profile) for `perf report -i`.
#
# Usage: benches/profile.sh [SECONDS] [TOP]     (defaults: 10 s, 30 symbols)
# NO_BUILD=1 TOLLGATE_BIN=... profiles a binary built earlier (an A/B); see bench_start. TARGETS picks
# some of "floor tollgate-plain tollgate-full"; PERF_CALLGRAPH="--call-graph dwarf" gives user-space
# callers (the release build keeps no frame pointers, so `-g` call chains stop at the first Rust frame).
# Needs perf (Debian: linux-perf) and wrk. Loopback only; every run is bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
PSECS=${1:-10}
TOP=${2:-30}
source benches/bench-lib.sh 1 "$PSECS"
OUT=${PROFILE_OUT:-/tmp/tollgate-profile}
mkdir -p "$OUT"

bench_tools
have perf || { step "installing perf"; apt_install linux-perf; }
bench_start profile floor

render backend.nginx.conf
taskset -c 0 nginx -c "$RUN/backend.nginx.conf" -p "$RUN" & PIDS+=($!)
wait_port 9001
taskset -c 1 "$FLOOR" 127.0.0.1:8004 127.0.0.1:9001 2>"$RUN/logs/floor.err" & PIDS+=($!); FLOOR_PID=$!
tollgate_configs
RUST_LOG=warn taskset -c 1 "$BIN" run -c "$RUN/plain.yaml" 2>"$RUN/logs/plain.err" & PIDS+=($!); PLAIN=$!
RUST_LOG=warn taskset -c 1 "$BIN" run -c "$RUN/full.yaml" 2>"$RUN/logs/full.err" & PIDS+=($!); FULL=$!
wait_port 8004; wait_port 8002; wait_port 8003
TOKEN=$("$BIN" token -c "$RUN/full.yaml" --sub bench-user --ttl 1h)

declare -A URL=([floor]="http://127.0.0.1:8004/" [tollgate-plain]="http://127.0.0.1:8002/" \
                [tollgate-full]="http://127.0.0.1:8003/")
declare -A PID=([floor]=$FLOOR_PID [tollgate-plain]=$PLAIN [tollgate-full]=$FULL)
for name in ${TARGETS:-floor tollgate-plain tollgate-full}; do
  hdr=()
  [ "$name" = tollgate-full ] && hdr=(-H "Authorization: Bearer $TOKEN")
  taskset -c 0 wrk -t1 -c$CONNS -d2s "${hdr[@]}" "${URL[$name]}" >/dev/null
  pid=${PID[$name]}
  # wrk runs a second longer than perf on each side, so every sample is under load.
  taskset -c 0 wrk -t1 -c$CONNS -d"$((PSECS + 2))s" "${hdr[@]}" "${URL[$name]}" > "$RUN/wrk.out" &
  WRK=$!
  sleep 1
  before=$(ticks "$pid")
  # shellcheck disable=SC2086
  perf record -q ${PERF_CALLGRAPH:--g} -o "$OUT/$name.data" -p "$pid" -- sleep "$PSECS" 2>/dev/null
  after=$(ticks "$pid")
  wait "$WRK"
  rps=$(awk '/Requests\/sec/ {print $2}' "$RUN/wrk.out")
  # Requests during the perf window, from wrk's rate over its whole run.
  cpu=$(awk -v t=$((after - before)) -v hz="$HZ" -v r="$rps" -v s="$PSECS" 'BEGIN {printf "%.2f", t / hz * 1e6 / (r * s)}')
  step "$name: $rps req/s, ~$cpu µs CPU/request (perf attached), top $TOP symbols by self time"
  perf report -q -i "$OUT/$name.data" --no-children -g none --sort dso,symbol --percent-limit 0.3 \
    2>/dev/null > "$OUT/$name.txt" || true
  sed -e 's/[[:space:]]*-[[:space:]]*-[[:space:]]*$//' -e '/^[[:space:]]*$/d' "$OUT/$name.txt" \
    | awk -v n="$TOP" 'NR <= n'
done
echo
echo "perf data: $OUT/{floor,tollgate-plain,tollgate-full}.data  (perf report -i FILE --no-children)"
