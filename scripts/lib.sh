# Shared helpers for the scripts in this folder. Source it; do not run it.

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

have() { command -v "$1" >/dev/null 2>&1; }

# apt-get install, as root or through sudo, with one `apt-get update` per run.
APT_UPDATED=""
apt_install() {
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    if have sudo; then sudo="sudo"; else
      echo "need root (or sudo) to install: $*" >&2; return 1
    fi
  fi
  if ! have apt-get; then
    echo "please install: $* (no apt-get on this machine)" >&2; return 1
  fi
  if [ -z "$APT_UPDATED" ]; then
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    APT_UPDATED=1
  fi
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# Pingora builds C code (zlib via cmake) and needs a C compiler.
ensure_build_deps() {
  local missing=()
  have cmake || missing+=(cmake)
  have cc || missing+=(gcc)
  have make || missing+=(make)
  have g++ || missing+=(g++)
  if [ ${#missing[@]} -gt 0 ]; then
    step "installing ${missing[*]}"
    apt_install "${missing[@]}"
  fi
}

ensure_rust_components() {
  if have rustup; then
    cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
    cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
  fi
}

# redis-server for the rate-limit tests, which start (and kill, and restart) their own servers on
# loopback ports. Installs it with apt when absent.
ensure_redis() {
  if ! have redis-server; then
    step "installing redis-server"
    apt_install redis-server
  fi
}

# Debian's chromium for the dashboard test (gateway/tests/dashboard.rs), which drives it headless over
# the DevTools protocol on 127.0.0.1. Installs it with apt when absent; CHROMIUM names another browser.
ensure_chromium() {
  if [ -n "${CHROMIUM:-}" ]; then return 0; fi
  if ! have chromium; then
    step "installing chromium"
    apt_install chromium
  fi
}

# A throwaway PostgreSQL server for the tests: its own cluster in a temp dir, on 127.0.0.1:$PG_PORT,
# trust auth, user `tollgate`. Installs the server with apt when absent. Exports TEST_POSTGRES_URL.
# A TEST_POSTGRES_URL already set is used as is. Call stop_postgres (e.g. from a trap) to stop it.
PG_DIR=""
start_postgres() {
  if [ -n "${TEST_POSTGRES_URL:-}" ]; then return 0; fi
  if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
    step "installing PostgreSQL"
    apt_install postgresql
  fi
  local bin; bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  # Below Linux's ephemeral range (32768-60999): there, an outgoing connection of an earlier step can hold
  # the port without listening on it, which the check below cannot see, and the server's bind fails
  # (CI saw `could not bind ... Address already in use` on 55432 once).
  local port=${PG_PORT:-25432}
  # Take the next free port if that one is busy (another checkout's test run, say).
  while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
  PG_DIR=$(mktemp -d /tmp/tollgate-pg.XXXXXX)
  local as=()
  if [ "$(id -u)" = 0 ]; then
    chown postgres: "$PG_DIR"
    as=(runuser -u postgres --)
  fi
  step "starting PostgreSQL on 127.0.0.1:$port"
  "${as[@]}" "$bin/initdb" -D "$PG_DIR/data" -U tollgate -A trust --no-sync >/dev/null
  "${as[@]}" "$bin/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $PG_DIR -c fsync=off -c max_connections=300" start >/dev/null
  export TEST_POSTGRES_URL="postgres://tollgate@127.0.0.1:$port/postgres"
  PG_BIN=$bin
  PG_AS=("${as[@]}")
}

stop_postgres() {
  if [ -n "$PG_DIR" ] && [ -d "$PG_DIR/data" ]; then
    "${PG_AS[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$PG_DIR"
  fi
}
