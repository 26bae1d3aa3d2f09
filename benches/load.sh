#!/usr/bin/env bash
# Load benchmark: the backend direct, the floor (a bare Pingora proxy of the same version and build
# profile, benches/floor), Tollgate on a plain route, Tollgate on a full route (JWT HS256 + local rate
# limit + metrics + access log), and nginx as a plain reverse proxy, measured interleaved
# (A B C D E, A B C D E, ...) on loopback, with the method of ../shared/PERFORMANCE.md:
#
# - the proxy under test runs alone on CPU 1 with one worker thread; wrk and the backend share CPU 0;
# - per target and round: 2 s warm-up, then a measured wrk run (-t1 -c64 --latency);
# - the proxy's CPU time per request comes from /proc (utime + stime of its processes, before and after,
#   divided by the requests wrk completed), the figure that holds on a noisy machine;
# - each round prints Tollgate plain ÷ floor and full ÷ floor (CPU per request, that round's pair), the
#   summary the medians of those per-round ratios; also ÷ floor-timeouts, the floor with Tollgate's
#   default timeouts (`floor-proxy --timeouts`), which tells Pingora's cost of timeouts apart;
# - peak RSS is VmHWM of the proxy's processes; Tollgate's idle RSS is read before any load;
# - then, per proxy, an open-loop run at half of its median peak rate (oha -q) for p50/p99 at half load.
#
# Usage: benches/load.sh [ROUNDS] [SECONDS]     (defaults: 3 rounds of 8 s)
# Installs wrk, nginx and oha when absent. Loopback only; every run is bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
source benches/bench-lib.sh "$@"

bench_tools
if ! have oha; then
  step "installing oha (cargo install, once)"
  cargo install oha --locked --quiet
fi
export PATH="$HOME/.cargo/bin:$PATH"

bench_start load floor   # builds $BIN and the floor $FLOOR (release), makes $RUN, kills $PIDS on exit

render backend.nginx.conf
render nginx.conf

step "starting the backend (CPU 0), nginx, the floor and two tollgates (CPU 1)"
taskset -c 0 nginx -c "$RUN/backend.nginx.conf" -p "$RUN" & PIDS+=($!)
wait_port 9001
taskset -c 1 nginx -c "$RUN/nginx.conf" -p "$RUN" & PIDS+=($!); NGINX_MASTER=$!
wait_port 8001
taskset -c 1 "$FLOOR" 127.0.0.1:8004 127.0.0.1:9001 2>"$RUN/logs/floor.err" & PIDS+=($!); FLOOR_PID=$!
wait_port 8004
taskset -c 1 "$FLOOR" --timeouts 127.0.0.1:8005 127.0.0.1:9001 2>"$RUN/logs/floor-timeouts.err" & PIDS+=($!); FLOOR_T_PID=$!
wait_port 8005

tollgate_configs   # $RUN/plain.yaml (127.0.0.1:8002) and $RUN/full.yaml (127.0.0.1:8003), see bench-lib.sh
RUST_LOG=warn taskset -c 1 "$BIN" run -c "$RUN/plain.yaml" 2>"$RUN/logs/plain.err" & PIDS+=($!); PLAIN=$!
RUST_LOG=warn taskset -c 1 "$BIN" run -c "$RUN/full.yaml" 2>"$RUN/logs/full.err" & PIDS+=($!); FULL=$!
wait_port 8002
wait_port 8003
TOKEN=$("$BIN" token -c "$RUN/full.yaml" --sub bench-user --ttl 1h)
sleep 1
IDLE_RSS=$(awk '/VmRSS/ {print $2}' /proc/$PLAIN/status)

# name -> "url pid [header]"
declare -A URL=([direct]="http://127.0.0.1:9001/" [floor]="http://127.0.0.1:8004/" \
                [floor-timeouts]="http://127.0.0.1:8005/" \
                [tollgate-plain]="http://127.0.0.1:8002/" [tollgate-full]="http://127.0.0.1:8003/" \
                [nginx]="http://127.0.0.1:8001/")
