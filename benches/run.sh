#!/usr/bin/env bash
# Portcullis benchmark (issue 5): Portcullis side by side with nginx on this
# machine, in one invocation. See README.md, "Performance".
#
#   benches/run.sh
#
# Needs nginx, wrk, taskset (apt-get install nginx wrk), curl, python3,
# node (the test identity provider) and cargo. Everything listens on
# 127.0.0.1 only; all load goes to loopback; every process it starts is
# stopped by pid on exit, and its temporary directory removed.
#
# Knobs (environment):
#   BENCH_DURATION=10        seconds measured per scenario
#   BENCH_WARMUP=3           seconds of warm-up before each scenario
#   BENCH_CONNECTIONS=32     wrk connections (saturating runs)
#   BENCH_THREADS=1          wrk threads
#   BENCH_HALF_DELAY_MS=10   pause per connection in the paced half-load runs
#   BENCH_ROUTES=10000       routes in the large-table scenario
#   BENCH_RELOAD_WRITES=200  Admin API writes timed for hot-reload latency
#   BENCH_WRITE_DURATION=5   seconds of concurrent Admin API PUTs
#   BENCH_WRITE_CONNECTIONS=16
#   BENCH_CREATE_CONCURRENCY=4  concurrent Admin API writes creating the routes
#   BENCH_NO_BUILD=1         skip `cargo build --release`
#   BENCH_KEEP_TMP=1         keep the temporary directory (logs, configs)
#   BENCH_PERF=1             also profile the gateway with `perf record` during
#                            its saturating runs; reports in benches/results/perf/
#   BENCH_RESULTS_DIR        where JSON results go (default benches/results)
#   PORTCULLIS_ADMIN_KEY     admin key to use (default: a random one)
#   BENCH_PORTCULLIS_LOG     PORTCULLIS_LOG for the gateway (default info)
set -euo pipefail
# The whole script is one brace group, so bash parses it completely before
# running it: editing or checking out another version of this file while a
# run is in progress cannot change the running one.
{

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCHES=$ROOT/benches
HELPER=$BENCHES/bench.py
LUA=$BENCHES/wrk/bench.lua

DURATION=${BENCH_DURATION:-10}
WARMUP=${BENCH_WARMUP:-3}
CONNS=${BENCH_CONNECTIONS:-32}
THREADS=${BENCH_THREADS:-1}
HALF_DELAY_MS=${BENCH_HALF_DELAY_MS:-10}
NROUTES=${BENCH_ROUTES:-10000}
RELOAD_WRITES=${BENCH_RELOAD_WRITES:-200}
WRITE_DURATION=${BENCH_WRITE_DURATION:-5}
WRITE_CONNS=${BENCH_WRITE_CONNECTIONS:-16}
CREATE_CONC=${BENCH_CREATE_CONCURRENCY:-4}
RESULTS_DIR=${BENCH_RESULTS_DIR:-$BENCHES/results}
STARTED=$(date +%s)
STAMP=$(date -u +%Y%m%dT%H%M%SZ)

log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ------------------------------------------------------------------ tools
missing_tools() {
    local t out=()
    for t in nginx wrk taskset; do
        command -v "$t" >/dev/null 2>&1 || [[ -x /usr/sbin/$t ]] || out+=("$t")
    done
    echo "${out[@]:-}"
}

ensure_tools() {
    export PATH=$PATH:/usr/sbin:/sbin
    local missing
    missing=$(missing_tools)
    [[ -z $missing ]] && return 0
    # An installation may be running in the background: wait for it
    # rather than starting a second apt-get.
    if [[ -f /tmp/apt.log ]] && ! grep -q "apt done" /tmp/apt.log; then
        log "waiting for the background installation (/tmp/apt.log) to finish: $missing"
        local i
        for ((i = 0; i < 600; i++)); do
            grep -q "apt done" /tmp/apt.log && break
            sleep 1
        done
        missing=$(missing_tools)
        [[ -z $missing ]] && return 0
    fi
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        log "installing $missing with apt-get"
        apt-get -o DPkg::Lock::Timeout=300 update -qq
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
            $(for t in $missing; do [[ $t == taskset ]] && echo util-linux || echo "$t"; done)
        missing=$(missing_tools)
        [[ -z $missing ]] && return 0
    fi
    die "missing: $missing. Install them with: sudo apt-get install nginx wrk  (taskset is in util-linux)"
}

ensure_tools
for t in curl python3 node cargo; do
    command -v "$t" >/dev/null || die "$t is required"
done

# ------------------------------------------------------------------ build
cd "$ROOT"
if [[ -z ${BENCH_NO_BUILD:-} ]]; then
    log "cargo build --release"
    cargo build --release --quiet --bin portcullis
fi
BIN=$ROOT/target/release/portcullis
[[ -x $BIN ]] || die "$BIN not found (run cargo build --release)"
if [[ ! -d $ROOT/tests/idp/node_modules ]]; then
    log "installing the test identity provider's npm packages (npm ci)"
    npm ci --prefix "$ROOT/tests/idp" --silent
fi

# ------------------------------------------------------------------ pinning
# The gateway under test on CPU 0, load generator and upstream on CPU 1.
if [[ $(nproc) -ge 2 ]]; then
    PIN_GW=(taskset -c 0)
    PIN_LOAD=(taskset -c 1)
    PINNING="gateway on CPU 0; wrk, upstream nginx, identity provider, helpers on CPU 1"
else
    PIN_GW=()
    PIN_LOAD=()
    PINNING="none (fewer than 2 CPUs): numbers are not per-core"
    log "warning: fewer than 2 CPUs, running unpinned"
fi

# ------------------------------------------------------------------ cleanup
TMP=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-bench.XXXXXX")
PIDS=()          # processes started here, stopped in reverse order
NGINX_WORKERS=() # nginx workers (children of masters in PIDS), checked by name
SAMPLER_PID=

# Our own child, still running (a pid that exited may have been reused).
is_child() {
    local stat
    stat=$(cat /proc/"$1"/stat 2>/dev/null) || return 1
    stat=${stat##*) } # after "pid (comm) ": state ppid ...
    [[ $(awk '{print $2}' <<<"$stat") == "$$" ]]
}

stop_pid() { # pid [seconds]
    local pid=$1 limit=$((${2:-5} * 10)) i
    is_child "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < limit; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true # reap quietly (no "Killed" notice)
}

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    [[ -n $SAMPLER_PID ]] && stop_pid "$SAMPLER_PID" 1
    local i
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        stop_pid "${PIDS[$i]}" 12
    done
    for pid in "${NGINX_WORKERS[@]}"; do
        # Only if it is still an nginx worker of ours (its master is gone).
        if [[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' </proc/"$pid"/cmdline | grep -q "^nginx: worker"; then
            kill -KILL "$pid" 2>/dev/null
        fi
    done
    wait 2>/dev/null
    if [[ $rc -ne 0 ]]; then
        for f in "$TMP"/*.log "$TMP"/*/*.log; do
            [[ -s $f ]] || continue
            echo "---- tail of $f" >&2
            tail -n 20 "$f" >&2
        done
    fi
    if [[ -n ${BENCH_KEEP_TMP:-} ]]; then
        log "kept $TMP"
    else
        rm -rf "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

helper() { "${PIN_LOAD[@]}" python3 "$HELPER" "$@"; }
RESULTS=$TMP/results.jsonl
: >"$RESULTS"

# ------------------------------------------------------------------ ports, key
read -r P_UP P_A P_B P_NGX P_GW P_ADMIN P_IDP < <(helper ports 7)
UP=127.0.0.1:$P_UP
NODE_A=127.0.0.1:$P_A
NODE_B=127.0.0.1:$P_B
ADMIN_KEY=${PORTCULLIS_ADMIN_KEY:-bench-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')}
ADMIN=http://127.0.0.1:$P_ADMIN
GW=http://127.0.0.1:$P_GW

# ------------------------------------------------------------------ nginx configs
[[ $(id -u) -eq 0 ]] && chmod 0711 "$TMP" # nginx workers run as nobody under root
BODY=$(head -c 1024 /dev/zero | tr '\0' 'x') # the fixed 1 KB answer

nginx_common() { # dir
    cat <<EOF
worker_processes 1;
daemon off;
pid $1/nginx.pid;
error_log $1/error.log warn;
worker_rlimit_nofile 16384;
events { worker_connections 8192; }
EOF
}
nginx_http_common() { # dir
    cat <<EOF
    access_log off;
    default_type text/plain;
    keepalive_timeout 120s;
    keepalive_requests 10000000;
    client_body_temp_path $1/client_body;
    proxy_temp_path $1/proxy;
    fastcgi_temp_path $1/fastcgi;
    uwsgi_temp_path $1/uwsgi;
    scgi_temp_path $1/scgi;
EOF
}

mkdir -p "$TMP/upstream" "$TMP/nginx-proxy"
{
    nginx_common "$TMP/upstream"
    echo "http {"
    nginx_http_common "$TMP/upstream"
    cat <<EOF
    server {
        listen $UP backlog=4096;
        location / { return 200 "$BODY"; }
    }
    # Two versions of an upstream for the hot-reload measurement.
    server {
        listen $NODE_A;
        location / { add_header X-Version a always; return 200 "a"; }
    }
    server {
        listen $NODE_B;
        location / { add_header X-Version b always; return 200 "b"; }
    }
}
EOF
} >"$TMP/upstream/nginx.conf"

{
    nginx_common "$TMP/nginx-proxy"
    echo "http {"
    nginx_http_common "$TMP/nginx-proxy"
    cat <<EOF
    upstream backend {
        server $UP;
        keepalive 64;
        keepalive_requests 10000000;
        keepalive_timeout 120s;
    }
    server {
        listen 127.0.0.1:$P_NGX backlog=4096;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # The same forwarding headers Portcullis sets.
            proxy_set_header Host \$host;
            proxy_set_header X-Real-IP \$remote_addr;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$host;
        }
    }
}
EOF
} >"$TMP/nginx-proxy/nginx.conf"

declare -A NGX_MASTER
# An nginx instance's processes: master and workers.
nginx_pids() { # name
    local m=${NGX_MASTER[$1]}
    echo "$m" $(cat /proc/"$m"/task/*/children 2>/dev/null)
}
# CPU time (clock ticks, user + system, all threads) of some processes.
cpu_ticks() { # pid...
    local pid stat sum=0
    for pid in "$@"; do
        stat=$(cat /proc/"$pid"/stat 2>/dev/null) || continue
        stat=${stat##*) }
        sum=$((sum + $(awk '{print $12 + $13}' <<<"$stat")))
    done
    echo "$sum"
}
CLK_TCK=$(getconf CLK_TCK)
# Waits (up to MAX seconds) until a process uses under 2 % of a core over
# one second; logs how long that took.
wait_quiet() { # pid max
    local t0 t1 waited=0
    while ((waited < $2)); do
        t0=$(cpu_ticks "$1")
        sleep 1
        t1=$(cpu_ticks "$1")
        waited=$((waited + 1))
        if (((t1 - t0) * 100 < 2 * CLK_TCK)); then
            log "pid $1 quiet after ${waited}s"
            return 0
        fi
    done
    log "warning: pid $1 still busy after ${2}s"
}

start_nginx() { # name pin...
    local name=$1
    shift
    "$@" nginx -p "$TMP/$name" -c "$TMP/$name/nginx.conf" -e "$TMP/$name/error.log" \
        >"$TMP/$name/stdout.log" 2>&1 &
    PIDS+=($!)
    local master=$! i
    NGX_MASTER[$name]=$master
    for ((i = 0; i < 50; i++)); do
        [[ -s $TMP/$name/nginx.pid ]] && break
        kill -0 "$master" 2>/dev/null || die "nginx ($name) did not start: $(cat "$TMP/$name/error.log")"
        sleep 0.1
    done
    sleep 0.2
    local kids
    kids=$(cat /proc/"$master"/task/*/children 2>/dev/null || true)
    # shellcheck disable=SC2206
    NGINX_WORKERS+=($kids)
}

log "starting the upstream nginx ($UP) and the nginx proxy (127.0.0.1:$P_NGX)"
start_nginx upstream "${PIN_LOAD[@]}"
start_nginx nginx-proxy "${PIN_GW[@]}"
helper wait "http://$UP/" 10
helper wait "http://127.0.0.1:$P_NGX/" 10

# ------------------------------------------------------------------ identity provider
echo '{"accessTokenTtl": 3600}' >"$TMP/idp.json"
log "starting the test identity provider"
IDP_CONFIG=$TMP/idp.json "${PIN_LOAD[@]}" node "$ROOT/tests/idp/provider.mjs" --port "$P_IDP" \
    >"$TMP/idp.out" 2>"$TMP/idp.log" &
PIDS+=($!)
for ((i = 0; i < 100; i++)); do
    grep -q READY "$TMP/idp.out" 2>/dev/null && break
    sleep 0.1
done
ISSUER=$(awk '/^READY/ {print $2}' "$TMP/idp.out")
[[ -n $ISSUER ]] || die "the identity provider did not start"

# ------------------------------------------------------------------ Portcullis
GW_PID=
DEADLOCKS=0
start_gateway() {
    env -u PORTCULLIS_CONFIG PORTCULLIS_ADMIN_KEY="$ADMIN_KEY" \
        PORTCULLIS_LOG="${BENCH_PORTCULLIS_LOG:-info}" NO_COLOR=1 \
        "${PIN_GW[@]}" "$BIN" --data-dir "$TMP/data" --proxy-listen "127.0.0.1:$P_GW" \
        --admin-listen "127.0.0.1:$P_ADMIN" --workers 1 >>"$TMP/portcullis.log" 2>&1 &
    GW_PID=$!
    PIDS+=("$GW_PID")
    helper wait "$ADMIN/apisix/admin/routes" 20
    helper wait "$GW/" 10
}
# The Admin API still completes a write (and a read) within 5 s each. A hung
# write can leave reads working, so a write is the probe.
admin_alive() {
    local code k=(-s -m 5 -o /dev/null -w '%{http_code}' -H "X-API-KEY: $ADMIN_KEY")
    code=$(curl "${k[@]}" -X PUT "$ADMIN/apisix/admin/routes/bench-probe" \
        -d "{\"uri\":\"/bench-probe\",\"upstream\":{\"nodes\":{\"$UP\":1}}}" || true)
    [[ $code == 2* ]] || return 1
    code=$(curl "${k[@]}" -X DELETE "$ADMIN/apisix/admin/routes/bench-probe" || true)
    [[ $code == 2* ]]
}
# The Admin API hung (see README, Performance): record it, restart the
# gateway on the same data directory so the remaining scenarios can run.
restart_gateway() { # where
    DEADLOCKS=$((DEADLOCKS + 1))
    record "{\"name\":\"deadlock$DEADLOCKS\",\"type\":\"deadlock\",\"where\":\"$1\"}"
    log "warning: the Admin API stopped answering during $1; restarting Portcullis (pid $GW_PID) on the same data"
    stop_pid "$GW_PID" 3
    start_gateway
}

log "starting Portcullis ($GW, admin $ADMIN, --workers 1)"
start_gateway

admin() { # method path [json]
    local code
    code=$(curl -sS -m 30 -o "$TMP/admin.body" -w '%{http_code}' -X "$1" "$ADMIN/apisix/admin/$2" \
        -H "X-API-KEY: $ADMIN_KEY" -H 'Content-Type: application/json' ${3:+-d "$3"})
    [[ $code == 2* || ($1 == DELETE && $code == 404) ]] ||
        die "$1 $2 -> $code: $(cat "$TMP/admin.body")"
}
expect_200() { # url [header]
    local code
    code=$(curl -sS -m 10 -o "$TMP/check.body" -w '%{http_code}' "$1" ${2:+-H "$2"})
    [[ $code == 200 ]] || die "GET $1 -> $code: $(head -c 300 "$TMP/check.body")"
}
rss_kb() { awk '/^VmRSS:/ {print $2}' /proc/"$GW_PID"/status; }
record() { printf '%s\n' "$1" >>"$RESULTS"; }

# Max VmRSS of the gateway while a run lasts.
sample_start() {
    (
        max=0
        while :; do
            v=$(awk '/^VmRSS:/ {print $2}' /proc/"$GW_PID"/status 2>/dev/null || echo 0)
            ((v > max)) && max=$v && echo "$max" >"$TMP/rss.max"
            sleep 0.2
        done
    ) &
    SAMPLER_PID=$!
}
sample_stop() { # record-name
    stop_pid "$SAMPLER_PID" 1
    wait "$SAMPLER_PID" 2>/dev/null || true
    SAMPLER_PID=
    record "{\"name\":\"$1\",\"type\":\"rss\",\"kb\":$(cat "$TMP/rss.max")}"
    rm -f "$TMP/rss.max"
}

# run_wrk NAME URL CONNS [extra wrk args...]; env BENCH_DELAY_MS for pacing,
# WRK_KV for extra fields of the record.
run_wrk() {
    local name=$1 url=$2 conns=$3
    shift 3
    log "$name: warm-up ${WARMUP}s, run ${DURATION}s, -t$THREADS -c$conns${BENCH_DELAY_MS:+, paced ~${BENCH_DELAY_MS} ms per connection}"
    "${PIN_LOAD[@]}" wrk -t"$THREADS" -c"$conns" -d"${WARMUP}s" -s "$LUA" "$@" "$url" >"$TMP/wrk-$name-warmup.txt"
    local perf_pid=
    if [[ -n ${BENCH_PERF:-} && $url == "$GW"* && -z ${BENCH_DELAY_MS:-} ]]; then
        # Sample the gateway's CPU while wrk runs (software clock: works in VMs).
        "${PIN_LOAD[@]}" perf record -q -e cpu-clock -F 999 -g -p "$GW_PID" -o "$TMP/perf-$name.data" \
            -- sleep "$DURATION" >/dev/null 2>&1 &
        perf_pid=$!
        PIDS+=("$perf_pid")
    fi
    # CPU time the server under test spends per request: much less
    # sensitive than req/s to other work sharing the machine.
    local cpu_pids t0 t1
    case $url in
    "$GW"*) cpu_pids=$GW_PID ;;
    http://127.0.0.1:$P_NGX/*) cpu_pids=$(nginx_pids nginx-proxy) ;;
    *) cpu_pids=$(nginx_pids upstream) ;;
    esac
    # shellcheck disable=SC2086
    t0=$(cpu_ticks $cpu_pids)
    "${PIN_LOAD[@]}" wrk -t"$THREADS" -c"$conns" -d"${DURATION}s" -s "$LUA" "$@" "$url" >"$TMP/wrk-$name.txt"
    # shellcheck disable=SC2086
    t1=$(cpu_ticks $cpu_pids)
    if [[ -n $perf_pid ]]; then
        wait "$perf_pid" || true
        mkdir -p "$RESULTS_DIR/perf"
        perf report -i "$TMP/perf-$name.data" --stdio --no-children --sort dso,symbol 2>/dev/null |
            sed -E 's/[[:space:]]+(-[[:space:]]+-)?[[:space:]]*$//' | grep -v '^$' |
            head -n 400 >"$RESULTS_DIR/perf/$STAMP-$name.txt" || true
    fi
    # shellcheck disable=SC2086
    helper wrk "$name" "connections=$conns" "url=$url" "cpu_ticks=$((t1 - t0))" "clk_tck=$CLK_TCK" \
        ${WRK_KV:-} <"$TMP/wrk-$name.txt" >>"$RESULTS"
    local rps errs
    rps=$(helper get "$RESULTS" "$name" rps)
    errs=$(helper get "$RESULTS" "$name" errors)
    log "$name: $(printf '%.0f' "$rps") req/s, p50 $(helper get "$RESULTS" "$name" p50_us) us, p99 $(helper get "$RESULTS" "$name" p99_us) us, $(helper get "$RESULTS" "$name" cpu_us_per_req) us CPU/request, errors $errs"
    [[ $errs == 0 ]] || log "warning: $name had $errs errors or non-2xx answers (see wrk-$name.txt)"
}

