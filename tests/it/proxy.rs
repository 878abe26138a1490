//! The data plane, black-box: the real binary in front of real echo
//! upstreams. Route matching and precedence (APISIX `radixtree_host_uri`),
//! weighted round robin, proxy-side errors, streaming, hot reload, restart,
//! and the attack kinds K01 (path canonicalisation), K02 (query / `;` never
//! decide the route), K03 (forwarding headers), K05 (hop-by-hop), K16
//! (precedence independent of creation order), K17 (framing) and the
//! Upgrade handling of routes without `enable_websocket`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{
    free_port, raw_request, EchoUpstream, Gateway, GatewayOpts, PatternReader, RawPart,
    RawResponse, Recorded, Resp,
};

/// APISIX's no-match body (`apisix/init.lua`), newline included.
const NOT_FOUND_BODY: &str = "{\"error_msg\":\"404 Route Not Found\"}\n";
const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// helpers

/// Named echo upstreams; the name comes back in `X-Echo-Server`, so a
/// response tells which upstream (and so which route) served it.
struct Fleet(BTreeMap<String, EchoUpstream>);

impl Fleet {
    fn new(names: &[&str]) -> Fleet {
        Fleet(
            names
                .iter()
                .map(|n| (n.to_string(), EchoUpstream::start_named(n)))
                .collect(),
        )
    }

    fn get(&self, name: &str) -> &EchoUpstream {
        self.0
            .get(name)
            .unwrap_or_else(|| panic!("no upstream named {name:?} in the fleet"))
    }

    /// An inline upstream object with the one node `name`.
    fn up(&self, name: &str) -> Value {
        upstream_of(self.get(name))
    }

    /// `{"uri": uri, "upstream": <name>}`.
    fn route(&self, uri: &str, name: &str) -> Value {
        json!({"uri": uri, "upstream": self.up(name)})
    }

    /// Like [`Fleet::route`] with extra fields merged in.
    fn route_with(&self, uri: &str, name: &str, extra: Value) -> Value {
        let mut r = self.route(uri, name);
        merge(&mut r, extra);
        r
    }

    fn total(&self) -> usize {
        self.0.values().map(EchoUpstream::count).sum()
    }
}

fn upstream_of(up: &EchoUpstream) -> Value {
    json!({"type": "roundrobin", "nodes": {up.node(): 1}})
}

fn merge(into: &mut Value, extra: Value) {
    let (Some(into), Value::Object(extra)) = (into.as_object_mut(), extra) else {
        panic!("merge needs two objects");
    };
    into.extend(extra);
}

/// Which upstream served `r` (its name), or the status when the gateway
/// answered by itself.
fn who(r: &Resp) -> String {
    match r.header("x-echo-server") {
        Some(name) if r.status == 200 => name.to_string(),
        _ => r.status.to_string(),
    }
}

/// Sends `method path` with an optional Host and tells who served it.
fn served(gw: &Gateway, method: &str, path: &str, host: Option<&str>) -> String {
    let headers: Vec<(&str, &str)> = host.map(|h| ("Host", h)).into_iter().collect();
    who(&gw.proxy(method, path, &headers))
}

/// One expectation of a routing table: `method path` with `host` is served
/// by `want` (an upstream name, or a status such as `"404"`).
struct Case {
    method: &'static str,
    path: &'static str,
    host: Option<&'static str>,
    want: &'static str,
}

const fn get(path: &'static str, want: &'static str) -> Case {
    Case {
        method: "GET",
        path,
        host: None,
        want,
    }
}

const fn get_on(host: &'static str, path: &'static str, want: &'static str) -> Case {
    Case {
        method: "GET",
        path,
        host: Some(host),
        want,
    }
}

const fn with(method: &'static str, path: &'static str, want: &'static str) -> Case {
    Case {
        method,
        path,
        host: None,
        want,
    }
}

