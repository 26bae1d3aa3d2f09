#!/usr/bin/env bash
# API conformance of the reference services: each service is started on SQLite on 127.0.0.1, its
# /openapi.json fetched and validated as OpenAPI 3.1 (openapi-spec-validator), then the service is
# tested against its own document by schemathesis (property-based, stateful through the document's
# links): no 5xx, only documented statuses, documented content types, responses matching their
# schemas. The order service is run with real users and products services and must really place
# orders. Each check is also run on a broken document and must fail there.
# Usage: scripts/api-check.sh [BIN_DIR]   (default target/debug: the three services and `tollgate`,
#        which mints the tokens)
# Tools: a venv under ~/.cache/tollgate (schemathesis, openapi-spec-validator from PyPI), made once.
# Budget: API_CHECK_SECONDS per schemathesis run (default 25), API_CHECK_EXAMPLES per operation (25).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

bindir=$(realpath "${1:-target/debug}")
venv="${TOLLGATE_CACHE:-$HOME/.cache/tollgate}/api-venv"
tools="schemathesis==4.32.5 openapi-spec-validator==0.9.0"
if [ "$(cat "$venv/.tools" 2>/dev/null)" != "$tools" ]; then
  step "install API tools into $venv"
  { have python3 && python3 -c 'import ensurepip, venv' 2>/dev/null; } || apt_install python3 python3-venv
  python3 -m venv "$venv"
  # shellcheck disable=SC2086
  "$venv/bin/pip" install -q $tools
  echo "$tools" > "$venv/.tools"
fi
have curl || apt_install curl
py="$venv/bin/python"
seconds="${API_CHECK_SECONDS:-25}"
examples="${API_CHECK_EXAMPLES:-25}"

tmp=$(mktemp -d)
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

# The tokens the services accept (kit/src/auth.rs): JWTs with the gateway's demo key, minted as the
# demo does, and a service token for this run.
export JWT_SECRET="${TOLLGATE_JWT_SECRET:-tollgate-demo-secret-0123456789abcdef}"
SERVICE_TOKEN="api-check-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export SERVICE_TOKEN
export RUST_LOG="${RUST_LOG:-warn}"
ADMIN_TOKEN=$("$bindir/tollgate" token -c config/tollgate.yaml --sub 1 --scope admin --ttl 1h)

# start NAME [ARGS...]: run $bindir/NAME on 127.0.0.1:0 with a fresh SQLite file; sets $addr from its
# `listening on http://ADDR` line.
start() {
  local name=$1; shift
  "$bindir/$name" --listen 127.0.0.1:0 --database-url "sqlite://$tmp/$name.db" "$@" \
    >"$tmp/$name.out" 2>"$tmp/$name.log" &
  pids+=($!)
  addr=""
  for _ in $(seq 1 150); do
    addr=$(sed -n 's|^listening on http://||p' "$tmp/$name.out")
    [ -n "$addr" ] && return 0
    kill -0 "${pids[-1]}" 2>/dev/null || break
    sleep 0.2
  done
  cat "$tmp/$name.log" >&2; echo "FAIL: $name did not start" >&2; exit 1
}

# `expect_fail NAME PATTERN CMD...`: CMD run on a broken input must fail, with PATTERN in its output
# (the failure the input was broken for, not another one).
expect_fail() {
  local name=$1 pattern=$2; shift 2
  if "$@" >"$tmp/out" 2>&1; then
    tail -20 "$tmp/out"; echo "FAIL: $name passed on a broken input" >&2; exit 1
  fi
  grep -q -E "$pattern" "$tmp/out" || { tail -40 "$tmp/out"; echo "FAIL: $name failed, but not with /$pattern/" >&2; exit 1; }
  echo "ok: $name refuses a broken input: $(grep -m1 -E "$pattern" "$tmp/out" | sed 's/^ *//')"
}