# run_writes NAME CONNS: PUTs for WRITE_DURATION seconds over CONNS connections.
run_writes() {
    local name=$1 conns=$2
    log "$name: ${WRITE_DURATION}s of Admin API PUTs over $conns connection(s)"
    "${PIN_LOAD[@]}" env BENCH_PUT_IDS=64 BENCH_ADMIN_KEY="$ADMIN_KEY" BENCH_NODE="$UP" \
        wrk -t1 -c"$conns" -d"${WRITE_DURATION}s" --timeout 5s -s "$LUA" "$ADMIN/" >"$TMP/wrk-$name.txt"
    helper wrk "$name" "connections=$conns" <"$TMP/wrk-$name.txt" >>"$RESULTS"
    log "$name: $(printf '%.0f' "$(helper get "$RESULTS" "$name" rps)") writes/s, errors $(helper get "$RESULTS" "$name" errors)"
    admin_alive || restart_gateway "$name"
}

# create_routes FIRST LAST CONC: routes r<i> (uri /svc/<i>/*) in chunks; a
# chunk that fails because the Admin API hung is redone after a restart.
create_routes() {
    local first=$1 last=$2 conc=$3 lo hi tries
    for ((lo = first; lo <= last; lo += 1000)); do
        hi=$((lo + 999 > last ? last : lo + 999))
        for tries in 1 2 3 4; do
            helper routes "$ADMIN" "$ADMIN_KEY" "$lo" "$hi" "$UP" "$conc" && break
            admin_alive && die "writing routes r$lo..r$hi failed"
            ((tries < 4)) || die "the Admin API hung $tries times writing routes r$lo..r$hi"
            restart_gateway "route creation (r$lo..r$hi, $conc concurrent writes)"
        done
    done
}

