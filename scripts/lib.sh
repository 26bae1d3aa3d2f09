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