validate() { "$venv/bin/openapi-spec-validator" "$1"; }
# fuzz SPEC BASE_URL TOKEN [ST OPTIONS...]
fuzz() {
  local spec=$1 base=$2 token=$3; shift 3
  "$venv/bin/st" run "$spec" --url "$base" -H "Authorization: Bearer $token" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --max-examples "$examples" --max-time "$seconds" --seed 1 --no-color "$@"
}
# The summary of a run: its phases and figures, not the whole log.
fuzz_summary() { sed -n '/ SUMMARY /,$p' "$1" | grep -E 'Examples|Coverage|Fuzzing|Stateful|generated|passed|failures|errors' || tail -5 "$1"; }

check() { # check NAME BASE_URL TOKEN
  local name=$1 base=$2 token=$3
  curl -fsS "$base/openapi.json" > "$tmp/$name.json"
  validate "$tmp/$name.json"
  echo "ok: $name /openapi.json is valid OpenAPI $("$py" -c 'import json,sys; print(json.load(open(sys.argv[1]))["openapi"])' "$tmp/$name.json")"
  if ! fuzz "$base/openapi.json" "$base" "$token" > "$tmp/$name.st" 2>&1; then
    cat "$tmp/$name.st"; echo "FAIL: $name does not conform to its /openapi.json" >&2; exit 1
  fi
  echo "ok: $name conforms: $(fuzz_summary "$tmp/$name.st" | tr -s ' \n' ' ')"
}

step "API conformance: users, products, orders on SQLite"
start user-service; users=$addr
start product-service; products=$addr
start order-service --users-url "http://$users" --products-url "http://$products"; orders=$addr

# The user and the product the order document's example names (user 1, product 1), so that orders
# placed from it are confirmed; the services' own runs come after, on their own copies.
post() { curl -fsS -o /dev/null -H "authorization: Bearer $SERVICE_TOKEN" -H 'content-type: application/json' -d "$2" "$1"; }
post "http://$users/users" '{"name":"Ada","email":"ada@example.com"}'
post "http://$products/products" '{"name":"Widget","price_cents":250,"stock":1000000000}'

check order-service "http://$orders" "$ADMIN_TOKEN"
placed=$(curl -fsS -H "authorization: Bearer $ADMIN_TOKEN" "http://$orders/orders?status=confirmed&limit=1" \
  | "$py" -c 'import json,sys; print(json.load(sys.stdin)["total"])')
[ "$placed" -ge 1 ] || { echo "FAIL: schemathesis placed no order" >&2; exit 1; }
echo "ok: $placed orders placed and confirmed"
check user-service "http://$users" "$ADMIN_TOKEN"
# Reservations are for services: the service token is an administrator too.
check product-service "http://$products" "$SERVICE_TOKEN"

step "API conformance: each check refuses a broken document"
# A path parameter left undeclared (what all three documents had before).
"$py" -c 'import json,sys; d=json.load(open(sys.argv[1])); d["paths"]["/users/{id}"]["get"]["parameters"]=[]; json.dump(d, open(sys.argv[2], "w"))' \
  "$tmp/user-service.json" "$tmp/broken-params.json"
expect_fail "openapi-spec-validator" "Path parameter .id. .* was not resolved" validate "$tmp/broken-params.json"
# A response schema the service does not answer with: `total` said to be a string.
"$py" -c 'import json,sys; d=json.load(open(sys.argv[1])); d["components"]["schemas"]["Page_User"]["properties"]["total"]={"type":"string"}; json.dump(d, open(sys.argv[2], "w"))' \
  "$tmp/user-service.json" "$tmp/broken-schema.json"
expect_fail "schemathesis (response schema)" "Response violates schema" \
  fuzz "$tmp/broken-schema.json" "http://$users" "$ADMIN_TOKEN" --include-path /users --include-method GET --phases examples,fuzzing --max-time 10
# A status the service gives left undocumented: 415 for a body that is not JSON.
"$py" -c 'import json,sys; d=json.load(open(sys.argv[1])); del d["paths"]["/users"]["post"]["responses"]["415"]; json.dump(d, open(sys.argv[2], "w"))' \
  "$tmp/user-service.json" "$tmp/broken-status.json"
expect_fail "schemathesis (undocumented status)" "Undocumented status code" \
  fuzz "$tmp/broken-status.json" "http://$users" "$ADMIN_TOKEN" --include-path /users --include-method POST --phases coverage,fuzzing --max-time 10