# ------------------------------------------------------------------ base configuration
log "configuring the plain, JWT and introspection routes"
OIDC_COMMON="\"client_id\":\"gw-client\",\"client_secret\":\"gw-secret-123\",\"discovery\":\"$ISSUER/.well-known/openid-configuration\",\"bearer_only\":true"
admin PUT routes/plain "{\"uri\":\"/plain/*\",\"upstream\":{\"type\":\"roundrobin\",\"nodes\":{\"$UP\":1}}}"
admin PUT routes/jwt "{\"uri\":\"/jwt/*\",\"plugins\":{\"openid-connect\":{$OIDC_COMMON,\"use_jwks\":true,\"token_signing_alg_values_expected\":\"RS256\"}},\"upstream\":{\"type\":\"roundrobin\",\"nodes\":{\"$UP\":1}}}"
admin PUT routes/intro "{\"uri\":\"/intro/*\",\"plugins\":{\"openid-connect\":{$OIDC_COMMON,\"introspection_endpoint_auth_method\":\"client_secret_basic\",\"introspection_interval\":3600}},\"upstream\":{\"type\":\"roundrobin\",\"nodes\":{\"$UP\":1}}}"
sleep 1
record "{\"name\":\"rss_idle\",\"type\":\"rss\",\"kb\":$(rss_kb)}"
log "idle RSS: $(rss_kb) kB"

