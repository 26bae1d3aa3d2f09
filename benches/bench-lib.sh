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
# JSON file) and kill every process in $PIDS and remove $RUN when the script exits. NO_BUILD=1 skips the
# build (TOLLGATE_BIN / FLOOR_BIN then name the binaries, e.g. an older build kept for an A/B).
bench_start() {
  local pkgs=(-p tollgate)
  [ "${2:-}" = floor ] && pkgs+=(-p floor-proxy)
  local target=${CARGO_TARGET_DIR:-./target}
  BIN=${TOLLGATE_BIN:-$target/release/tollgate}
  FLOOR=${FLOOR_BIN:-$target/release/floor-proxy}
  if [ -n "${NO_BUILD:-}" ]; then
    step "NO_BUILD set: using $BIN and $FLOOR as they are"
  else
    step "building ${pkgs[*]} (release)"
    cargo build --release --locked "${pkgs[@]}"
  fi
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

# The two Tollgate configs the load scripts measure: $RUN/plain.yaml (127.0.0.1:8002, one prefix route, no
# plugins, access log off) and $RUN/full.yaml (127.0.0.1:8003, JWT HS256 with a claim forwarded upstream,
# a local rate limit keyed on the JWT `sub`, metrics, JSON access log to a file). Both proxy to the
# backend on 127.0.0.1:9001 with one worker thread. Sets $SECRET (the JWT key).
tollgate_configs() {
  SECRET="load-test-secret-0123456789abcdef0123"
  cat > "$RUN/plain.yaml" <<EOF
server:
  listen: ["127.0.0.1:8002"]
  threads: 1
  access_log: { enabled: false }
  admin: { listen: "127.0.0.1:9102" }
  reload: { watch: false }
  upgrade_sock: "$RUN/plain.sock"
upstreams:
  backend: { targets: [{ addr: "127.0.0.1:9001" }] }
routes:
  - { name: plain, match: { path_prefix: / }, upstream: backend }
EOF
  cat > "$RUN/full.yaml" <<EOF
server:
  listen: ["127.0.0.1:8003"]
  threads: 1
  access_log: { enabled: true, path: "$RUN/logs/tollgate-access.log" }
  admin: { listen: "127.0.0.1:9103" }
  reload: { watch: false }
  upgrade_sock: "$RUN/full.sock"
auth:
  jwt:
    bench: { algorithms: [HS256], secret: "$SECRET", issuer: bench, audience: api }
rate_limits:
  per_user: { requests: 1000000000, per: 1m, key: "jwt_claim:sub" }
upstreams:
  backend: { targets: [{ addr: "127.0.0.1:9001" }] }
routes:
  - name: full
    match: { path_prefix: / }
    upstream: backend
    plugins:
      - jwt: { provider: bench, forward_claims: { sub: X-User-Id } }
      - rate_limit: per_user
EOF
}
