#!/usr/bin/env bash
# Starts the whole full-stack demo on loopback and configures the gateway:
#   identity provider  http://127.0.0.1:9300  (tests/idp, demo clients)
#   backend API        http://127.0.0.1:9081
#   frontend (SPA)     http://127.0.0.1:3000
#   Portcullis         http://127.0.0.1:9080, Admin API http://127.0.0.1:9180
# Ctrl-C (or SIGTERM) stops them all.
#
# PORTCULLIS_BIN=path  use that binary instead of `cargo build --release`
# PORTCULLIS_ADMIN_KEY the demo's admin key (default below)
# DISCOVERY=url        use that provider instead of the local one; then also
#                      set CLIENT_ID, CLIENT_SECRET and SPA_CLIENT_ID (README)
set -euo pipefail
demo=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$demo/../.." && pwd)
export PORTCULLIS_ADMIN_KEY=${PORTCULLIS_ADMIN_KEY:-full-stack-demo-admin-key}
# The local provider runs unless DISCOVERY names another one.
ports="9081 3000 9080 9180"
[ -n "${DISCOVERY:-}" ] || ports="9300 $ports"

# 1. Every port must be free: a second run stops here with a clear message.
for port in $ports; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "run.sh: port $port is already in use (is the demo running already?)." >&2
    echo "Stop whatever listens there (ss -ltnp 'sport = :$port') and try again." >&2
    exit 1
  fi
done

# 2. What the demo needs: the gateway binary and the provider's packages.
if [ -z "${PORTCULLIS_BIN:-}" ]; then
  (cd "$root" && cargo build --release)
  PORTCULLIS_BIN=$root/target/release/portcullis
fi
modules=$root/tests/idp/node_modules/.package-lock.json
if [ -z "${DISCOVERY:-}" ] &&
  { [ ! -e "$modules" ] || [ "$root/tests/idp/package-lock.json" -nt "$modules" ]; }; then
  npm ci --prefix "$root/tests/idp" --no-audit --no-fund --loglevel=error
fi

# 3. Start everything; a trap stops every child by its pid.
work=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-demo.XXXXXX")
pids=()
stop() {
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait "${pids[@]}" 2>/dev/null || true
  rm -rf "$work/data"
  echo "demo stopped (logs in $work)"
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start() { # name, command…: runs it in the background, output to its log
  local name=$1
  shift
  "$@" >"$work/$name.log" 2>&1 &
  pids+=($!)
}
wait_for() { # name, url: waits until the url answers any HTTP status
  for _ in $(seq 100); do
    curl -s -o /dev/null "$2" && return 0
    sleep 0.2
  done
  echo "run.sh: $1 did not start; its log:" >&2
  cat "$work/$1.log" >&2
  exit 1
}

if [ -z "${DISCOVERY:-}" ]; then
  IDP_CONFIG=$demo/idp-config.json start idp node "$root/tests/idp/provider.mjs" --port 9300
  wait_for idp http://127.0.0.1:9300/.well-known/openid-configuration
fi
start backend node "$demo/backend/server.mjs" --port 9081
start frontend node "$demo/frontend/server.mjs" --port 3000
start portcullis "$PORTCULLIS_BIN" --data-dir "$work/data" \
  --proxy-listen 127.0.0.1:9080 --admin-listen 127.0.0.1:9180
wait_for backend http://127.0.0.1:9081/
wait_for frontend http://127.0.0.1:3000/
wait_for portcullis http://127.0.0.1:9180/apisix/admin/routes

# 4. Configure the gateway, then wait for Ctrl-C or for a child to die.
"$demo/configure.sh"
cat <<EOF

Full-stack demo ready (logs in $work):
  Variant A, the SPA holds the token:      http://127.0.0.1:3000/
  Variant B, the gateway holds the tokens: http://127.0.0.1:9080/app/
  Identity provider:                       ${DISCOVERY:-http://127.0.0.1:9300 (any login name)}
  Admin API: http://127.0.0.1:9180/apisix/admin  X-API-KEY: $PORTCULLIS_ADMIN_KEY
Press Ctrl-C to stop.
EOF
wait -n "${pids[@]}" || true
echo "run.sh: a component exited; stopping the demo" >&2
exit 1