JWT=$(helper token "$ISSUER" urn:portcullis:rs256)
OPAQUE=$(helper token "$ISSUER")
[[ $JWT == *.*.* ]] || die "did not get a JWT access token"
expect_200 "$GW/plain/index.html"
expect_200 "$GW/jwt/index.html" "Authorization: Bearer $JWT"
expect_200 "$GW/intro/index.html" "Authorization: Bearer $OPAQUE"
code=$(curl -s -m 10 -o /dev/null -w '%{http_code}' "$GW/jwt/index.html")
[[ $code == 401 ]] || die "the JWT route let a request without a token through ($code)"
code=$(curl -s -m 10 -o /dev/null -w '%{http_code}' -H "Authorization: Bearer not-a-token" "$GW/intro/index.html")
[[ $code == 401 ]] || die "the introspection route accepted a bad token ($code)"

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

# ------------------------------------------------------------------ saturating runs
run_wrk direct "http://$UP/plain/index.html" "$CONNS"
run_wrk nginx "http://127.0.0.1:$P_NGX/plain/index.html" "$CONNS"
sample_start
run_wrk plain "$GW/plain/index.html" "$CONNS"
sample_stop rss_plain_load
run_wrk jwt "$GW/jwt/index.html" "$CONNS" -H "Authorization: Bearer $JWT"
run_wrk introspection "$GW/intro/index.html" "$CONNS" -H "Authorization: Bearer $OPAQUE"

