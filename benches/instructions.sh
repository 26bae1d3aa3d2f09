#!/usr/bin/env bash
# User-space instructions per request of the floor and of Tollgate's plain and full routes, counted by
# valgrind (callgrind) under the backend and configs of load.sh: a figure that does not move with the
# neighbours on a shared machine, for an A/B of two builds where CPU time per request is too noisy.
# floor-timeouts is the floor with Tollgate's default timeouts (`floor-proxy --timeouts`): the part of
# the difference that is Pingora's own cost of timeouts.
# Per target: the proxy starts under callgrind, 500 requests warm it up (oha -c 8), the counters are
# zeroed, N requests are sent, the counters dumped; Ir total / N is the figure (kernel time is not in it).
#
# Usage: benches/instructions.sh [N]        (default 2000 requests per target)
# NO_BUILD=1 TOLLGATE_BIN=... counts a binary built earlier (see bench_start). Needs valgrind and oha.
# The callgrind files stay in $IR_OUT (default /tmp/tollgate-instructions) for callgrind_annotate; an A/B
# of two builds, function by function: benches/irdiff.py OLD/tollgate-plain.*.1 NEW/tollgate-plain.*.1.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
N=${1:-2000}
source benches/bench-lib.sh 1 1
OUT=${IR_OUT:-/tmp/tollgate-instructions}
mkdir -p "$OUT"

bench_tools
have valgrind || { step "installing valgrind"; apt_install valgrind; }
if ! have oha; then
  step "installing oha (cargo install, once)"
  cargo install oha --locked --quiet
fi
export PATH="$HOME/.cargo/bin:$PATH"
bench_start instructions floor

render backend.nginx.conf
taskset -c 0 nginx -c "$RUN/backend.nginx.conf" -p "$RUN" & PIDS+=($!)
wait_port 9001
tollgate_configs

declare -A IR
for name in floor floor-timeouts tollgate-plain tollgate-full; do
  case $name in
    floor) cmd=("$FLOOR" 127.0.0.1:8004 127.0.0.1:9001); port=8004 ;;
    floor-timeouts) cmd=("$FLOOR" --timeouts 127.0.0.1:8005 127.0.0.1:9001); port=8005 ;;
    tollgate-plain) cmd=("$BIN" run -c "$RUN/plain.yaml"); port=8002 ;;
    tollgate-full) cmd=("$BIN" run -c "$RUN/full.yaml"); port=8003 ;;
  esac
  rm -f "$OUT/$name".*
  RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$OUT/$name.%p" "${cmd[@]}" \
    2>"$OUT/$name.log" & PIDS+=($!); VG=$!
  # Slow to start under valgrind: up to a minute.
  for _ in $(seq 1 600); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  hdr=()
  if [ "$name" = tollgate-full ]; then
    TOKEN=$("$BIN" token -c "$RUN/full.yaml" --sub bench-user --ttl 1h)
    hdr=(-H "Authorization: Bearer $TOKEN")
  fi
  oha --no-tui -n 500 -c 8 "${hdr[@]}" "http://127.0.0.1:$port/" >/dev/null
  callgrind_control -z "$VG" >/dev/null 2>&1
  ok=$(oha --no-tui -n "$N" -c 8 "${hdr[@]}" "http://127.0.0.1:$port/" | awk '/Success rate/ {print $3}')
  callgrind_control -d "$VG" >/dev/null 2>&1
  kill "$VG" 2>/dev/null || true
  wait "$VG" 2>/dev/null || true
  file=$(ls -t "$OUT/$name".*.1 | head -n 1)
  total=$(callgrind_annotate "$file" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
  IR[$name]=$(awk -v t="$total" -v n="$N" 'BEGIN {printf "%.0f", t / n}')
  printf '  %-15s %8s instructions/request (success %s; %s)\n' "$name" "${IR[$name]}" "$ok" "$file"
done
echo
for name in tollgate-plain tollgate-full; do
  awk -v a="${IR[$name]}" -v b="${IR[floor]}" -v t="${IR[floor-timeouts]}" -v n="$name" \
    'BEGIN {printf "%s / floor (instructions): %.2f× (/ floor-timeouts: %.2f×)\n", n, a / b, a / t}'
done
