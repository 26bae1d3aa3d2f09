# Helpers shared by the load scripts (sourced from the repository root, after scripts/lib.sh, with the
# script's arguments: ROUNDS and SECONDS).

ROUNDS=${1:-3}
SECS=${2:-8}
CONNS=64

# The build tools, wrk, nginx and taskset, installed when absent.
bench_tools() {
  ensure_build_deps
  have wrk || { step "installing wrk"; apt_install wrk; }
  have nginx || { step "installing nginx"; apt_install nginx-light; }
  have taskset || apt_install util-linux
}

# Build the release binary ($BIN) and, with `floor` as second argument, the bare-Pingora floor proxy
# ($FLOOR, benches/floor) in the same cargo run, so both come from the same compiled Pingora and tokio
# with the workspace's release profile. Make a run directory ($RUN, with tmp/ logs/ www/ and a 16 KiB
# JSON file) and kill every process in $PIDS and remove $RUN when the script exits.
bench_start() {
  local pkgs=(-p tollgate)
  [ "${2:-}" = floor ] && pkgs+=(-p floor-proxy)
  step "building ${pkgs[*]} (release)"
  cargo build --release --locked "${pkgs[@]}"
  local target=${CARGO_TARGET_DIR:-./target}
  BIN=$target/release/tollgate
  FLOOR=$target/release/floor-proxy
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
# proc_sum PID FILE AWK: the sum of what AWK prints for /proc/P/FILE over the process and its children.
proc_sum() {
  local s=0
  for p in $(pids_of "$1"); do
    [ -r "/proc/$p/$2" ] || continue
    s=$((s + $(awk "$3" "/proc/$p/$2")))
  done
  echo "$s"
}
ticks() { proc_sum "$1" stat '{print $14 + $15}'; }
# Peak RSS (KiB) of a process and its children.
hwm() { proc_sum "$1" status '/VmHWM/ {print $2}'; }
HZ=$(getconf CLK_TCK)

to_ms() { awk '{v=$1; if (v ~ /us$/) {sub(/us$/,"",v); print v/1000} else if (v ~ /ms$/) {sub(/ms$/,"",v); print v} else {sub(/s$/,"",v); print v*1000}}'; }
median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
