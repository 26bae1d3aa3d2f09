#!/usr/bin/env bash
# Resilience under a failing target: two targets behind one upstream, one of them answering 503 to half
# of its requests (benches/nginx/flaky.nginx.conf), and the error rate the client sees with
#   off      no retry, no ejection (round robin: a quarter of the requests fail)
#   retry    retry: { attempts: 2, when: [503] }, no budget
#   budget   the same with budget: { percent: 20, min_per_second: 10 } (the default a platform would set)
#   eject    budget + outlier_detection: { consecutive_failures: 3, base_ejection: 1s, max_ejection: 5s }
# measured interleaved in the same run (../shared/PERFORMANCE.md): per round and config, 2 s warm-up
# then wrk -t1 -c64 for SECONDS; gateways on CPU 1 (one worker each, only the one under load is busy),
# nginx and wrk on CPU 0. Reported per config: client error rate (non-2xx ÷ requests), requests per
# second, and the load on the upstream (tries ÷ client requests, from tollgate_upstream_retries_total).
#
# Usage: benches/resilience.sh [ROUNDS] [SECONDS]   (defaults: 3 rounds of 8 s). Loopback only, bounded.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
source benches/bench-lib.sh "$@"

bench_tools
bench_start resilience
render flaky.nginx.conf
taskset -c 0 nginx -c "$RUN/flaky.nginx.conf" -p "$RUN" & PIDS+=($!)
wait_port 9201
wait_port 9202

CONFIGS=(off retry budget eject)
declare -A PORT=([off]=8211 [retry]=8212 [budget]=8213 [eject]=8214)
declare -A ADMIN=([off]=9211 [retry]=9212 [budget]=9213 [eject]=9214)
declare -A EXTRA=(
  [off]=""
  [retry]="retry: { attempts: 2, when: [503], backoff: 1ms, max_backoff: 5ms }"
  [budget]="retry: { attempts: 2, when: [503], backoff: 1ms, max_backoff: 5ms, budget: { percent: 20, min_per_second: 10 } }"
  [eject]="retry: { attempts: 2, when: [503], backoff: 1ms, max_backoff: 5ms, budget: { percent: 20, min_per_second: 10 } }
    outlier_detection: { consecutive_failures: 3, when: [5xx], base_ejection: 1s, max_ejection: 5s }"
)
declare -A GW
for c in "${CONFIGS[@]}"; do
  cat > "$RUN/$c.yaml" <<YAML
server:
  listen: ["127.0.0.1:${PORT[$c]}"]
  threads: 1
  access_log: { enabled: false }
  admin: { listen: "127.0.0.1:${ADMIN[$c]}" }
  reload: { watch: false }
  upgrade_sock: "$RUN/$c.sock"
upstreams:
  pair:
    targets: [{ addr: "127.0.0.1:9201" }, { addr: "127.0.0.1:9202" }]
    ${EXTRA[$c]}
routes:
  - { name: r, match: { path_prefix: / }, upstream: pair }
YAML
  RUST_LOG=error taskset -c 1 "$BIN" run -c "$RUN/$c.yaml" 2>"$RUN/logs/$c.err" & PIDS+=($!); GW[$c]=$!
done
for c in "${CONFIGS[@]}"; do wait_port "${PORT[$c]}"; done

retries() {
  curl -sf "http://127.0.0.1:${ADMIN[$1]}/metrics" \
    | awk '/^tollgate_upstream_retries_total/ {s += $2} END {print s + 0}'
}

RESULTS="$RUN/results.tsv"; : > "$RESULTS"
for round in $(seq 1 "$ROUNDS"); do
  for c in "${CONFIGS[@]}"; do
    url="http://127.0.0.1:${PORT[$c]}/"
    taskset -c 0 wrk -t1 -c$CONNS -d2s "$url" >/dev/null
    r0=$(retries "$c")
    t0=$(ticks "${GW[$c]}")
    out=$(taskset -c 0 wrk -t1 -c$CONNS -d"${SECS}s" "$url")
    t1=$(ticks "${GW[$c]}")
    r1=$(retries "$c")
    reqs=$(echo "$out" | awk '/requests in/ {print $1}')
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    bad=$(echo "$out" | awk '/Non-2xx/ {print $5}')
    bad=${bad:-0}
    err=$(awk -v b="$bad" -v n="$reqs" 'BEGIN {printf "%.2f", 100 * b / n}')
    load=$(awk -v r=$((r1 - r0)) -v n="$reqs" 'BEGIN {printf "%.3f", (n + r) / n}')
    cpu=$(awk -v t=$((t1 - t0)) -v hz="$HZ" -v n="$reqs" 'BEGIN {printf "%.2f", t / hz * 1e6 / n}')
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$c" "$round" "$err" "$rps" "$load" "$cpu" >> "$RESULTS"
    printf '  round %s %-7s errors %6s %%  %10s req/s  upstream tries per request %s  cpu %s us/req\n' \
      "$round" "$c" "$err" "$rps" "$load" "$cpu"
  done
done
col() { awk -F'\t' -v n="$1" -v c="$2" '$1==n {print $c}' "$RESULTS" | median; }
echo
echo "Medians of $ROUNDS interleaved rounds of ${SECS}s, wrk -t1 -c$CONNS; one of two targets fails 50 %."
echo
echo "| config | client errors % | req/s | upstream tries per request | gateway CPU µs/req |"
echo "|---|---:|---:|---:|---:|"
for c in "${CONFIGS[@]}"; do
  echo "| $c | $(col "$c" 3) | $(col "$c" 4) | $(col "$c" 5) | $(col "$c" 6) |"
done
