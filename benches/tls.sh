#!/usr/bin/env bash
# TLS benchmark: what HTTPS costs in Tollgate, and how that compares with nginx terminating TLS.
#
# Targets, measured interleaved on loopback with the method of ../shared/PERFORMANCE.md (the proxy alone
# on CPU 1 with one worker; wrk and the backend on CPU 0; CPU time per request from /proc):
#   tollgate-http        Tollgate, plain HTTP, keep-alive (the baseline)
#   tollgate-https       Tollgate, HTTPS, keep-alive (cost of encryption per request)
#   nginx-https          nginx, HTTPS, keep-alive
#   tollgate-handshake   Tollgate, HTTPS, a new connection (full TLS 1.3 handshake) per request
#   nginx-handshake      nginx, HTTPS, a new connection per request
# Same ECDSA P-256 certificate for both; TLS 1.3; no session resumption (wrk does not resume anyway).
#
# Usage: benches/tls.sh [ROUNDS] [SECONDS]     (defaults: 3 rounds of 8 s)
# Installs wrk, nginx and openssl when absent. Loopback only; every run is bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
source benches/bench-lib.sh "$@"

bench_tools
have openssl || apt_install openssl

bench_start tls   # builds the release binary ($BIN), makes $RUN, kills $PIDS on exit

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost -keyout "$RUN/key.pem" -out "$RUN/cert.pem" 2>/dev/null
render backend.nginx.conf
render tls.nginx.conf

step "starting the backend (CPU 0), nginx and tollgate (CPU 1)"
taskset -c 0 nginx -c "$RUN/backend.nginx.conf" -p "$RUN" & PIDS+=($!)
wait_port 9001
taskset -c 1 nginx -c "$RUN/tls.nginx.conf" -p "$RUN" & PIDS+=($!); NGINX=$!
wait_port 8444
cat > "$RUN/tollgate.yaml" <<YAML
server:
  listen: ["127.0.0.1:8002"]
  tls: { listen: ["127.0.0.1:8443"], cert: "$RUN/cert.pem", key: "$RUN/key.pem" }
  threads: 1
  access_log: { enabled: false }
  admin: { listen: "127.0.0.1:9102" }
  reload: { watch: false }
  upgrade_sock: "$RUN/tollgate.sock"
upstreams:
  backend: { targets: [{ addr: "127.0.0.1:9001" }] }
routes:
  - { name: plain, match: { path_prefix: / }, upstream: backend }
YAML
RUST_LOG=warn taskset -c 1 "$BIN" run -c "$RUN/tollgate.yaml" 2>"$RUN/logs/tollgate.err" & PIDS+=($!); TG=$!
wait_port 8002
wait_port 8443
sleep 1

declare -A URL=([tollgate-http]="http://127.0.0.1:8002/" [tollgate-https]="https://127.0.0.1:8443/" \
                [nginx-https]="https://127.0.0.1:8444/" [tollgate-handshake]="https://127.0.0.1:8443/" \
                [nginx-handshake]="https://127.0.0.1:8444/")
declare -A PID=([tollgate-http]=$TG [tollgate-https]=$TG [nginx-https]=$NGINX \
                [tollgate-handshake]=$TG [nginx-handshake]=$NGINX)
ORDER=(tollgate-http tollgate-https nginx-https tollgate-handshake nginx-handshake)
RESULTS="$RUN/results.tsv"
: > "$RESULTS"

wrk_run() { # name seconds
  local hdr=()
  [[ $1 == *handshake ]] && hdr=(-H "Connection: close")
  taskset -c 0 wrk -t1 -c$CONNS -d"${2}s" --latency "${hdr[@]}" "${URL[$1]}"
}

for round in $(seq 1 "$ROUNDS"); do
  for name in "${ORDER[@]}"; do
    wrk_run "$name" 2 >/dev/null
    before=$(ticks "${PID[$name]}")
    out=$(wrk_run "$name" "$SECS")
    after=$(ticks "${PID[$name]}")
    reqs=$(echo "$out" | awk '/requests in/ {print $1}')
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    p50=$(echo "$out" | awk '$1=="50%" {print $2}' | to_ms)
    p99=$(echo "$out" | awk '$1=="99%" {print $2}' | to_ms)
    errors=$(echo "$out" | awk '/Non-2xx/ {print $5}')
    [ -n "$errors" ] && { echo "$name: $errors non-2xx responses" >&2; exit 1; }
    cpu_us=$(awk -v t=$((after - before)) -v hz="$HZ" -v n="$reqs" 'BEGIN {printf "%.2f", t / hz * 1e6 / n}')
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$round" "$rps" "$p50" "$p99" "$cpu_us" >> "$RESULTS"
    printf '  round %s %-19s %10s req/s  p50 %6s ms  p99 %6s ms  cpu %7s us/req\n' "$round" "$name" "$rps" "$p50" "$p99" "$cpu_us"
  done
done

col() { awk -F'\t' -v n="$1" -v c="$2" '$1==n {print $c}' "$RESULTS" | median; }
echo
echo "Medians of $ROUNDS interleaved rounds of ${SECS}s, wrk -t1 -c$CONNS; proxy on 1 CPU, 1 worker."
echo
echo "| target | req/s | p50 ms | p99 ms | proxy CPU µs/req |"
echo "|---|---:|---:|---:|---:|"
for name in "${ORDER[@]}"; do
  printf '| %s | %.0f | %s | %s | %s |\n' "$name" "$(col "$name" 3)" "$(col "$name" 4)" "$(col "$name" 5)" "$(col "$name" 6)"
done
echo
awk -v a="$(col tollgate-https 6)" -v b="$(col tollgate-http 6)" 'BEGIN {printf "HTTPS keep-alive adds %.1f µs of CPU per request to Tollgate\n", a - b}'
awk -v a="$(col tollgate-handshake 6)" -v b="$(col nginx-handshake 6)" 'BEGIN {printf "a new TLS connection per request: Tollgate %.2f× nginx CPU\n", a / b}'
echo "tollgate peak RSS: $(( $(hwm "$TG") / 1024 )) MiB"
