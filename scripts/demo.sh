#!/usr/bin/env bash
# Start the demo: the gateway with config/tollgate.yaml on 127.0.0.1:8080. Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_build_deps
step "building (release)"
cargo build --release --locked -p tollgate
step "starting tollgate on http://127.0.0.1:8080"
exec ./target/release/tollgate run -c config/tollgate.yaml
