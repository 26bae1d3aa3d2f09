#!/usr/bin/env bash
# The whole demo stack in one command: users (:8081), products (:8082) and orders (:8083), each with its
# own SQLite database under $DEMO_DIR (default .demo/), and the gateway on :8080 in front of them with
# config/tollgate.yaml. Seeds demo data the first time; a second start reuses the data. Ctrl-C stops all.
#
# --replicas 2: two instances of products (:8082, :8092) and of orders (:8083, :8093), each pair on one
# PostgreSQL database (SQLite cannot be shared between processes safely; PostgreSQL is started with
# lib.sh's start_postgres, in a temporary folder: its data goes when the demo stops), and the gateway
# with both targets in each upstream ($DEMO_DIR/tollgate-replicas.yaml, made from config/tollgate.yaml
# at each start: edit that copy to see a reload). Users stay one instance on SQLite.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

DEMO_DIR=${DEMO_DIR:-.demo}
GATEWAY=${TOLLGATE_LISTEN:-127.0.0.1:8080}
USERS=127.0.0.1:8081
PRODUCTS=127.0.0.1:8082
ORDERS=127.0.0.1:8083
PRODUCTS_2=127.0.0.1:8092
ORDERS_2=127.0.0.1:8093
REPLICAS=1
while [ $# -gt 0 ]; do
  case $1 in
    --replicas) REPLICAS=${2:-}; shift 2 ;;
    --replicas=*) REPLICAS=${1#*=}; shift ;;
    *) echo "usage: scripts/demo.sh [--replicas 1|2]" >&2; exit 2 ;;
  esac
done
case $REPLICAS in
  1) ADDRS=("$GATEWAY" "$USERS" "$PRODUCTS" "$ORDERS") ;;
  2) ADDRS=("$GATEWAY" "$USERS" "$PRODUCTS" "$ORDERS" "$PRODUCTS_2" "$ORDERS_2") ;;
  *) echo "--replicas: 1 or 2" >&2; exit 2 ;;
esac

ensure_build_deps
have curl || { step "installing curl"; apt_install curl ca-certificates; }

step "building (release)"
cargo build --release --locked -p tollgate -p user-service -p product-service -p order-service

for addr in "${ADDRS[@]}"; do
  if (exec 3<>"/dev/tcp/${addr%:*}/${addr#*:}") 2>/dev/null; then
    echo "something is already listening on $addr: stop it first (an earlier demo?)" >&2
    exit 1
  fi
done

