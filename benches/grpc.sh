#!/usr/bin/env bash
# gRPC unary calls direct against through the gateway, interleaved in the same run
# (../shared/PERFORMANCE.md): a tonic `grpc.health.v1.Health` server (gateway/examples/grpc_load.rs) on
# CPU 0, Tollgate (release, one worker thread, h2c listener, h2c upstream) alone on CPU 1, the load
# client on CPU 0: 4 HTTP/2 connections × 16 calls in flight, unary `Health/Check`, for SECONDS after
# a 2 s warm-up. Per round and target: calls per second, p50/p99, and (through the gateway) its CPU
# time per call from /proc.
#
# Usage: benches/grpc.sh [ROUNDS] [SECONDS]   (defaults: 3 rounds of 8 s). Loopback only, bounded.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
source benches/bench-lib.sh "$@"

bench_tools
target=${CARGO_TARGET_DIR:-./target}
if [ -z "${NO_BUILD:-}" ]; then
  step "building tollgate and the grpc_load example (release)"
  cargo build --release --locked -p tollgate --bin tollgate --example grpc_load
fi
BIN=${TOLLGATE_BIN:-$target/release/tollgate}
LOAD=$target/release/examples/grpc_load
RUN=$(mktemp -d /tmp/tollgate-grpc.XXXXXX); mkdir -p "$RUN/logs"
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$RUN"' EXIT

taskset -c 0 "$LOAD" server 127.0.0.1:9401 & PIDS+=($!)
wait_port 9401
cat > "$RUN/grpc.yaml" <<YAML
server:
  listen: ["127.0.0.1:8401"]
  threads: 1
  h2c: true
  access_log: { enabled: false }
  admin: { listen: "127.0.0.1:9402" }
  reload: { watch: false }
  upgrade_sock: "$RUN/grpc.sock"
upstreams:
  health: { targets: [{ addr: "127.0.0.1:9401" }], protocol: h2c }
routes:
  - { name: health, match: { path_prefix: /grpc.health.v1.Health/ }, upstream: health }
YAML
RUST_LOG=warn taskset -c 1 "$BIN" run -c "$RUN/grpc.yaml" 2>"$RUN/logs/tollgate.err" & PIDS+=($!); GW=$!
wait_port 8401

RESULTS="$RUN/results.tsv"; : > "$RESULTS"
for round in $(seq 1 "$ROUNDS"); do
  for target in direct gateway; do
    url=http://127.0.0.1:9401; [ $target = gateway ] && url=http://127.0.0.1:8401
    taskset -c 0 "$LOAD" client "$url" 4 16 2 >/dev/null
    t0=$(ticks "$GW")
    out=$(taskset -c 0 "$LOAD" client "$url" 4 16 "$SECS")
    t1=$(ticks "$GW")
    calls=$(echo "$out" | sed -n 's/.*calls=\([0-9]*\).*/\1/p')
    errors=$(echo "$out" | sed -n 's/.*errors=\([0-9]*\).*/\1/p')
    rps=$(echo "$out" | sed -n 's/.*rps=\([0-9.]*\).*/\1/p')
    p50=$(echo "$out" | sed -n 's/.*p50_ms=\([0-9.]*\).*/\1/p')
    p99=$(echo "$out" | sed -n 's/.*p99_ms=\([0-9.]*\).*/\1/p')
    [ "$errors" = 0 ] || { echo "$target: $errors failed calls" >&2; exit 1; }
    cpu=-
    [ $target = gateway ] && cpu=$(awk -v t=$((t1 - t0)) -v hz="$HZ" -v n="$calls" 'BEGIN {printf "%.2f", t / hz * 1e6 / n}')
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$target" "$round" "$rps" "$p50" "$p99" "$cpu" >> "$RESULTS"
    printf '  round %s %-8s %9s calls/s  p50 %7s ms  p99 %7s ms  gateway cpu %s us/call\n' \
      "$round" "$target" "$rps" "$p50" "$p99" "$cpu"
  done
done
col() { awk -F'\t' -v n="$1" -v c="$2" '$1==n {print $c}' "$RESULTS" | median; }
echo
echo "Medians of $ROUNDS interleaved rounds of ${SECS}s; 4 connections × 16 calls in flight; gateway on 1 CPU."
echo
echo "| target | calls/s | p50 ms | p99 ms | gateway CPU µs/call |"
echo "|---|---:|---:|---:|---:|"
echo "| direct | $(col direct 3) | $(col direct 4) | $(col direct 5) | - |"
echo "| through Tollgate | $(col gateway 3) | $(col gateway 4) | $(col gateway 5) | $(col gateway 6) |"