# ------------------------------------------------------------------ half load
# wrk2 is not packaged, so wrk is paced instead: each connection pauses
# about HALF_DELAY_MS (with jitter) after every answer, and
# connections = rate x pause, for half the rate the plain route sustained.
# The same paced load goes direct, through nginx and through Portcullis.
PLAIN_RPS=$(helper get "$RESULTS" plain rps)
HALF_RPS=$(python3 -c "print(round($PLAIN_RPS / 2))")
HALF_CONNS=$(python3 -c "import math; print(min(2000, max(1, math.ceil($HALF_RPS * $HALF_DELAY_MS / 1000))))")
for target in direct:"http://$UP/plain/index.html" nginx:"http://127.0.0.1:$P_NGX/plain/index.html" plain:"$GW/plain/index.html"; do
    BENCH_DELAY_MS=$HALF_DELAY_MS WRK_KV="delay_ms=$HALF_DELAY_MS target_rps=$HALF_RPS" \
        run_wrk "half_${target%%:*}" "${target#*:}" "$HALF_CONNS"
done

# ------------------------------------------------------------------ hot reload, durable writes
log "hot reload: $RELOAD_WRITES Admin API writes, each followed by polling the proxy"
helper reload reload "$ADMIN" "$ADMIN_KEY" "$GW" "$NODE_A" "$NODE_B" "$RELOAD_WRITES" >>"$RESULTS"
run_writes admin_writes_1 1
run_writes admin_writes "$WRITE_CONNS"