declare -A PID=([direct]=0 [floor]=$FLOOR_PID [floor-timeouts]=$FLOOR_T_PID \
                [tollgate-plain]=$PLAIN [tollgate-full]=$FULL \
                [nginx]=$NGINX_MASTER)
ORDER=(direct floor floor-timeouts tollgate-plain tollgate-full nginx)
PROXIES=(floor tollgate-plain tollgate-full nginx)
RESULTS="$RUN/results.tsv"
RATIOS="$RUN/ratios.tsv"
: > "$RESULTS"; : > "$RATIOS"
# CPU µs/request of a target in one round.
round_cpu() { awk -F'\t' -v n="$1" -v r="$2" '$1==n && $2==r {print $6}' "$RESULTS"; }

# wrk output: requests, req/s, p50 and p99 in ms.
wrk_run() { # name seconds
  local name=$1 secs=$2 hdr=()
  [ "$name" = tollgate-full ] && hdr=(-H "Authorization: Bearer $TOKEN")
  taskset -c 0 wrk -t1 -c$CONNS -d"${secs}s" --latency "${hdr[@]}" "${URL[$name]}"
}

for round in $(seq 1 "$ROUNDS"); do
  for name in "${ORDER[@]}"; do
    wrk_run "$name" 2 >/dev/null
    pid=${PID[$name]}
    before=0; [ "$pid" != 0 ] && before=$(ticks "$pid")
    out=$(wrk_run "$name" "$SECS")
    after=0; [ "$pid" != 0 ] && after=$(ticks "$pid")
    reqs=$(echo "$out" | awk '/requests in/ {print $1}')
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    p50=$(echo "$out" | awk '$1=="50%" {print $2}' | to_ms)
    p99=$(echo "$out" | awk '$1=="99%" {print $2}' | to_ms)
    non2xx=$(echo "$out" | awk '/Non-2xx/ {print $5}')
    [ -n "$non2xx" ] && { echo "$name: $non2xx non-2xx responses" >&2; exit 1; }
    cpu_us="-"
    [ "$pid" != 0 ] && cpu_us=$(awk -v t=$((after - before)) -v hz="$HZ" -v n="$reqs" 'BEGIN {printf "%.2f", t / hz * 1e6 / n}')
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$round" "$rps" "$p50" "$p99" "$cpu_us" >> "$RESULTS"
    printf '  round %s %-15s %10s req/s  p50 %6s ms  p99 %6s ms  cpu %6s us/req\n' "$round" "$name" "$rps" "$p50" "$p99" "$cpu_us"
  done
  # This round's pair: the floor and Tollgate measured in the same minutes of the machine.
  f=$(round_cpu floor "$round"); p=$(round_cpu tollgate-plain "$round"); u=$(round_cpu tollgate-full "$round")
  t=$(round_cpu floor-timeouts "$round")
  read -r pf uf pt ut <<< "$(awk -v f="$f" -v p="$p" -v u="$u" -v t="$t" 'BEGIN {printf "%.3f %.3f %.3f %.3f", p / f, u / f, p / t, u / t}')"
  printf '%s\t%s\t%s\t%s\n' "$pf" "$uf" "$pt" "$ut" >> "$RATIOS"
  printf '  round %s vs floor (CPU): tollgate-plain %s×, tollgate-full %s×; vs floor-timeouts: %s×, %s×\n' \
    "$round" "$pf" "$uf" "$pt" "$ut"
done

col() { awk -F'\t' -v n="$1" -v c="$2" '$1==n {print $c}' "$RESULTS" | median; }

