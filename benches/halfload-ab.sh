#!/usr/bin/env bash
# Latency A/B of two Tollgate builds on the plain route at a fixed open-loop rate (oha -q 16000, 64
# connections, 6 s after a 2 s warm-up), interleaved over 3 rounds: p50/p99 of each. Usage:
# OLD_BIN=/tmp/tollgate-old [NEW_BIN=target/release/tollgate] benches/halfload-ab.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
export NO_BUILD=1
source benches/bench-lib.sh 1 1
export PATH="$HOME/.cargo/bin:$PATH"
bench_start halfab
render backend.nginx.conf
taskset -c 0 nginx -c "$RUN/backend.nginx.conf" -p "$RUN" & PIDS+=($!)
wait_port 9001
tollgate_configs
for round in 1 2 3; do
  for b in "${OLD_BIN:?OLD_BIN=path of the older build}" "${NEW_BIN:-target/release/tollgate}"; do
    taskset -c 1 "$b" run -c "$RUN/plain.yaml" >/dev/null 2>&1 & P=$!
    wait_port 8002
    taskset -c 0 oha --no-tui -z 2s -c 64 http://127.0.0.1:8002/ >/dev/null
    r=$(taskset -c 0 oha --no-tui -z 6s -c 64 -q 16000 --latency-correction http://127.0.0.1:8002/ | awk '/50.00% in/ {p50=$3} /99.00% in/ {p99=$3} /Success rate/ {s=$3} END {print "p50", p50, "p99", p99, "ok", s}')
    echo "round $round $b: $r"
    kill $P; wait $P 2>/dev/null || true
    sleep 1
  done
done
