#!/usr/bin/env bash
# Composition cost: the gateway's CPU for one composed request of 3 calls against 3 plain proxied
# requests, measured interleaved in the same run (../shared/PERFORMANCE.md), proxy alone on CPU 1 with
# one worker thread, backend nginx and wrk on CPU 0.
#
# One tollgate serves both routes: `/plain` proxies to the backend; `/composed` makes three independent
# GET calls to the same backend and merges their JSON. Per round: 2 s warm-up, then wrk -t1 -c64 for
# SECONDS on each; CPU µs per request from /proc. The figure is composed ÷ (3 × plain): what a composed
# call costs against the three round trips a client would otherwise make through the gateway.
#
# Usage: benches/compose.sh [ROUNDS] [SECONDS]   (defaults: 3 rounds of 8 s). Loopback only, bounded.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
source benches/bench-lib.sh "$@"

bench_tools
bench_start compose
render backend.nginx.conf
taskset -c 0 nginx -c "$RUN/backend.nginx.conf" -p "$RUN" & PIDS+=($!)
wait_port 9001
cat > "$RUN/compose.yaml" <<YAML
server:
  listen: ["127.0.0.1:8005"]
  threads: 1
  access_log: { enabled: false }
  admin: { listen: "127.0.0.1:9105" }
  reload: { watch: false }
  upgrade_sock: "$RUN/compose.sock"
upstreams:
  backend: { targets: [{ addr: "127.0.0.1:9001" }] }
routes:
  - { name: plain, match: { path: /plain }, upstream: backend }
  - name: composed
    match: { path: /composed }
    compose:
      calls:
        a: { upstream: backend, path: /a }
        b: { upstream: backend, path: /b }
        c: { upstream: backend, path: /c }
YAML
RUST_LOG=warn taskset -c 1 "$BIN" run -c "$RUN/compose.yaml" 2>"$RUN/logs/compose.err" & PIDS+=($!); GW=$!
wait_port 8005
curl -sf http://127.0.0.1:8005/composed | grep -q '"c":{"id":1' || { echo "composed route broken" >&2; exit 1; }

RESULTS="$RUN/results.tsv"; : > "$RESULTS"
for round in $(seq 1 "$ROUNDS"); do
  for path in plain composed; do
    taskset -c 0 wrk -t1 -c$CONNS -d2s "http://127.0.0.1:8005/$path" >/dev/null
    before=$(ticks "$GW")
    out=$(taskset -c 0 wrk -t1 -c$CONNS -d"${SECS}s" --latency "http://127.0.0.1:8005/$path")
    after=$(ticks "$GW")
    reqs=$(echo "$out" | awk '/requests in/ {print $1}')
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    p99=$(echo "$out" | awk '$1=="99%" {print $2}' | to_ms)
    non2xx=$(echo "$out" | awk '/Non-2xx/ {print $5}')
    [ -n "$non2xx" ] && { echo "$path: $non2xx non-2xx responses" >&2; exit 1; }
    cpu=$(awk -v t=$((after - before)) -v hz="$HZ" -v n="$reqs" 'BEGIN {printf "%.2f", t / hz * 1e6 / n}')
    printf '%s\t%s\t%s\t%s\t%s\n' "$path" "$round" "$rps" "$p99" "$cpu" >> "$RESULTS"
    printf '  round %s %-9s %10s req/s  p99 %6s ms  cpu %7s us/req\n' "$round" "$path" "$rps" "$p99" "$cpu"
  done
  p=$(awk -F'\t' -v r="$round" '$1=="plain" && $2==r {print $5}' "$RESULTS")
  c=$(awk -F'\t' -v r="$round" '$1=="composed" && $2==r {print $5}' "$RESULTS")
  printf '  round %s composed ÷ (3 × plain), CPU: %s×\n' "$round" "$(awk -v c="$c" -v p="$p" 'BEGIN {printf "%.3f", c / (3 * p)}')"
  printf 'ratio\t%s\t%s\n' "$round" "$(awk -v c="$c" -v p="$p" 'BEGIN {printf "%.3f", c / (3 * p)}')" >> "$RESULTS"
done
col() { awk -F'\t' -v n="$1" -v c="$2" '$1==n {print $c}' "$RESULTS" | median; }
echo
echo "Medians of $ROUNDS interleaved rounds of ${SECS}s, wrk -t1 -c$CONNS; gateway on 1 CPU, 1 worker."
echo
echo "| route | req/s | p99 ms | gateway CPU µs/req |"
echo "|---|---:|---:|---:|"
for path in plain composed; do
  echo "| $path | $(col "$path" 3) | $(col "$path" 4) | $(col "$path" 5) |"
done
echo
echo "composed ÷ (3 × plain), CPU per request, median of the per-round ratios: $(col ratio 3)×"