# ------------------------------------------------------------------ 10 routes vs 10 000 routes
log "replacing the configuration with 10 routes"
# shellcheck disable=SC2046
helper delete "$ADMIN" "$ADMIN_KEY" plain jwt intro reload $(for i in $(seq 0 63); do echo "w$i"; done)
create_routes 0 9 1
expect_200 "$GW/svc/9/index.html"
run_wrk routes10 "$GW/svc/9/index.html" "$CONNS"

log "adding routes up to $NROUTES through the Admin API ($CREATE_CONC concurrent writes)"
T0=$(date +%s.%N)
create_routes 10 $((NROUTES - 1)) "$CREATE_CONC"
record "{\"name\":\"create\",\"type\":\"create\",\"routes\":$((NROUTES - 10)),\"seconds\":$(python3 -c "print(round($(date +%s.%N) - $T0, 2))"),\"concurrency\":$CREATE_CONC}"
LAST=$((NROUTES - 2)) # one of the last created
expect_200 "$GW/svc/$LAST/index.html"
# Creating 10 000 routes leaves the store's background threads busy for a
# while (they share the gateway's CPU): measure the steady state.
wait_quiet "$GW_PID" 30
record "{\"name\":\"rss_10k_idle\",\"type\":\"rss\",\"kb\":$(rss_kb)}"
log "RSS with $NROUTES routes, idle: $(rss_kb) kB"
sample_start
run_wrk routes10k "$GW/svc/$LAST/index.html" "$CONNS"
sample_stop rss_10k_load

