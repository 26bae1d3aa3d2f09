#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, every config in config/, the services' APIs
# against their OpenAPI documents, unit and integration tests (real binaries, real sockets on
# 127.0.0.1). Installs what a fresh Debian 12 machine with only the Rust toolchain lacks.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

# A whole-suite run is one build: incremental state would only add ~2 GiB to the target dir (CI's disk
# is not ours to size). A caller's own setting wins.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

ensure_build_deps
ensure_rust_components

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "build"
cargo build --workspace --all-targets --locked
# Where cargo put it: a shared CARGO_TARGET_DIR is honoured.
bin=${CARGO_TARGET_DIR:-target}/debug

step "API conformance (scripts/api-check.sh)"
./scripts/api-check.sh "$bin"

step "validate config/*.yaml"
# Every config; the route test cases beside them are not configs, and are run instead.
configs=()
for f in config/*.yaml; do
  [[ $f == *.cases.yaml ]] || configs+=("$f")
done
"$bin/tollgate" validate "${configs[@]}"

step "tollgate test config/tollgate.cases.yaml"
"$bin/tollgate" test config/tollgate.cases.yaml -c config/tollgate.yaml

step "deploy/ (Kubernetes, systemd, Containerfile)"
./scripts/deploy-check.sh "$bin/tollgate"

ensure_redis
ensure_chromium
start_postgres
trap stop_postgres EXIT

step "tests"
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
