# Helpers shared by the load scripts (sourced from the repository root).

# Build the release binary ($BIN), make a run directory ($RUN, with tmp/ logs/ www/ and a 16 KiB JSON
# file) and kill every process in $PIDS and remove $RUN when the script exits.
bench_start() {
  step "building tollgate (release)"
  cargo build --release --locked -p tollgate
  BIN=./target/release/tollgate
  RUN=$(mktemp -d "/tmp/tollgate-$1.XXXXXX")
  mkdir -p "$RUN"/{tmp,logs,www}
  PIDS=()
  trap bench_cleanup EXIT
  head -c 16384 /dev/zero | tr '\0' 'x' | sed 's/^/{"pad":"/; s/$/"}/' > "$RUN/www/big.json"
}
bench_cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$RUN"
}

# Render an nginx config from benches/nginx/, replacing @RUN@ with the run directory.
render() { sed "s#@RUN@#$RUN#g" "benches/nginx/$1" > "$RUN/$1"; }

wait_port() {
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listening on :$1" >&2; exit 1
}

# CPU ticks (utime + stime) of a process and its children (nginx workers).
pids_of() { echo "$1 $(pgrep -P "$1" | tr '\n' ' ')"; }
ticks() {
  local t=0
  for p in $(pids_of "$1"); do
    [ -r "/proc/$p/stat" ] || continue
    t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$t"
}
# Peak RSS (KiB) of a process and its children.
hwm() {
  local m=0
  for p in $(pids_of "$1"); do
    [ -r "/proc/$p/status" ] || continue
    m=$((m + $(awk '/VmHWM/ {print $2}' "/proc/$p/status")))
  done
  echo "$m"
}
HZ=$(getconf CLK_TCK)

to_ms() { awk '{v=$1; if (v ~ /us$/) {sub(/us$/,"",v); print v/1000} else if (v ~ /ms$/) {sub(/ms$/,"",v); print v} else {sub(/s$/,"",v); print v*1000}}'; }
median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