log "hot reload with $NROUTES routes"
helper reload reload10k "$ADMIN" "$ADMIN_KEY" "$GW" "$NODE_A" "$NODE_B" "$RELOAD_WRITES" >>"$RESULTS"
helper rebuild rebuild10k "$TMP/portcullis.log" "$NROUTES" >>"$RESULTS"
record "{\"name\":\"deadlocks\",\"type\":\"deadlocks\",\"count\":$DEADLOCKS}"

# ------------------------------------------------------------------ report
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
cpu_model=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
mem_total=$(awk '/^MemTotal:/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(git -C "$ROOT" status --porcelain 2>/dev/null | grep -q . && echo true || echo false)
python3 - "$RESULTS" <<EOF
import json, sys
info = {
    "type": "info", "name": "info",
    "timestamp": "$STAMP", "date": "$(date -u '+%Y-%m-%d %H:%M UTC')",
    "commit": "$commit", "dirty": $( [[ $dirty == true ]] && echo True || echo False ),
    "nproc": $(nproc), "cpu": "$cpu_model", "memory": "$mem_total",
    "kernel": "$(uname -r)", "nginx": "$(nginx -v 2>&1 | sed 's/.*: //')",
    "wrk": "$(wrk -v 2>&1 | head -1 | awk '{print $2}')",
    "pinning": "$PINNING", "duration_s": $DURATION, "warmup_s": $WARMUP,
    "connections": $CONNS, "threads": $THREADS, "routes": $NROUTES,
    "loadavg_start": "$LOAD_START", "loadavg_end": "$LOAD_END",
    "elapsed_s": $(($(date +%s) - STARTED)),
}
with open(sys.argv[1], "a") as f:
    f.write(json.dumps(info) + "\n")
EOF
echo
echo "Portcullis benchmark — $(date -u '+%Y-%m-%d %H:%M UTC'), commit $commit$([[ $dirty == true ]] && echo ' (dirty)'), $(nproc) CPUs ($cpu_model), $mem_total"
echo "wrk -t$THREADS -c$CONNS, ${WARMUP}s warm-up + ${DURATION}s per scenario; $PINNING; load average $LOAD_START -> $LOAD_END"
echo
python3 "$HELPER" report "$RESULTS" "$RESULTS_DIR"
log "done in $(($(date +%s) - STARTED)) s"
exit 0
}