mkdir -p "$DEMO_DIR/logs"
PIDS=()
stop_all() {
  trap - INT TERM EXIT
  if [ ${#PIDS[@]} -gt 0 ]; then
    step "stopping"
    kill -TERM "${PIDS[@]}" 2>/dev/null || true
    wait "${PIDS[@]}" 2>/dev/null || true
  fi
  stop_postgres
}
trap stop_all EXIT
trap 'stop_all; exit 0' INT TERM

bin=${CARGO_TARGET_DIR:-./target}/release   # where cargo put it (a shared CARGO_TARGET_DIR too)
start() { # name, log file, command...
  local name=$1 log=$2; shift 2
  "$@" >>"$DEMO_DIR/logs/$log" 2>&1 &
  PIDS+=($!)
  echo "  $name (pid $!), log: $DEMO_DIR/logs/$log"
}

wait_ready() { # url
  for _ in $(seq 1 150); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.2
  done
  echo "not ready after 30 s: $1 (see $DEMO_DIR/logs/)" >&2
  exit 1
}

# The services verify the callers' tokens themselves, with the gateway's key (the demo default unless
# TOLLGATE_JWT_SECRET is set), and call each other with a service token made once per demo folder.
export JWT_SECRET="${TOLLGATE_JWT_SECRET:-tollgate-demo-secret-0123456789abcdef}"
if [ ! -s "$DEMO_DIR/service-token" ]; then
  (umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$DEMO_DIR/service-token")
fi
SERVICE_TOKEN=$(cat "$DEMO_DIR/service-token")
export SERVICE_TOKEN

CONFIG=config/tollgate.yaml
PRODUCTS_DB="sqlite://$DEMO_DIR/products.db"
ORDERS_DB="sqlite://$DEMO_DIR/orders.db"
PRODUCTS_URLS="http://$PRODUCTS"
if [ "$REPLICAS" = 2 ]; then
  start_postgres
  for db in demo_products demo_orders; do
    # PG_BIN is set when start_postgres started one (not when TEST_POSTGRES_URL named a server).
    "${PG_BIN:+$PG_BIN/}psql" -q "$TEST_POSTGRES_URL" -c "CREATE DATABASE $db" >/dev/null
  done
  PRODUCTS_DB="${TEST_POSTGRES_URL%/*}/demo_products"
  ORDERS_DB="${TEST_POSTGRES_URL%/*}/demo_orders"
  # The orders service reaches the products instances itself (in Kubernetes: one Service URL).
  PRODUCTS_URLS="http://$PRODUCTS,http://$PRODUCTS_2"
  # The shipped config with a second target in the products and orders upstreams; the step fails if
  # the lines it replaces are not there.
  CONFIG="$DEMO_DIR/tollgate-replicas.yaml"
  sed -e "s|targets: \[{ addr: \"\${PRODUCTS_ADDR:-127.0.0.1:8082}\" }\]|targets: [{ addr: \"$PRODUCTS\" }, { addr: \"$PRODUCTS_2\" }]|" \
      -e "s|targets: \[{ addr: \"\${ORDERS_ADDR:-127.0.0.1:8083}\" }\]|targets: [{ addr: \"$ORDERS\" }, { addr: \"$ORDERS_2\" }]|" \
      config/tollgate.yaml > "$CONFIG"
  [ "$(grep -c "$PRODUCTS_2\|$ORDERS_2" "$CONFIG")" = 2 ] || { echo "could not add the second targets to $CONFIG" >&2; exit 1; }
fi

step "starting the services"
start user-service users.log "$bin/user-service" --listen "$USERS" --database-url "sqlite://$DEMO_DIR/users.db"
start product-service products.log "$bin/product-service" --listen "$PRODUCTS" --database-url "$PRODUCTS_DB"
wait_ready "http://$PRODUCTS/readyz" # the first instance runs the migrations before the second starts
start order-service orders.log "$bin/order-service" --listen "$ORDERS" --database-url "$ORDERS_DB" \
  --users-url "http://$USERS" --products-url "$PRODUCTS_URLS"
wait_ready "http://$ORDERS/readyz"
if [ "$REPLICAS" = 2 ]; then
  start product-service-2 products-2.log "$bin/product-service" --listen "$PRODUCTS_2" --database-url "$PRODUCTS_DB"
  start order-service-2 orders-2.log "$bin/order-service" --listen "$ORDERS_2" --database-url "$ORDERS_DB" \
    --users-url "http://$USERS" --products-url "$PRODUCTS_URLS"
fi
for a in "${ADDRS[@]:1}"; do wait_ready "http://$a/readyz"; done

# Seeding is an administrator's job: as a service of the deployment.
post() { curl -fsS -o /dev/null -H "authorization: Bearer $SERVICE_TOKEN" -H 'content-type: application/json' -d "$2" "$1"; }
if curl -fsS "http://$PRODUCTS/products?limit=1" | grep -q '"total":0'; then
  step "seeding demo data (first start)"
  post "http://$USERS/users" '{"name":"Ada Lovelace","email":"ada@example.com"}'
  post "http://$USERS/users" '{"name":"Grace Hopper","email":"grace@example.com"}'
  post "http://$PRODUCTS/products" '{"name":"Mechanical keyboard","description":"Tactile switches","price_cents":12900,"stock":25}'
  post "http://$PRODUCTS/products" '{"name":"USB-C cable","description":"1 m, braided","price_cents":1200,"stock":200}'
  post "http://$PRODUCTS/products" '{"name":"Desk lamp","description":"Warm white","price_cents":3900,"stock":10}'
else
  step "reusing the data in $DEMO_DIR"
fi

step "starting the gateway"
start tollgate gateway.log env TOLLGATE_LISTEN="$GATEWAY" USERS_ADDR="$USERS" PRODUCTS_ADDR="$PRODUCTS" \
  ORDERS_ADDR="$ORDERS" "$bin/tollgate" run -c "$CONFIG"
for _ in $(seq 1 150); do
  (exec 3<>"/dev/tcp/${GATEWAY%:*}/${GATEWAY#*:}") 2>/dev/null && break
  sleep 0.2
done

SERVICES="users $USERS, products $PRODUCTS, orders $ORDERS"
if [ "$REPLICAS" = 2 ]; then
  SERVICES="users $USERS, products $PRODUCTS + $PRODUCTS_2, orders $ORDERS + $ORDERS_2 (PostgreSQL: $TEST_POSTGRES_URL)"
fi
USER_TOKEN=$("$bin/tollgate" token -c config/tollgate.yaml --sub 1 --scope orders --ttl 12h)
ADMIN_TOKEN=$("$bin/tollgate" token -c config/tollgate.yaml --sub 0 --scope admin --ttl 12h)
cat <<EOF

Tollgate is up on http://$GATEWAY  (services: $SERVICES)

Product reads are public; everything else needs a token (mint more with $bin/tollgate token):

  USER=$USER_TOKEN
  ADMIN=$ADMIN_TOKEN

  curl -s http://$GATEWAY/api/products
  curl -s http://$GATEWAY/api/users/1 -H "authorization: Bearer \$USER"
  curl -s -X POST http://$GATEWAY/api/orders -H "authorization: Bearer \$USER" -H 'content-type: application/json' \\
       -H 'idempotency-key: demo-1' -d '{"user_id":1,"items":[{"product_id":1,"qty":1}]}'
  curl -s http://$GATEWAY/api/orders -H "authorization: Bearer \$USER"       # only user 1's orders
  curl -s -X PATCH http://$GATEWAY/api/products/1 -H "authorization: Bearer \$ADMIN" \\
       -H 'content-type: application/json' -d '{"price_cents":9900}'
  curl -si http://$GATEWAY/api/orders | head -n 1                           # 401, JSON body
  curl -s http://$GATEWAY/nope                                             # 404 from the gateway

Admin (its own port): curl -s http://127.0.0.1:9090/readyz ; curl -s http://127.0.0.1:9090/metrics
  curl -s -H "authorization: Bearer tollgate-demo-admin-token" http://127.0.0.1:9090/admin/routes
  Dashboard: http://127.0.0.1:9090/admin/dashboard (token: tollgate-demo-admin-token)
Access log: $DEMO_DIR/logs/gateway.log. Edit $CONFIG and it reloads. Ctrl-C stops everything.
EOF

# Exit (and stop the rest) as soon as any process dies, or on Ctrl-C. With replicas, a products or
# orders instance may die (kill -9 one to watch the other take over): only the gateway and users count.
if [ "$REPLICAS" = 2 ]; then
  wait -n "${PIDS[0]}" "${PIDS[-1]}" || true
else
  wait -n "${PIDS[@]}" || true
fi
echo "a process exited; see $DEMO_DIR/logs/" >&2