fn check_cases(gw: &Gateway, label: &str, cases: &[Case]) {
    let mut wrong = Vec::new();
    for c in cases {
        let got = served(gw, c.method, c.path, c.host);
        if got != c.want {
            wrong.push(format!(
                "{} {} (Host: {}) → {got}, want {}",
                c.method,
                c.path,
                c.host.unwrap_or("<proxy addr>"),
                c.want
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{label}: {} of {} requests routed wrongly:\n  {}",
        wrong.len(),
        cases.len(),
        wrong.join("\n  ")
    );
}

/// Writes one request on a fresh connection. `head` is everything after
/// the request line up to (not including) the blank line; `Connection:
/// close` is added so the exchange ends when the gateway closes.
fn raw_get(gw: &Gateway, target: &str, head: &str) -> RawResponse {
    let req =
        format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}Connection: close\r\n\r\n");
    raw_request(gw.proxy_addr(), req.as_bytes())
}

fn first(raw: &RawResponse) -> RawPart {
    raw.responses()
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no HTTP response parsed from {:?}", raw.text))
}

/// The echo JSON of a raw response (panics if it is not one).
fn echo_of(part: &RawPart) -> Value {
    serde_json::from_slice(&part.body).unwrap_or_else(|e| {
        panic!(
            "not an echo body ({e}); status {}: {}",
            part.status,
            part.body_text()
        )
    })
}

/// The single request `up` recorded since it was cleared.
fn only_request(up: &EchoUpstream) -> Recorded {
    let all = up.wait_for(1, WAIT);
    assert_eq!(
        all.len(),
        1,
        "{}: expected one request: {all:#?}",
        up.name()
    );
    all.into_iter().next().expect("one request")
}

// ---------------------------------------------------------------------------
// matching and precedence (§10, K16, B36)

/// A routing table touching every matching rule; see [`precedence_cases`].
fn precedence_table(f: &Fleet) -> Vec<(&'static str, Value)> {
    vec![
        // Exact vs prefix.
        ("exact", f.route("/exact", "exact")),
        ("star", f.route("/star*", "star")),
        ("slash", f.route("/slash/*", "slash")),
        ("both-exact", f.route("/both", "both-exact")),
        ("both-prefix", f.route("/both*", "both-prefix")),
        // The APISIX docs table (router-radixtree.md).
        ("blog-foo", f.route("/blog/foo/*", "blog-foo")),
        ("blog-foo-a", f.route("/blog/foo/a/*", "blog-foo-a")),
        ("blog-foo-c", f.route("/blog/foo/c/*", "blog-foo-c")),
        ("blog-foo-bar", f.route("/blog/foo/bar", "blog-foo-bar")),
        // Priority orders only routes sharing a path; creation order and
        // ids are chosen so neither agrees with priority.
        (
            "a-prio-low",
            f.route_with("/prio", "prio-low", json!({"priority": 1})),
        ),
        (
            "z-prio-high",
            f.route_with("/prio", "prio-high", json!({"priority": 5})),
        ),
        (
            "m-prio-neg",
            f.route_with("/prio", "prio-neg", json!({"priority": -3})),
        ),
        // Equal path and priority: any winner, but always the same one.
        ("tie-1", f.route("/tie", "tie-1")),
        ("tie-2", f.route("/tie", "tie-2")),
        // Hosts before host-less, whatever the priority or path length.
        (
            "h-host",
            f.route_with("/h/*", "h-host", json!({"host": "a.test"})),
        ),
        (
            "h-any",
            f.route_with("/h/*", "h-any", json!({"priority": 100})),
        ),
        (
            "h-deep",
            f.route_with("/h/deep", "h-deep", json!({"priority": 100})),
        ),
        // Wildcard hosts; an exact host beats the wildcard.
        (
            "w-wild",
            f.route_with("/w/*", "w-wild", json!({"host": "*.example.com"})),
        ),
        (
            "w-exact",
            f.route_with("/w/*", "w-exact", json!({"host": "x.example.com"})),
        ),
        // A host list.
        (
            "hosts-list",
            f.route_with("/l", "hosts-list", json!({"hosts": ["l1.test", "l2.test"]})),
        ),
        // `/*` with a high priority never beats a longer prefix.
        (
            "catch-all",
            f.route_with(
                "/*",
                "catch-all",
                json!({"host": "catch.test", "priority": 100}),
            ),
        ),
        (
            "catch-test",
            f.route_with("/test/*", "catch-test", json!({"host": "catch.test"})),
        ),
        // B36 with plain routes: same host and uri, the higher priority
        // wins in both creation orders.
        (
            "open",
            f.route_with(
                "/api/*",
                "open",
                json!({"hosts": ["a.example.test"], "priority": 0}),
            ),
        ),
        (
            "guarded",
            f.route_with(
                "/api/*",
                "guarded",
                json!({"hosts": ["a.example.test"], "priority": 10}),
            ),
        ),
        // Methods and remote_addrs fall through to the next candidate.
        (
            "m-get-post",
            f.route_with("/m", "m-get-post", json!({"methods": ["GET", "POST"]})),
        ),
        (
            "mf-post",
            f.route_with(
                "/mf",
                "mf-post",
                json!({"methods": ["POST"], "priority": 10}),
            ),
        ),
        ("mf-any", f.route("/mf*", "mf-any")),
        (
            "ra-in",
            f.route_with("/ra/in", "ra-in", json!({"remote_addrs": ["127.0.0.1/32"]})),
        ),
        (
            "ra-bare",
            f.route_with("/ra/bare", "ra-in", json!({"remote_addr": "127.0.0.1"})),
        ),
        (
            "ra-out",
            f.route_with("/ra/out", "ra-out", json!({"remote_addrs": ["10.0.0.0/8"]})),
        ),
        (
            "ra-fb-out",
            f.route_with(
                "/ra/fb",
                "ra-out",
                json!({"remote_addrs": ["10.0.0.0/8"], "priority": 10}),
            ),
        ),
        ("ra-fb-any", f.route("/ra/fb", "ra-fb-any")),
        // uris.
        (
            "uris",
            json!({"uris": ["/u/one", "/u/two/*"], "upstream": f.up("uris")}),
        ),
    ]
}

const PRECEDENCE_UPSTREAMS: &[&str] = &[
    "exact",
    "star",
    "slash",
    "both-exact",
    "both-prefix",
    "blog-foo",
    "blog-foo-a",
    "blog-foo-c",
    "blog-foo-bar",
    "prio-low",
    "prio-high",
    "prio-neg",
    "tie-1",
    "tie-2",
    "h-host",
    "h-any",
    "h-deep",
    "w-wild",
    "w-exact",
    "hosts-list",
    "catch-all",
    "catch-test",
    "open",
    "guarded",
    "m-get-post",
    "mf-post",
    "mf-any",
    "ra-in",
    "ra-out",
    "ra-fb-any",
    "uris",
];

fn precedence_cases() -> Vec<Case> {
    vec![
        // `uri` without `*` is a full-path match; the query is not part of it.
        get("/exact", "exact"),
        get("/exact?x=1", "exact"),
        get("/exact/", "404"),
        get("/exact/x", "404"),
        get("/exactly", "404"),
        // `/star*` matches the bare prefix and anything after it.
        get("/star", "star"),
        get("/star/", "star"),
        get("/starbar", "star"),
        get("/star/a/b", "star"),
        get("/sta", "404"),
        // `/slash/*` does not match `/slash`.
        get("/slash/x", "slash"),
        get("/slash/a/b", "slash"),
        get("/slash", "404"),
        get("/slashx", "404"),
        // Exact beats prefix.
        get("/both", "both-exact"),
        get("/both/1", "both-prefix"),
        get("/bothx", "both-prefix"),
        // The docs table.
        get("/blog/foo/a/b/c", "blog-foo-a"),
        get("/blog/foo/c/d", "blog-foo-c"),
        get("/blog/foo/gloo", "blog-foo"),
        get("/blog/foo/bar", "blog-foo-bar"),
        get("/blog/foo/bar/x", "blog-foo"),
        get("/blog/bar", "404"),
        // Priority.
        get("/prio", "prio-high"),
        // Hosts before host-less.
        get_on("a.test", "/h/x", "h-host"),
        get_on("a.test", "/h/deep", "h-host"),
        get_on("A.Test:8080", "/h/x", "h-host"),
        get_on("b.test", "/h/x", "h-any"),
        get_on("b.test", "/h/deep", "h-deep"),
        get("/h/x", "h-any"),
        // Wildcards.
        get_on("a.example.com", "/w/1", "w-wild"),
        get_on("a.b.example.com", "/w/1", "w-wild"),
        get_on("x.example.com", "/w/1", "w-exact"),
        get_on("example.com", "/w/1", "404"),
        get_on("aexample.com", "/w/1", "404"),
        get_on("a.example.com.evil.test", "/w/1", "404"),
        // Host lists.
        get_on("l1.test", "/l", "hosts-list"),
        get_on("l2.test", "/l", "hosts-list"),
        get_on("l3.test", "/l", "404"),
        get("/l", "404"),
        // `/*` never beats `/test/*`.
        get_on("catch.test", "/test/x", "catch-test"),
        get_on("catch.test", "/other", "catch-all"),
        // B36.
        get_on("a.example.test", "/api/x", "guarded"),
        // Methods.
        with("GET", "/m", "m-get-post"),
        with("POST", "/m", "m-get-post"),
        with("PUT", "/m", "404"),
        with("DELETE", "/m", "404"),
        with("GET", "/mf", "mf-any"),
        with("POST", "/mf", "mf-post"),
        // remote_addrs (the tests connect from 127.0.0.1).
        get("/ra/in", "ra-in"),
        get("/ra/bare", "ra-in"),
        get("/ra/out", "404"),
        get("/ra/fb", "ra-fb-any"),
        // uris.
        get("/u/one", "uris"),
        get("/u/two/x", "uris"),
        get("/u/two", "404"),
        get("/u/three", "404"),
    ]
}

#[test]
fn route_precedence_follows_apisix_and_not_creation_order() {
    let fleet = Fleet::new(PRECEDENCE_UPSTREAMS);
    let gw = Gateway::start();
    let table = precedence_table(&fleet);
    let cases = precedence_cases();

    let mut tie_winners = Vec::new();
    for (label, order) in [
        (
            "created in table order",
            (0..table.len()).collect::<Vec<_>>(),
        ),
        (
            "created in reverse order",
            (0..table.len()).rev().collect::<Vec<_>>(),
        ),
    ] {
        for &i in &order {
            let (id, value) = &table[i];
            gw.put_route(id, value.clone());
        }
        check_cases(&gw, label, &cases);
        let tie = served(&gw, "GET", "/tie", None);
        assert!(tie == "tie-1" || tie == "tie-2", "{label}: /tie → {tie}");
        tie_winners.push(tie);
        for (id, _) in &table {
            let r = gw.admin("DELETE", &format!("/apisix/admin/routes/{id}"), None);
            r.expect_status(200);
        }
        assert_eq!(
            served(&gw, "GET", "/exact", None),
            "404",
            "{label}: cleanup"
        );
    }
    assert_eq!(
        tie_winners[0], tie_winners[1],
        "equal path and priority: the winner changed with creation order"
    );
}

#[test]
fn b36_priority_wins_on_a_shared_host_and_uri_in_both_creation_orders() {
    let fleet = Fleet::new(&["open", "guarded"]);
    let gw = Gateway::start();
    let open = fleet.route_with(
        "/api/*",
        "open",
        json!({"hosts": ["a.example.test"], "priority": 0}),
    );
    let guarded = fleet.route_with(
        "/api/*",
        "guarded",
        json!({"hosts": ["a.example.test"], "priority": 10}),
    );
    // Ids on both sides of the guarded one, so neither creation order nor
    // the id tie-break can explain the winner.
    for (open_id, guarded_id) in [("open", "guarded"), ("a-open", "z-guarded")] {
        for (label, order) in [
            ("open first", [(open_id, &open), (guarded_id, &guarded)]),
            ("guarded first", [(guarded_id, &guarded), (open_id, &open)]),
        ] {
            for (id, v) in order {
                gw.put_route(id, v.clone());
            }
            for _ in 0..3 {
                assert_eq!(
                    served(&gw, "GET", "/api/x", Some("a.example.test")),
                    "guarded",
                    "ids {open_id}/{guarded_id}, {label}"
                );
            }
            for (id, _) in order {
                gw.admin("DELETE", &format!("/apisix/admin/routes/{id}"), None)
                    .expect_status(200);
            }
        }
    }
    assert_eq!(
        fleet.get("open").count(),
        0,
        "the low-priority route served"
    );
}

#[test]
fn no_match_and_excluded_method_answer_the_apisix_404() {
    let fleet = Fleet::new(&["m"]);
    let gw = Gateway::start();
    gw.put_route(
        "m",
        fleet.route_with("/m", "m", json!({"methods": ["GET"]})),
    );

    for (method, path) in [("GET", "/nothing/here"), ("PURGE", "/m"), ("POST", "/m")] {
        let r = gw.proxy(method, path, &[]);
        assert_eq!(r.status, 404, "{method} {path}: {}", r.body);
        assert_eq!(r.body, NOT_FOUND_BODY, "{method} {path}");
        assert_eq!(
            r.header("content-type"),
            Some("application/json"),
            "{method} {path}"
        );
    }
    assert_eq!(fleet.total(), 0);
    assert_eq!(served(&gw, "GET", "/m", None), "m");
}

#[test]
fn disabled_routes_are_skipped_until_enabled() {
    let fleet = Fleet::new(&["off"]);
    let gw = Gateway::start();
    gw.put_route("off", fleet.route_with("/off", "off", json!({"status": 0})));
    assert_eq!(served(&gw, "GET", "/off", None), "404");
    gw.put_route("off", fleet.route_with("/off", "off", json!({"status": 1})));
    assert_eq!(served(&gw, "GET", "/off", None), "off");
    gw.put_route("off", fleet.route_with("/off", "off", json!({"status": 0})));
    assert_eq!(served(&gw, "GET", "/off", None), "404");
}

#[test]
fn routes_through_a_service_use_its_upstream_and_inherit_its_hosts() {
    let fleet = Fleet::new(&["svc", "own", "named"]);
    let gw = Gateway::start();
    gw.put_resource(
        "services",
        "s1",
        json!({"upstream": fleet.up("svc"), "hosts": ["svc.test"]}),
    );
    gw.put_resource("upstreams", "u-named", fleet.up("named"));
    gw.put_resource("services", "s2", json!({"upstream_id": "u-named"}));
    gw.put_route("via-svc", json!({"uri": "/svc/*", "service_id": "s1"}));
    // The route's own upstream and hosts win over the service's.
    gw.put_route(
        "own",
        json!({"uri": "/own/*", "service_id": "s1", "upstream": fleet.up("own"), "host": "own.test"}),
    );
    gw.put_route("via-s2", json!({"uri": "/s2/*", "service_id": "s2"}));
    gw.put_route("by-id", json!({"uri": "/by-id", "upstream_id": "u-named"}));

    check_cases(
        &gw,
        "service routes",
        &[
            get_on("svc.test", "/svc/x", "svc"),
            get_on("other.test", "/svc/x", "404"),
            get("/svc/x", "404"),
            get_on("own.test", "/own/x", "own"),
            get_on("svc.test", "/own/x", "404"),
            get("/s2/x", "named"),
            get("/by-id", "named"),
        ],
    );
}

// ---------------------------------------------------------------------------
// round robin

#[test]
fn weighted_round_robin_is_exact_and_weight_zero_is_never_used() {
    let a = EchoUpstream::start_named("rr-a");
    let b = EchoUpstream::start_named("rr-b");
    let z = EchoUpstream::start_named("rr-zero");
    let gw = Gateway::start();
    gw.put_route(
        "rr",
        json!({"uri": "/rr/*", "upstream": {"type": "roundrobin",
            "nodes": {a.node(): 3, b.node(): 1}}}),
    );
    gw.put_route(
        "zero",
        json!({"uri": "/zero/*", "upstream": {"type": "roundrobin",
            "nodes": {a.node(): 1, z.node(): 0}}}),
    );

    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..400 {
        let r = gw.proxy("GET", &format!("/rr/{i}"), &[]);
        *counts.entry(who(&r)).or_default() += 1;
    }
    let expected: BTreeMap<String, usize> =
        [("rr-a".to_string(), 300), ("rr-b".to_string(), 100)].into();
    assert_eq!(counts, expected, "weights 3:1 over 400 requests");
    assert_eq!((a.count(), b.count()), (300, 100));

    for i in 0..40 {
        assert_eq!(served(&gw, "GET", &format!("/zero/{i}"), None), "rr-a");
    }
    assert_eq!(z.count(), 0, "a weight-0 node received traffic");
}

// ---------------------------------------------------------------------------
// proxy-side errors (§11)

/// A loopback port nobody listens on: connections to it are refused.
fn dead_node() -> String {
    format!("127.0.0.1:{}", free_port())
}

#[test]
fn refused_connections_are_502_and_retried_on_the_next_node() {
    let live = EchoUpstream::start_named("live");
    let gw = Gateway::start();
    gw.put_route(
        "dead",
        json!({"uri": "/dead", "upstream": {"nodes": {dead_node(): 1}}}),
    );
    gw.put_route(
        "half",
        json!({"uri": "/half/*", "upstream": {"nodes": {dead_node(): 1, live.node(): 1}}}),
    );
    let r = gw.proxy("GET", "/dead", &[]);
    assert_eq!(r.status, 502, "{}", r.body);

    // Every scheduled position, the dead node's included, ends at the live one.
    for i in 0..6 {
        assert_eq!(served(&gw, "GET", &format!("/half/{i}"), None), "live");
    }
    assert_eq!(live.count(), 6);
}

#[test]
fn slow_upstream_is_504() {
    let up = EchoUpstream::start_named("slow");
    let gw = Gateway::start();
    gw.put_route(
        "slow",
        json!({"uri": "/slow/*", "upstream": upstream_of(&up),
               "timeout": {"connect": 1, "send": 1, "read": 0.5}}),
    );
    let r = gw.proxy("GET", "/slow/delay/1500", &[]);
    assert_eq!(r.status, 504, "{}", r.body);
    // A fast answer on the same route is unaffected.
    assert_eq!(served(&gw, "GET", "/slow/fast", None), "slow");
}

/// PRODUCT BUG (src/proxy/mod.rs, not owned by this test's author): the
/// route timeout is applied as one deadline of `connect + read` (1.5 s
/// here) over the whole exchange, so an upstream that answers after 1 s
/// still gets through although `read` is 0.5 s. APISIX's own test
/// (`t/node/timeout-upstream.t`: read 0.5, upstream sleeps 1 s) expects
/// 504. Kept failing on purpose until mod.rs honours `read`.
#[test]
fn read_timeout_is_honoured_on_its_own() {
    let up = EchoUpstream::start_named("slow");
    let gw = Gateway::start();
    gw.put_route(
        "slow",
        json!({"uri": "/slow/*", "upstream": upstream_of(&up),
               "timeout": {"connect": 1, "send": 1, "read": 0.5}}),
    );
    let r = gw.proxy("GET", "/slow/delay/1000", &[]);
    assert_eq!(
        r.status, 504,
        "read timeout 0.5 s, upstream answered after 1 s: {}",
        r.body
    );
}

#[test]
fn empty_nodes_503_and_force_deleted_upstream_502() {
    let up = EchoUpstream::start_named("doomed");
    let gw = Gateway::start();
    gw.put_route("empty", json!({"uri": "/empty", "upstream": {"nodes": {}}}));
    let r = gw.proxy("GET", "/empty", &[]);
    assert_eq!(r.status, 503, "{}", r.body);

    gw.put_resource("upstreams", "doomed", upstream_of(&up));
    gw.put_route("doomed", json!({"uri": "/doomed", "upstream_id": "doomed"}));
    assert_eq!(served(&gw, "GET", "/doomed", None), "doomed");
    // Referenced: refused without force.
    let r = gw.admin("DELETE", "/apisix/admin/upstreams/doomed", None);
    assert_eq!(r.status, 400, "{}", r.body);
    gw.admin("DELETE", "/apisix/admin/upstreams/doomed?force=true", None)
        .expect_status(200);
    let r = gw.proxy("GET", "/doomed", &[]);
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(up.count(), 1);
}

// ---------------------------------------------------------------------------
// streaming

#[test]
fn ten_mib_bodies_stream_both_ways() {
    const N: usize = 10 * 1024 * 1024;
    let up = EchoUpstream::start_named("big");
    let gw = Gateway::start();
    gw.put_route(
        "big",
        json!({"uri": "/big/*", "upstream": upstream_of(&up)}),
    );

    let r = gw.proxy("GET", &format!("/big/bytes/{N}"), &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body_error, None);
    assert_eq!(r.body.len(), N, "response body length");
    let n_str = N.to_string();
    assert_eq!(r.header("content-length"), Some(n_str.as_str()));
    assert_eq!(r.header("transfer-encoding"), None, "both framings sent");
    let bad = r
        .body
        .bytes()
        .enumerate()
        .position(|(i, b)| b != PatternReader::byte_at(i as u64));
    assert_eq!(bad, None, "response body differs from the pattern");

    let body = vec![b'x'; N];
    let r = gw.proxy_body("POST", "/big/upload", &[], &body);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["body_len"], json!(N));
    let seen = up.last().expect("upload recorded");
    assert_eq!(seen.body_len, N as u64);
    assert!(
        !(seen.header("content-length").is_some() && seen.header("transfer-encoding").is_some()),
        "upstream got both Content-Length and Transfer-Encoding: {:?}",
        seen.headers
    );
}

// ---------------------------------------------------------------------------
// hot reload and restart

#[test]
fn writes_apply_to_the_very_next_request() {
    let fleet = Fleet::new(&["one", "two"]);
    let gw = Gateway::start();
    assert_eq!(served(&gw, "GET", "/hot/x", None), "404");
    gw.put_route("hot", fleet.route("/hot/*", "one"));
    assert_eq!(served(&gw, "GET", "/hot/x", None), "one");
    gw.put_route("hot", fleet.route("/hot/*", "two"));
    assert_eq!(served(&gw, "GET", "/hot/x", None), "two");
    gw.admin("DELETE", "/apisix/admin/routes/hot", None)
        .expect_status(200);
    assert_eq!(served(&gw, "GET", "/hot/x", None), "404");

    // Changing a shared upstream object applies at once too.
    gw.put_resource("upstreams", "shared", fleet.up("one"));
    gw.put_route("shared", json!({"uri": "/shared", "upstream_id": "shared"}));
    assert_eq!(served(&gw, "GET", "/shared", None), "one");
    gw.put_resource("upstreams", "shared", fleet.up("two"));
    assert_eq!(served(&gw, "GET", "/shared", None), "two");

    // Reload latency: PUT acknowledged → first request that sees the change.
    const WRITES: usize = 50;
    let mut latencies = Vec::with_capacity(WRITES);
    let mut put_times = Vec::with_capacity(WRITES);
    let mut late = Vec::new();
    for i in 0..WRITES {
        let name = if i % 2 == 0 { "one" } else { "two" };
        let sent = Instant::now();
        gw.put_route("lat", fleet.route("/lat", name));
        let acked = Instant::now();
        put_times.push(acked - sent);
        let mut attempts = 0;
        loop {
            attempts += 1;
            if served(&gw, "GET", "/lat", None) == name {
                break;
            }
            assert!(acked.elapsed() < WAIT, "write {i} never applied");
        }
        latencies.push(acked.elapsed());
        if attempts > 1 {
            late.push((i, attempts));
        }
    }
    latencies.sort();
    put_times.sort();
    eprintln!(
        "admin PUT round trip over {WRITES} writes (store + reload + wait for apply): \
         median {:?}, max {:?}",
        put_times[WRITES / 2],
        put_times[WRITES - 1]
    );
    eprintln!(
        "reload latency over {WRITES} writes (PUT ack → first request seeing it, incl. that \
         request): median {:?}, max {:?}, min {:?}",
        latencies[WRITES / 2],
        latencies[WRITES - 1],
        latencies[0]
    );
    assert!(
        late.is_empty(),
        "writes whose next request still saw the old config (write, attempts): {late:?}"
    );
}

#[test]
fn restart_keeps_the_configuration() {
    let fleet = Fleet::new(&["inline", "by-id", "svc"]);
    let mut gw = Gateway::start();
    gw.put_route("inline", fleet.route("/inline", "inline"));
    gw.put_resource("upstreams", "u1", fleet.up("by-id"));
    gw.put_route("by-id", json!({"uri": "/by-id", "upstream_id": "u1"}));
    gw.put_resource("services", "s1", json!({"upstream": fleet.up("svc")}));
    gw.put_route("svc", json!({"uri": "/svc", "service_id": "s1"}));
    gw.put_route(
        "off",
        fleet.route_with("/off", "inline", json!({"status": 0})),
    );
    let cases = [
        get("/inline", "inline"),
        get("/by-id", "by-id"),
        get("/svc", "svc"),
        get("/off", "404"),
    ];
    check_cases(&gw, "before restart", &cases);
    gw.restart();
    check_cases(&gw, "after restart", &cases);
}

// ---------------------------------------------------------------------------
// K03: forwarding headers

#[test]
fn k03_client_forwarding_headers_are_replaced_for_untrusted_peers() {
    let up = EchoUpstream::start_named("xff");
    let gw = Gateway::start();
    gw.put_route("xff", json!({"uri": "/xff", "upstream": upstream_of(&up)}));
    let r = gw.proxy(
        "GET",
        "/xff",
        &[
            ("X-Forwarded-For", "1.2.3.4"),
            ("X-Real-IP", "1.2.3.4"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "evil.test"),
            ("X-Forwarded-Port", "8443"),
            ("X-Forwarded-Prefix", "/admin"),
            ("X-Forwarded-Uri", "/admin/secret"),
            ("X-Original-URI", "/admin/secret"),
            ("X-Original-URL", "/admin/secret"),
            ("Forwarded", "for=1.2.3.4;proto=https"),
        ],
    );
    assert_eq!(r.status, 200);
    let seen = only_request(&up);
    assert_eq!(seen.header_all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(seen.header_all("x-real-ip"), ["127.0.0.1"]);
    assert_eq!(seen.header_all("x-forwarded-proto"), ["http"]);
    assert_ne!(seen.header("x-forwarded-host"), Some("evil.test"));
    for name in [
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x-forwarded-uri",
        "x-original-uri",
        "x-original-url",
        "forwarded",
    ] {
        assert_eq!(
            seen.header(name),
            None,
            "client's {name} reached the upstream: {:?}",
            seen.headers
        );
    }
    let dump = format!("{:?}", seen.headers);
    assert!(!dump.contains("1.2.3.4"), "{dump}");
}

#[test]
fn k03_trusted_peers_extend_the_chain() {
    let up = EchoUpstream::start_named("xff");
    let gw = Gateway::start_with(GatewayOpts::new().args(["--trusted-addresses", "127.0.0.1/32"]));
    gw.put_route("xff", json!({"uri": "/xff", "upstream": upstream_of(&up)}));
    let r = gw.proxy("GET", "/xff", &[("X-Forwarded-For", "1.2.3.4")]);
    assert_eq!(r.status, 200);
    assert_eq!(
        only_request(&up).header_all("x-forwarded-for"),
        ["1.2.3.4, 127.0.0.1"]
    );

    // Several X-Forwarded-For lines form one list (RFC 9110 §5.3).
    up.clear();
    let raw = raw_get(
        &gw,
        "/xff",
        "X-Forwarded-For: 1.2.3.4\r\nX-Forwarded-For: 5.6.7.8, 9.9.9.9\r\n",
    );
    assert_eq!(raw.status, Some(200), "{}", raw.text);
    assert_eq!(
        only_request(&up).header_all("x-forwarded-for"),
        ["1.2.3.4, 5.6.7.8, 9.9.9.9, 127.0.0.1"]
    );
}

// ---------------------------------------------------------------------------
// K05 / B13: hop-by-hop

#[test]
fn k05_connection_nominated_headers_are_dropped_and_cannot_remove_gateway_headers() {
    let up = EchoUpstream::start_named("hop");
    let gw = Gateway::start();
    gw.put_route(
        "hop",
        json!({"uri": "/hop/*", "upstream": upstream_of(&up)}),
    );

    let r = gw.proxy(
        "GET",
        "/hop/1",
        &[
            ("Connection", "keep-alive, X-Foo"),
            ("X-Foo", "1"),
            ("X-Bar", "2"),
        ],
    );
    assert_eq!(r.status, 200);
    let seen = only_request(&up);
    assert_eq!(seen.header("x-foo"), None, "{:?}", seen.headers);
    assert_eq!(seen.header("x-bar"), Some("2"));
    for v in seen.header_all("connection") {
        assert!(!v.to_ascii_lowercase().contains("x-foo"), "Connection: {v}");
    }

    // Nominating the gateway's own headers removes only the client's copies.
    up.clear();
    let r = gw.proxy(
        "GET",
        "/hop/2",
        &[
            (
                "Connection",
                "keep-alive, X-Forwarded-For, X-Real-IP, X-Forwarded-Proto, X-Forwarded-Host",
            ),
            ("X-Forwarded-For", "1.2.3.4"),
            ("X-Real-IP", "1.2.3.4"),
        ],
    );
    assert_eq!(r.status, 200);
    let seen = only_request(&up);
    assert_eq!(seen.header_all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(seen.header_all("x-real-ip"), ["127.0.0.1"]);
    assert_eq!(seen.header_all("x-forwarded-proto"), ["http"]);
    assert!(
        seen.header("x-forwarded-host").is_some(),
        "{:?}",
        seen.headers
    );
    for v in seen.header_all("connection") {
        assert!(
            !v.to_ascii_lowercase().contains("forwarded"),
            "Connection: {v}"
        );
    }

    // Nominating a framing header does not break the body.
    up.clear();
    let r = gw.proxy_body(
        "POST",
        "/hop/3",
        &[("Connection", "keep-alive, Content-Length")],
        &[b'y'; 1000],
    );
    assert_eq!(r.status, 200);
    assert_eq!(only_request(&up).body_len, 1000);
}

// ---------------------------------------------------------------------------
// K01 / B01 / B02 / B03: path canonicalisation

#[test]
fn k01_paths_are_canonical_before_matching_and_upstream() {
    let fleet = Fleet::new(&["public", "admin"]);
    let gw = Gateway::start();
    gw.put_route("pub", fleet.route("/public/*", "public"));
    gw.put_route("adm", fleet.route("/admin/*", "admin"));
    let (public, admin) = (fleet.get("public"), fleet.get("admin"));

    // Dot-segments resolve to the admin route; the upstream gets the
    // canonical path, never the raw one.
    for target in [
        "/public/../admin/secret",
        "/public/%2e%2e/admin/secret",
        "/public/%2E%2E/admin/secret",
        "/public/.%2e/admin/secret",
        "/public/./../admin/secret",
        "/public/x/../../admin/secret",
        "/public/%2e/../admin/secret",
        "/public/../admin/./secret",
    ] {
        let before = admin.count();
        let raw = raw_get(&gw, target, "");
        let part = first(&raw);
        assert_eq!(part.status, 200, "{target}: {}", raw.text);
        assert_eq!(part.header("x-echo-server"), Some("admin"), "{target}");
        let seen = admin.wait_for(before + 1, WAIT);
        assert_eq!(seen.len(), before + 1, "{target}: {seen:#?}");
        assert_eq!(seen[before].raw_target, "/admin/secret", "{target}");
        assert_eq!(public.count(), 0, "{target} reached the public upstream");
    }

    // Encoded separators and climbing above the root are refused.
    for target in [
        "/public/..%2Fadmin/secret",
        "/public/..%2fadmin/secret",
        "/public%2F..%2Fadmin/secret",
        "/admin%2Fsecret",
        "/public%5C..%5Cadmin/secret",
        "/public/..%5cadmin/secret",
        "/public/%2e%2e%2fadmin/secret",
        "/public/../../admin/secret",
        "/%2e%2e/admin/secret",
        "/public/%00/../admin/secret",
        "/public\\..\\admin/secret",
        // Servlet containers resolve `..;x` as `..`: ambiguous, refused.
        "/public/..;/admin/secret",
        "/public/..;jsessionid=1/admin/secret",
        "/public/%2e%2e;/admin/secret",
        "/public/.;/../admin/secret",
    ] {
        let raw = raw_get(&gw, target, "");
        assert_eq!(raw.status, Some(400), "{target}: {}", raw.text);
    }
    assert_eq!(
        (public.count(), admin.count()),
        (0, 8),
        "a refused request reached an upstream: public {:#?}, admin {:#?}",
        public.requests(),
        admin.requests()
    );

    // Decoding happens once: `%252F` stays `%252F`.
    public.clear();
    let raw = raw_get(&gw, "/public/a%252Fb%252e%252e", "");
    assert_eq!(raw.status, Some(200), "{}", raw.text);
    assert_eq!(only_request(public).raw_target, "/public/a%252Fb%252e%252e");

    // Repeated slashes collapse.
    public.clear();
    let raw = raw_get(&gw, "//public///ok", "");
    assert_eq!(raw.status, Some(200), "{}", raw.text);
    assert_eq!(only_request(public).raw_target, "/public/ok");

    // The query string is forwarded byte for byte.
    public.clear();
    let query = "?next=/../admin/secret&e=%2F%252F%2e&&flag&x=a+b;c";
    let raw = raw_get(&gw, &format!("/public/ok{query}"), "");
    assert_eq!(raw.status, Some(200), "{}", raw.text);
    assert_eq!(
        only_request(public).raw_target,
        format!("/public/ok{query}")
    );

    // Control: the plain paths.
    public.clear();
    let raw = raw_get(&gw, "/public/ok", "");
    assert_eq!(echo_of(&first(&raw))["raw_target"], "/public/ok");
    assert_eq!(
        admin.count(),
        8,
        "only the dot-segment forms reached the admin upstream"
    );
    for r in public.requests() {
        assert!(!r.path().contains("admin"), "{r:#?}");
    }
}

// ---------------------------------------------------------------------------
// K02 / B05: query, fragment and `;` never decide the route

#[test]
fn k02_route_is_chosen_on_the_path_only() {
    let fleet = Fleet::new(&["api", "health"]);
    let gw = Gateway::start();
    gw.put_route(
        "api",
        fleet.route_with("/api/*", "api", json!({"priority": 0})),
    );
    gw.put_route(
        "health",
        fleet.route_with("/api/health", "health", json!({"priority": 10})),
    );
    check_cases(
        &gw,
        "K02",
        &[
            get("/api/secret?next=/api/health", "api"),
            get("/api/secret?/api/health", "api"),
            get("/api/secret?x=1&/api/health", "api"),
            get("/api/secret;/api/health", "api"),
            get("/api/health;x", "api"),
            get("/api/health/", "api"),
            get("/api/health", "health"),
            get("/api/health?x=/api/secret", "health"),
            get("/api/./health", "health"),
            get("/api/%68ealth", "health"),
        ],
    );
    // `;` survives as part of the path sent upstream.
    fleet.get("api").clear();
    let raw = raw_get(&gw, "/api/secret;/api/health", "");
    assert_eq!(raw.status, Some(200), "{}", raw.text);
    assert_eq!(
        only_request(fleet.get("api")).raw_target,
        "/api/secret;/api/health"
    );
    // A fragment is not part of a request target: refused or ignored,
    // never matched as path.
    let raw = raw_get(&gw, "/api/secret#/api/health", "");
    let status = raw.status;
    assert!(
        status == Some(400) || first(&raw).header("x-echo-server") == Some("api"),
        "{}",
        raw.text
    );
}

// ---------------------------------------------------------------------------
// K17 / B38: framing

#[test]
fn k17_cl_te_desync_and_duplicate_lengths_are_refused() {
    let fleet = Fleet::new(&["pub", "admin"]);
    let gw = Gateway::start();
    gw.put_route("pub", fleet.route("/pub/*", "pub"));
    gw.put_route("adm", fleet.route("/admin/*", "admin"));
    const SMUGGLED: &str = "0\r\n\r\nGET /admin/secret HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    assert_eq!(SMUGGLED.len(), 52);

    let variants = [
        "Content-Length: 52\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 52\r\n",
        "Content-Length: 52\r\nTransfer-Encoding: chunked, identity\r\n",
        "Content-Length: 52\r\nTransfer-Encoding : chunked\r\n",
        "Content-Length: 52\r\nTransfer-Encoding: xchunked\r\n",
        "Content-Length: 52\r\nTransfer-Encoding:\tchunked\r\n",
        "Content-Length: 52\r\nTransfer-Encoding: Chunked\r\n",
        "Content-Length: 52\r\nTransfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n",
        "Content-Length: 52\r\nContent-Length: 5\r\n",
        "Content-Length: 5\r\nContent-Length: 52\r\n",
        "Content-Length: 52, 5\r\n",
        "Content-Length: +52\r\n",
    ];
    for head in variants {
        let before = fleet.get("pub").count();
        let req = format!("POST /pub/x HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}\r\n{SMUGGLED}");
        let raw = raw_request(gw.proxy_addr(), req.as_bytes());
        let forwarded = fleet.get("pub").requests()[before..].to_vec();
        if raw.status == Some(400) {
            assert!(raw.closed, "{head:?}: 400 but the connection stayed open");
            assert!(
                forwarded.is_empty(),
                "{head:?}: 400 yet forwarded {forwarded:#?}"
            );
        } else {
            assert!(
                forwarded.len() <= 1,
                "{head:?}: {} upstream requests: {forwarded:#?}",
                forwarded.len()
            );
            for r in &forwarded {
                assert_eq!(r.method, "POST", "{head:?}");
                assert!(
                    !(r.header("content-length").is_some()
                        && r.header("transfer-encoding").is_some()),
                    "{head:?}: both framings forwarded: {:?}",
                    r.headers
                );
            }
            assert!(
                raw.responses_count() <= 1,
                "{head:?}: the smuggled request got an answer: {}",
                raw.text
            );
        }
    }
    // Control: well-formed chunked and Content-Length bodies go through,
    // framed one way only.
    for (head, body, len) in [
        (
            "Transfer-Encoding: chunked\r\n",
            "5\r\nhello\r\n0\r\n\r\n",
            5,
        ),
        ("Content-Length: 5\r\n", "hello", 5),
    ] {
        let before = fleet.get("pub").count();
        let req = format!(
            "POST /pub/ok HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{head}\r\n{body}"
        );
        let raw = raw_request(gw.proxy_addr(), req.as_bytes());
        assert_eq!(raw.status, Some(200), "{head:?}: {}", raw.text);
        let seen = fleet.get("pub").wait_for(before + 1, WAIT);
        let r = &seen[before];
        assert_eq!(r.body_len, len, "{head:?}");
        assert!(
            !(r.header("content-length").is_some() && r.header("transfer-encoding").is_some()),
            "{head:?}: both framings forwarded: {:?}",
            r.headers
        );
    }

    // A follow-up on the (possibly pooled) upstream connection: nothing queued.
    assert_eq!(served(&gw, "GET", "/pub/after", None), "pub");
    for up in ["pub", "admin"] {
        let smuggled: Vec<_> = fleet
            .get(up)
            .requests()
            .into_iter()
            .filter(|r| r.raw_target.contains("/admin/secret"))
            .collect();
        assert!(smuggled.is_empty(), "{up} logged {smuggled:#?}");
    }
}

// ---------------------------------------------------------------------------
// Upgrade without enable_websocket

#[test]
fn upgrade_on_a_plain_route_is_a_plain_request_and_opens_no_tunnel() {
    let fleet = Fleet::new(&["pub", "admin"]);
    let gw = Gateway::start();
    gw.put_route("pub", fleet.route("/pub/*", "pub"));
    gw.put_route("adm", fleet.route("/admin/*", "admin"));
    let up = fleet.get("pub");

    // What a tunnel would carry raw to the upstream after the handshake.
    let req = "GET /pub/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\n\
               Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
               Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n\
               GET /admin/secret HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    let raw = raw_request(gw.proxy_addr(), req.as_bytes());
    let parts = raw.responses();
    assert!(!parts.is_empty(), "no response: {:?}", raw.text);
    assert_eq!(parts[0].status, 200, "{}", raw.text);
    assert!(
        parts.iter().all(|p| p.status != 101),
        "switched protocols: {}",
        raw.text
    );
    assert_eq!(echo_of(&parts[0])["raw_target"], "/pub/ws");

    let seen = up.wait_for(1, WAIT);
    let ws = &seen[0];
    assert_eq!(ws.raw_target, "/pub/ws");
    assert_eq!(ws.header("upgrade"), None, "{:?}", ws.headers);
    for v in ws.header_all("connection") {
        assert!(
            !v.to_ascii_lowercase().contains("upgrade"),
            "Connection: {v}"
        );
    }
    // Every request any upstream saw came through the gateway's HTTP path
    // (gateway-set X-Forwarded-For), never raw through a tunnel.
    for r in up
        .requests()
        .iter()
        .chain(fleet.get("admin").requests().iter())
    {
        assert_eq!(
            r.header("x-forwarded-for"),
            Some("127.0.0.1"),
            "raw bytes reached an upstream: {r:#?}"
        );
    }
    assert!(
        up.requests()
            .iter()
            .all(|r| !r.raw_target.contains("admin")),
        "{:#?}",
        up.requests()
    );
}
