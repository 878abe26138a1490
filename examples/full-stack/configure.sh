#!/usr/bin/env bash
# Configures a running Portcullis for the full-stack demo through its Admin
# API: two upstreams, the variant A route (bearer tokens, CORS) and the three
# variant B routes (browser sign-in). Every command is a plain APISIX-style
# curl, the same as in README.md's "Full-stack demo" section. Running it
# again replaces what it wrote.
#
#   PORTCULLIS_ADMIN_KEY=… examples/full-stack/configure.sh
#
# Everything that changes with the provider is a variable with the local
# provider's value as default.
set -euo pipefail

: "${PORTCULLIS_ADMIN_KEY:?set PORTCULLIS_ADMIN_KEY to the admin key of the gateway}"
ADMIN=${ADMIN:-http://127.0.0.1:9180/apisix/admin}
DISCOVERY=${DISCOVERY:-http://127.0.0.1:9300/.well-known/openid-configuration}
CLIENT_ID=${CLIENT_ID:-demo-gateway}
CLIENT_SECRET=${CLIENT_SECRET:-demo-gateway-secret}
SPA_ORIGIN=${SPA_ORIGIN:-http://127.0.0.1:3000}
GATEWAY=${GATEWAY:-http://127.0.0.1:9080}

# Prints one line per request; on an error, the Admin API's answer.
answer=$(mktemp)
trap 'rm -f "$answer"' EXIT
trap 'echo "configure.sh: the Admin API refused it:" >&2; cat "$answer" >&2; echo >&2' ERR
admin=(curl -sS --fail-with-body -o "$answer" -w '%{http_code} %{method} %{url}\n'
  -H "X-API-KEY: $PORTCULLIS_ADMIN_KEY" -H 'Content-Type: application/json')

# Upstreams: the backend API and the frontend's file server.
"${admin[@]}" -X PUT "$ADMIN/upstreams/backend" \
  -d '{"type": "roundrobin", "nodes": {"127.0.0.1:9081": 1}}'
"${admin[@]}" -X PUT "$ADMIN/upstreams/frontend" \
  -d '{"type": "roundrobin", "nodes": {"127.0.0.1:3000": 1}}'

# Variant A: the SPA on another origin sends `Authorization: Bearer <opaque
# token>`; the gateway introspects it as a confidential client. `cors` answers
# the browser's preflight and marks every answer readable by the SPA's origin.
"${admin[@]}" -X PUT "$ADMIN/routes/demo-a-api" -d @- <<EOF
{
  "uri": "/api/*",
  "upstream_id": "backend",
  "plugins": {
    "cors": {
      "allow_origins": "$SPA_ORIGIN",
      "allow_methods": "GET",
      "allow_headers": "Authorization"
    },
    "openid-connect": {
      "client_id": "$CLIENT_ID",
      "client_secret": "$CLIENT_SECRET",
      "discovery": "$DISCOVERY",
      "bearer_only": true
    }
  }
}
EOF

# Variant B: the gateway runs the sign-in and keeps the tokens in a server-side
# session; the browser holds only the `portcullis_session` cookie. The three
# routes share one client, so they share its sessions.
read -r -d '' SIGN_IN <<EOF || true
      "client_id": "$CLIENT_ID",
      "client_secret": "$CLIENT_SECRET",
      "discovery": "$DISCOVERY",
      "bearer_only": false,
      "scope": "openid profile email",
      "redirect_uri": "$GATEWAY/app/callback",
      "logout_path": "/app/logout",
      "post_logout_redirect_uri": "$GATEWAY/app/"
EOF

# The app's files, public (`unauth_action: pass`) so a signed-out visitor sees
# the page; the callback and the logout path are handled here too.
"${admin[@]}" -X PUT "$ADMIN/routes/demo-b-app" -d @- <<EOF
{
  "uri": "/app/*",
  "upstream_id": "frontend",
  "plugins": {"openid-connect": {$SIGN_IN,
      "unauth_action": "pass"}}
}
EOF

# "Sign in" navigates here: without a session the gateway sends the browser to
# the provider, and once back the frontend redirects to /app/.
"${admin[@]}" -X PUT "$ADMIN/routes/demo-b-login" -d @- <<EOF
{
  "uri": "/app/login",
  "upstream_id": "frontend",
  "plugins": {"openid-connect": {$SIGN_IN}}
}
EOF

# The API: the backend gets the user's identity in X-Userinfo and X-ID-Token;
# a call without a session gets 401 JSON (it is not a page navigation).
"${admin[@]}" -X PUT "$ADMIN/routes/demo-b-api" -d @- <<EOF
{
  "uri": "/app/api/*",
  "upstream_id": "backend",
  "plugins": {"openid-connect": {$SIGN_IN}}
}
EOF