# Latency at half load: each proxy open-loop (oha -q) at half its median peak rate, and the backend
# direct at that same rate, so the difference is what the proxy adds at a realistic load.
declare -A HALF_P50 HALF_P99 ADDED_P99 HALF_RATE
oha_run() { # name rate -> "p50 p99" in ms
  local hdr=()
  [ "$1" = tollgate-full ] && hdr=(-H "Authorization: Bearer $TOKEN")
  taskset -c 0 oha --no-tui -z "${SECS}s" -c $CONNS -q "$2" --latency-correction "${hdr[@]}" "${URL[$1]}" \
    | awk '/50.00% in/ {p50=$3} /99.00% in/ {p99=$3} END {print p50, p99}'
}
HALF="$RUN/half.tsv"
: > "$HALF"
for round in $(seq 1 "$ROUNDS"); do
  for name in "${PROXIES[@]}"; do
    rate=$(awk -v r="$(col "$name" 3)" 'BEGIN {printf "%d", r / 2}')
    read -r d50 d99 <<< "$(oha_run direct "$rate")"
    read -r p50 p99 <<< "$(oha_run "$name" "$rate")"
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$rate" "$p50" "$p99" "$(awk -v a="$p99" -v b="$d99" 'BEGIN {printf "%.3f", a - b}')" >> "$HALF"
    printf '  half load round %s %-15s %6s req/s  p50 %s ms  p99 %s ms (direct p99 %s ms)\n' "$round" "$name" "$rate" "$p50" "$p99" "$d99"
  done
done
hcol() { awk -F'\t' -v n="$1" -v c="$2" '$1==n {print $c}' "$HALF" | median; }
for name in "${PROXIES[@]}"; do
  HALF_RATE[$name]=$(hcol "$name" 2); HALF_P50[$name]=$(hcol "$name" 3)
  HALF_P99[$name]=$(hcol "$name" 4); ADDED_P99[$name]=$(hcol "$name" 5)
done

echo
echo "Medians of $ROUNDS interleaved rounds of ${SECS}s, wrk -t1 -c$CONNS; proxy on 1 CPU, 1 worker."
echo
echo "| target | req/s | p50 ms | p99 ms | proxy CPU µs/req | vs floor (CPU) | vs nginx (CPU) | half load: rate, p50 / p99 ms, p99 added vs direct | peak RSS |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
NGX_CPU=$(col nginx 6); FLOOR_CPU=$(col floor 6)
for name in "${ORDER[@]}"; do
  cpu=$(col "$name" 6 2>/dev/null || echo -)
  ratio="-"; vs_floor="-"; rss="-"
  if [ "${PID[$name]}" != 0 ]; then
    ratio=$(awk -v a="$cpu" -v b="$NGX_CPU" 'BEGIN {printf "%.2f×", a / b}')
    vs_floor=$(awk -v a="$cpu" -v b="$FLOOR_CPU" 'BEGIN {printf "%.2f×", a / b}')
    rss="$(( $(hwm "${PID[$name]}") / 1024 )) MiB"
  else
    cpu="-"
  fi
  half="-"
  [ -n "${HALF_RATE[$name]:-}" ] && half="${HALF_RATE[$name]}/s: ${HALF_P50[$name]} / ${HALF_P99[$name]}, +${ADDED_P99[$name]}"
  printf '| %s | %.0f | %s | %s | %s | %s | %s | %s | %s |\n' "$name" "$(col "$name" 3)" "$(col "$name" 4)" \
    "$(col "$name" 5)" "$cpu" "$vs_floor" "$ratio" "$half" "$rss"
done
echo
PLAIN_FLOOR=$(cut -f1 "$RATIOS" | median); FULL_FLOOR=$(cut -f2 "$RATIOS" | median)
echo "tollgate plain / floor CPU (median of the per-round ratios): ${PLAIN_FLOOR}× (target ≤ 1.05×)"
echo "tollgate full / floor CPU (median of the per-round ratios): ${FULL_FLOOR}× (target ≤ 1.15×)"
echo "tollgate plain, full / floor-timeouts CPU (medians): $(cut -f3 "$RATIOS" | median)×, $(cut -f4 "$RATIOS" | median)×"
PLAIN_CPU=$(col tollgate-plain 6); FULL_CPU=$(col tollgate-full 6)
awk -v f="$FULL_CPU" -v p="$PLAIN_CPU" 'BEGIN {printf "full route / plain route CPU: %.2f×\n", f / p}'
echo "tollgate idle RSS (plain, before load): $((IDLE_RSS / 1024)) MiB"
echo "p99 added at half load: floor ${ADDED_P99[floor]} ms, plain ${ADDED_P99[tollgate-plain]} ms, full ${ADDED_P99[tollgate-full]} ms, nginx ${ADDED_P99[nginx]} ms"
