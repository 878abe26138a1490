//! Black-box tests of the Admin API against the real binary: envelopes,
//! status codes and error texts as APISIX answers them (see
//! `apisix-admin-api.md`), plus the admin-plane security cases B08/B09,
//! durability across restarts, Swagger UI and the committed OpenAPI file.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::support::{
    raw_request, wait_until, EchoUpstream, Gateway, GatewayOpts, Resp, DEFAULT_ADMIN_KEY,
};

const KEY: &str = DEFAULT_ADMIN_KEY;
const WELL_KNOWN_KEY: &str = "edd1c9f034335f136f87ad84b625c8f1";
const MAX_BODY: usize = 1_572_864;

// ---------------------------------------------------------------- helpers

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

fn upstream_conf() -> Value {
    json!({"type": "roundrobin", "nodes": {"127.0.0.1:1980": 1}})
}

fn route_conf(uri: &str) -> Value {
    json!({"uri": uri, "upstream": upstream_conf()})
}

fn not_found() -> Value {
    json!({"message": "Key not found"})
}

/// Status and exact JSON body.
#[track_caller]
fn expect_json(resp: &Resp, status: u16, expected: Value) {
    assert_eq!(
        resp.status, status,
        "unexpected status; body: {}",
        resp.body
    );
    assert_eq!(resp.json(), expected, "body: {}", resp.body);
}

/// Status and exact `{"error_msg": msg}` body.
#[track_caller]
fn expect_error(resp: &Resp, status: u16, msg: &str) {
    expect_json(resp, status, json!({ "error_msg": msg }));
}

/// `{"error_msg": …}` starting with `prefix`.
#[track_caller]
fn expect_error_prefix(resp: &Resp, status: u16, prefix: &str) -> String {
    assert_eq!(
        resp.status, status,
        "unexpected status; body: {}",
        resp.body
    );
    let body = resp.json();
    let msg = body["error_msg"]
        .as_str()
        .unwrap_or_else(|| panic!("no error_msg in {}", resp.body))
        .to_owned();
    assert!(
        msg.starts_with(prefix),
        "error_msg {msg:?} does not start with {prefix:?}"
    );
    msg
}

/// What every admin answer from a resource handler looks like: JSON with a
/// trailing newline and `X-API-VERSION: v3`.
#[track_caller]
fn expect_admin_envelope(resp: &Resp) {
    assert_eq!(
        resp.header("x-api-version"),
        Some("v3"),
        "headers: {:?}",
        resp.headers
    );
    assert_eq!(
        resp.header("content-type"),
        Some("application/json"),
        "headers: {:?}",
        resp.headers
    );
    assert!(
        resp.body.ends_with('\n'),
        "no trailing newline: {:?}",
        resp.body
    );
}

/// Sends `body` verbatim (not re-encoded) with the admin key.
fn admin_text(gw: &Gateway, method: &str, path: &str, body: &str) -> Resp {
    gw.admin_raw(
        method,
        path,
        &[("X-API-KEY", KEY), ("Content-Type", "application/json")],
        Some(body),
    )
}

fn get(gw: &Gateway, path: &str) -> Resp {
    gw.admin("GET", path, None)
}

/// The full GET answer for `path` (value and both indexes), to compare
/// before and after a refused write.
fn stored(gw: &Gateway, path: &str) -> Value {
    let resp = get(gw, path);
    resp.expect_status(200);
    resp.json()
}

/// A resource kind and two valid objects of it.
struct Case {
    plural: &'static str,
    word: &'static str,
    first: Value,
    second: Value,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            plural: "routes",
            word: "route",
            first: json!({"uri": "/a", "methods": ["GET"], "upstream": upstream_conf()}),
            second: json!({"uri": "/b", "name": "second", "upstream": upstream_conf()}),
        },
        Case {
            plural: "upstreams",
            word: "upstream",
            first: upstream_conf(),
            second: json!({"name": "u2", "nodes": {"127.0.0.1:1981": 2}}),
        },
        Case {
            plural: "services",
            word: "service",
            first: json!({"name": "svc", "upstream": upstream_conf()}),
            second: json!({"desc": "second", "hosts": ["a.test"]}),
        },
    ]
}

fn with_fields(mut v: Value, fields: &[(&str, Value)]) -> Value {
    for (k, val) in fields {
        v[*k] = val.clone();
    }
    v
}

// ------------------------------------------------------------------ CRUD

#[test]
fn crud_envelopes_for_every_kind() {
    let gw = Gateway::start();
    let cases = cases();

    // Create: 201 with key/value and server-set times, no indexes; GET
    // adds createdIndex == modifiedIndex.
    let mut first_times = Vec::new();
    for c in &cases {
        let base = format!("/apisix/admin/{}", c.plural);
        let empty = get(&gw, &base);
        expect_admin_envelope(&empty);
        expect_json(&empty, 200, json!({"list": [], "total": 0}));
        let missing = get(&gw, &format!("{base}/1"));
        expect_admin_envelope(&missing);
        expect_json(&missing, 404, not_found());

        let before = unix_now();
        let put = gw.admin("PUT", &format!("{base}/1"), Some(c.first.clone()));
        let after = unix_now();
        expect_admin_envelope(&put);
        assert_eq!(put.status, 201, "{}", put.body);
        let t = put.json()["value"]["create_time"]
            .as_i64()
            .unwrap_or_else(|| panic!("create_time not an integer: {}", put.body));
        assert!((before..=after).contains(&t), "create_time {t}");
        let expected = with_fields(
            c.first.clone(),
            &[
                ("id", json!("1")),
                ("create_time", json!(t)),
                ("update_time", json!(t)),
            ],
        );
        let key = format!("/apisix/{}/1", c.plural);
        expect_json(&put, 201, json!({"key": key, "value": expected}));

        let got = get(&gw, &format!("{base}/1"));
        expect_admin_envelope(&got);
        let idx = got.json()["createdIndex"]
            .as_u64()
            .unwrap_or_else(|| panic!("createdIndex: {}", got.body));
        expect_json(
            &got,
            200,
            json!({"key": key, "value": expected, "createdIndex": idx, "modifiedIndex": idx}),
        );
        first_times.push((t, idx));
    }

    // Let the clock pass a second so a recomputed create_time would differ.
    let latest = first_times.iter().map(|(t, _)| *t).max().unwrap();
    assert!(wait_until(Duration::from_secs(3), || unix_now() > latest));

    for (c, (t, idx)) in cases.iter().zip(first_times) {
        let base = format!("/apisix/admin/{}", c.plural);
        let key = |id: &str| format!("/apisix/{}/{id}", c.plural);

        // Replace: 200, create_time kept, update_time moves, createdIndex kept.
        let put = gw.admin("PUT", &format!("{base}/1"), Some(c.second.clone()));
        expect_admin_envelope(&put);
        let u = put.json()["value"]["update_time"].as_i64().unwrap();
        assert!(u > t, "update_time {u} not after create_time {t}");
        let replaced = with_fields(
            c.second.clone(),
            &[
                ("id", json!("1")),
                ("create_time", json!(t)),
                ("update_time", json!(u)),
            ],
        );
        expect_json(&put, 200, json!({"key": key("1"), "value": replaced}));
        let got = get(&gw, &format!("{base}/1")).json();
        assert_eq!(got["value"], replaced);
        assert_eq!(got["createdIndex"], idx);
        assert!(got["modifiedIndex"].as_u64().unwrap() > idx, "{got}");

        // PUT on the collection takes the id from the body, keeping its type.
        let put = gw.admin(
            "PUT",
            &base,
            Some(with_fields(c.first.clone(), &[("id", json!("2"))])),
        );
        assert_eq!(put.status, 201, "{}", put.body);
        assert_eq!(put.json()["key"], key("2"));
        assert_eq!(put.json()["value"]["id"], "2");
        let put = gw.admin(
            "PUT",
            &base,
            Some(with_fields(c.first.clone(), &[("id", json!(3))])),
        );
        assert_eq!(put.status, 201, "{}", put.body);
        assert_eq!(put.json()["key"], key("3"));
        assert_eq!(put.json()["value"]["id"], 3, "integer id stays an integer");
        let missing_id = gw.admin("PUT", &base, Some(c.first.clone()));
        expect_admin_envelope(&missing_id);
        expect_error(&missing_id, 400, &format!("missing {} id", c.word));

        // Body id must agree with the path id.
        let wrong = gw.admin(
            "PUT",
            &format!("{base}/4"),
            Some(with_fields(c.first.clone(), &[("id", json!("5"))])),
        );
        expect_error(&wrong, 400, &format!("wrong {} id", c.word));
        expect_json(&get(&gw, &format!("{base}/4")), 404, not_found());
        expect_json(&get(&gw, &format!("{base}/5")), 404, not_found());
        let same = gw.admin(
            "PUT",
            &format!("{base}/4"),
            Some(with_fields(c.first.clone(), &[("id", json!(4))])),
        );
        assert_eq!(same.status, 201, "{}", same.body);
        assert_eq!(same.json()["value"]["id"], 4);

        // POST generates a 20-digit id.
        let post = gw.admin("POST", &base, Some(c.first.clone()));
        expect_admin_envelope(&post);
        assert_eq!(post.status, 201, "{}", post.body);
        let body = post.json();
        let id = body["value"]["id"].as_str().unwrap().to_owned();
        assert!(
            id.len() == 20 && id.bytes().all(|b| b.is_ascii_digit()),
            "generated id {id:?}"
        );
        assert_eq!(body["key"], key(&id));
        let pt = body["value"]["create_time"].as_i64().unwrap();
        assert_eq!(
            body["value"],
            with_fields(
                c.first.clone(),
                &[
                    ("id", json!(id)),
                    ("create_time", json!(pt)),
                    ("update_time", json!(pt)),
                ]
            )
        );
        assert_eq!(
            get(&gw, &format!("{base}/{id}")).json()["value"],
            body["value"]
        );
        let post_id = gw.admin(
            "POST",
            &base,
            Some(with_fields(c.first.clone(), &[("id", json!("7"))])),
        );
        expect_error(
            &post_id,
            400,
            &format!("wrong {} id, do not need it", c.word),
        );
        let post_path = gw.admin("POST", &format!("{base}/9"), Some(c.first.clone()));
        expect_error(
            &post_path,
            400,
            &format!("wrong {} id, do not need it", c.word),
        );
        // The body is looked at before the id.
        let post_empty = gw.admin_raw("POST", &format!("{base}/9"), &[("X-API-KEY", KEY)], None);
        expect_error(&post_empty, 400, "missing configurations");
        expect_json(&get(&gw, &format!("{base}/7")), 404, not_found());
        expect_json(&get(&gw, &format!("{base}/9")), 404, not_found());

        // List: every entry with its indexes, in key order.
        let list = get(&gw, &base);
        expect_admin_envelope(&list);
        assert_eq!(list.status, 200);
        let list = list.json();
        assert_eq!(list["total"], 5, "{list}");
        let items = list["list"].as_array().unwrap();
        let keys: Vec<&str> = items.iter().map(|i| i["key"].as_str().unwrap()).collect();
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        assert_eq!(keys, sorted);
        assert_eq!(
            sorted,
            [key(&id), key("1"), key("2"), key("3"), key("4")]
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
        );
        for item in items {
            let one = get(&gw, &format!("{base}/{}", id_of(item))).json();
            assert_eq!(item, &one, "list item equals GET of the item");
        }

        // Delete: the string "1"; then gone; a second delete is 404.
        let del = gw.admin("DELETE", &format!("{base}/1"), None);
        expect_admin_envelope(&del);
        expect_json(&del, 200, json!({"deleted": "1", "key": key("1")}));
        expect_json(&get(&gw, &format!("{base}/1")), 404, not_found());
        let again = gw.admin("DELETE", &format!("{base}/1"), None);
        expect_admin_envelope(&again);
        expect_json(&again, 404, not_found());
        assert_eq!(get(&gw, &base).json()["total"], 4);
    }
}

fn id_of(item: &Value) -> String {
    item["key"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn concurrent_posts_get_distinct_ids() {
    let gw = Gateway::start();
    let ids: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..6)
            .map(|t| {
                let gw = &gw;
                scope.spawn(move || {
                    (0..5)
                        .map(|i| {
                            let r = gw.admin(
                                "POST",
                                "/apisix/admin/upstreams",
                                Some(json!({"name": format!("t{t}-{i}"), "nodes": {"127.0.0.1:1": 1}})),
                            );
                            assert_eq!(r.status, 201, "{}", r.body);
                            r.json()["value"]["id"].as_str().unwrap().to_owned()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 30, "{ids:?}");
    let list = get(&gw, "/apisix/admin/upstreams").json();
    assert_eq!(list["total"], 30);
    let listed: Vec<String> = list["list"].as_array().unwrap().iter().map(id_of).collect();
    assert_eq!(listed, unique);
}

// ----------------------------------------------------------- references

#[test]
fn references_are_checked_and_deletes_refused_while_in_use() {
    let gw = Gateway::start();
    gw.put_resource("upstreams", "1", upstream_conf());
    gw.put_resource("services", "1", json!({"upstream": upstream_conf()}));
    gw.put_route(
        "1",
        json!({"uri": "/r", "upstream_id": "1", "service_id": "1"}),
    );

    // A route or service naming a missing upstream/service is refused.
    let r = gw.admin(
        "PUT",
        "/apisix/admin/routes/2",
        Some(json!({"uri": "/x", "upstream_id": 9})),
    );
    expect_error(
        &r,
        400,
        "failed to fetch upstream info by upstream id [9], response code: 404",
    );
    let r = gw.admin(
        "PUT",
        "/apisix/admin/routes/2",
        Some(json!({"uri": "/x", "service_id": "9"})),
    );
    expect_error(
        &r,
        400,
        "failed to fetch service info by service id [9], response code: 404",
    );
    let r = gw.admin(
        "POST",
        "/apisix/admin/services",
        Some(json!({"upstream_id": "9"})),
    );
    expect_error(
        &r,
        400,
        "failed to fetch upstream info by upstream id [9], response code: 404",
    );
    let before = stored(&gw, "/apisix/admin/routes/1");
    let r = gw.admin(
        "PATCH",
        "/apisix/admin/routes/1",
        Some(json!({"upstream_id": "9"})),
    );
    expect_error(
        &r,
        400,
        "failed to fetch upstream info by upstream id [9], response code: 404",
    );
    assert_eq!(stored(&gw, "/apisix/admin/routes/1"), before);
    expect_json(&get(&gw, "/apisix/admin/routes/2"), 404, not_found());
    assert_eq!(get(&gw, "/apisix/admin/services").json()["total"], 1);

    // In use → refused, whatever `force` says unless it is exactly `true`.
    for suffix in ["", "?force=yes", "?force=1", "?force=TRUE", "?force"] {
        let r = gw.admin(
            "DELETE",
            &format!("/apisix/admin/upstreams/1{suffix}"),
            None,
        );
        expect_admin_envelope(&r);
        expect_error(
            &r,
            400,
            "can not delete this upstream, route [1] is still using it now",
        );
        let r = gw.admin("DELETE", &format!("/apisix/admin/services/1{suffix}"), None);
        expect_error(
            &r,
            400,
            "can not delete this service directly, route [1] is still using it now",
        );
    }
    stored(&gw, "/apisix/admin/upstreams/1");
    stored(&gw, "/apisix/admin/services/1");

    // An upstream used by a service only.
    gw.put_resource("upstreams", "2", upstream_conf());
    gw.put_resource("services", "2", json!({"upstream_id": "2"}));
    let r = gw.admin("DELETE", "/apisix/admin/upstreams/2", None);
    expect_error(
        &r,
        400,
        "can not delete this upstream, service [2] is still using it now",
    );

    // `?force=true` deletes.
    let r = gw.admin("DELETE", "/apisix/admin/upstreams/1?force=true", None);
    expect_json(
        &r,
        200,
        json!({"deleted": "1", "key": "/apisix/upstreams/1"}),
    );
    let r = gw.admin("DELETE", "/apisix/admin/services/1?force=true", None);
    expect_json(
        &r,
        200,
        json!({"deleted": "1", "key": "/apisix/services/1"}),
    );
    expect_json(&get(&gw, "/apisix/admin/upstreams/1"), 404, not_found());

    // Once the route is gone, a plain delete of what it used works.
    gw.put_resource("upstreams", "3", upstream_conf());
    gw.put_route("3", json!({"uri": "/three", "upstream_id": "3"}));
    expect_json(
        &gw.admin("DELETE", "/apisix/admin/routes/3", None),
        200,
        json!({"deleted": "1", "key": "/apisix/routes/3"}),
    );
    expect_json(
        &gw.admin("DELETE", "/apisix/admin/upstreams/3", None),
        200,
        json!({"deleted": "1", "key": "/apisix/upstreams/3"}),
    );
}

// ----------------------------------------------------------------- PATCH

#[test]
fn patch_merges_and_replaces_sub_paths() {
    let gw = Gateway::start();
    let original = json!({
        "uri": "/old",
        "name": "n",
        "desc": "d",
        "methods": ["GET", "POST"],
        "labels": {"a": "1", "b": "2"},
        "upstream": {"type": "roundrobin", "nodes": {"127.0.0.1:1980": 1, "127.0.0.1:1981": 2}}
    });
    let put = gw.put_route("1", original.clone()).json();
    let created = put["value"]["create_time"].as_i64().unwrap();
    let created_index = stored(&gw, "/apisix/admin/routes/1")["createdIndex"].clone();

    // Whole-object merge patch: null removes, objects merge, arrays replace.
    let r = gw.admin(
        "PATCH",
        "/apisix/admin/routes/1",
        Some(json!({
            "desc": null,
            "methods": ["PUT"],
            "labels": {"a": null, "c": "3"},
            "upstream": {"nodes": {"127.0.0.1:1981": null}}
        })),
    );
    expect_admin_envelope(&r);
    assert_eq!(r.status, 200, "{}", r.body);
    let body = r.json();
    let updated = body["value"]["update_time"].as_i64().unwrap();
    assert!(updated >= created);
    let merged = json!({
        "uri": "/old",
        "name": "n",
        "methods": ["PUT"],
        "labels": {"b": "2", "c": "3"},
        "upstream": {"type": "roundrobin", "nodes": {"127.0.0.1:1980": 1}},
        "id": "1",
        "create_time": created,
        "update_time": updated
    });
    assert_eq!(body, json!({"key": "/apisix/routes/1", "value": merged}));
    let got = stored(&gw, "/apisix/admin/routes/1");
    assert_eq!(got["value"], merged);
    assert_eq!(got["createdIndex"], created_index);

    // Sub-path PATCH replaces the value at that path entirely.
    let r = gw.admin("PATCH", "/apisix/admin/routes/1/uri", Some(json!("/new")));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["value"]["uri"], "/new");
    let r = gw.admin(
        "PATCH",
        "/apisix/admin/routes/1/upstream/nodes",
        Some(json!({"127.0.0.1:1982": 5})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["value"]["upstream"],
        json!({"type": "roundrobin", "nodes": {"127.0.0.1:1982": 5}})
    );
    let r = gw.admin(
        "PATCH",
        "/apisix/admin/routes/1/methods",
        Some(json!(["DELETE", "GET"])),
    );
    assert_eq!(r.json()["value"]["methods"], json!(["DELETE", "GET"]));
    let got = stored(&gw, "/apisix/admin/routes/1");
    assert_eq!(got["value"]["uri"], "/new");
    assert_eq!(got["value"]["name"], "n");
    assert_eq!(got["value"]["create_time"], created);

    // A trailing slash is a whole PATCH.
    let r = gw.admin(
        "PATCH",
        "/apisix/admin/routes/1/",
        Some(json!({"name": "renamed"})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["value"]["name"], "renamed");
    assert_eq!(r.json()["value"]["uri"], "/new");

    // Missing object; missing body.
    let r = gw.admin(
        "PATCH",
        "/apisix/admin/routes/404",
        Some(json!({"desc": "x"})),
    );
    expect_admin_envelope(&r);
    expect_json(&r, 404, not_found());
    let r = gw.admin("PATCH", "/apisix/admin/routes/404/uri", Some(json!("/x")));
    expect_json(&r, 404, not_found());
    expect_json(&get(&gw, "/apisix/admin/routes/404"), 404, not_found());
    let r = gw.admin_raw(
        "PATCH",
        "/apisix/admin/routes/1",
        &[("X-API-KEY", KEY)],
        None,
    );
    expect_error(&r, 400, "missing new configuration");

    // Refused patches leave the stored object exactly as it was.
    let before = stored(&gw, "/apisix/admin/routes/1");
    type Check = Box<dyn Fn(&Resp)>;
    let refused: Vec<(&str, &str, Check)> = vec![
        (
            "/apisix/admin/routes/1",
            r#"{"uri": null}"#,
            Box::new(|r| {
                expect_error(
                    r,
                    400,
                    "invalid configuration: allOf 1 failed: value should match only one schema, but matches none",
                )
            }),
        ),
        (
            "/apisix/admin/routes/1",
            r#"{"uris": ["/both"]}"#,
            Box::new(|r| {
                let msg = expect_error_prefix(r, 400, "invalid configuration: ");
                assert!(msg.contains("value should match only one schema"), "{msg}");
            }),
        ),
        (
            "/apisix/admin/routes/1/methods",
            r#"["GOT"]"#,
            Box::new(|r| {
                expect_error(
                    r,
                    400,
                    "invalid configuration: property \"methods\" validation failed: failed to validate item 1: matches none of the enum values",
                )
            }),
        ),
        (
            "/apisix/admin/routes/1",
            r#"{"foo": 1}"#,
            Box::new(|r| {
                expect_error(
                    r,
                    400,
                    "invalid configuration: additional properties forbidden, found foo",
                )
            }),
        ),
        (
            "/apisix/admin/routes/1",
            r#"{"id": "2"}"#,
            Box::new(|r| expect_error(r, 400, "wrong route id")),
        ),
        (
            "/apisix/admin/routes/1",
            r#"{"plugins": {"x": {}}}"#,
            Box::new(|r| expect_error(r, 400, "unknown plugin [x]")),
        ),
        (
            "/apisix/admin/routes/1",
            "[1]",
            Box::new(|r| expect_error(r, 400, "invalid configuration")),
        ),
        (
            "/apisix/admin/routes/1",
            r#"{"name": "#,
            Box::new(|r| {
                expect_error_prefix(r, 400, "invalid request body");
            }),
        ),
    ];
    for (path, body, check) in refused {
        let r = admin_text(&gw, "PATCH", path, body);
        check(&r);
        assert_eq!(
            stored(&gw, "/apisix/admin/routes/1"),
            before,
            "PATCH {path} {body} changed the stored route"
        );
    }

    // Upstreams and services patch the same way.
    gw.put_resource(
        "upstreams",
        "1",
        json!({"nodes": {"127.0.0.1:1980": 1, "127.0.0.1:1981": 1}, "retries": 1}),
    );
    let r = gw.admin(
        "PATCH",
        "/apisix/admin/upstreams/1",
        Some(json!({"nodes": {"127.0.0.1:1980": null}, "retries": null})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["value"]["nodes"], json!({"127.0.0.1:1981": 1}));
    assert!(r.json()["value"].get("retries").is_none(), "{}", r.body);
    gw.put_resource("services", "1", json!({"name": "s", "upstream_id": "1"}));
    let r = gw.admin("PATCH", "/apisix/admin/services/1/name", Some(json!("t")));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["value"]["name"], "t");
    assert_eq!(r.json()["value"]["upstream_id"], "1");
}

// ------------------------------------------------------- invalid bodies

#[test]
fn invalid_writes_are_refused_and_change_nothing() {
    let gw = Gateway::start();
    gw.put_route("1", route_conf("/kept"));
    gw.put_resource("upstreams", "1", upstream_conf());
    gw.put_resource("services", "1", json!({"upstream": upstream_conf()}));
    let snapshot = |gw: &Gateway| {
        [
            stored(gw, "/apisix/admin/routes/1"),
            stored(gw, "/apisix/admin/upstreams/1"),
            stored(gw, "/apisix/admin/services/1"),
            get(gw, "/apisix/admin/routes").json(),
            get(gw, "/apisix/admin/upstreams").json(),
            get(gw, "/apisix/admin/services").json(),
        ]
    };
    let before = snapshot(&gw);

    let up = upstream_conf().to_string();
    let long_name = "x".repeat(257);
    // (path, body, exact error_msg or prefix when it ends in '…')
    let cases: Vec<(&str, String, String)> = vec![
        (
            "/apisix/admin/routes/1",
            r#"{"uri": "/a","#.into(),
            "invalid request body…".into(),
        ),
        ("/apisix/admin/routes/1", String::new(), "missing configurations".into()),
        ("/apisix/admin/routes/1", "  \n".into(), "missing configurations".into()),
        (
            "/apisix/admin/routes/1",
            format!(r#"{{"uri": "/a", "upstream": {up}, "foo": 1}}"#),
            "invalid configuration: additional properties forbidden, found foo".into(),
        ),
        (
            "/apisix/admin/routes/1",
            format!(r#"{{"uri": "/a", "upstream": {up}, "name": "{long_name}"}}"#),
            "invalid configuration: property \"name\" validation failed: string too long, expected at most 256, got 257".into(),
        ),
        (
            "/apisix/admin/routes/1",
            format!(r#"{{"uri": "/a", "upstream": {up}, "methods": ["GET", "GOT"]}}"#),
            "invalid configuration: property \"methods\" validation failed: failed to validate item 2: matches none of the enum values".into(),
        ),
        (
            "/apisix/admin/routes/1",
            format!(r#"{{"uri": "/a", "uris": ["/b"], "upstream": {up}}}"#),
            "invalid configuration: allOf 1 failed: value should match only one schema…".into(),
        ),
        (
            "/apisix/admin/routes/1",
            format!(r#"{{"upstream": {up}}}"#),
            "invalid configuration: allOf 1 failed: value should match only one schema, but matches none".into(),
        ),
        (
            "/apisix/admin/routes/1",
            format!(r#"{{"uri": "/a", "upstream": {up}, "create_time": 1}}"#),
            "the property is forbidden:  create_time".into(),
        ),
        (
            "/apisix/admin/routes/1",
            format!(r#"{{"uri": "/a", "upstream": {up}, "update_time": 1}}"#),
            "the property is forbidden:  update_time".into(),
        ),
        (
            "/apisix/admin/routes/1",
            r#"{"uri": "/a", "upstream": {"nodes": {"127.0.0.1:1980": 1}, "create_time": 1}}"#
                .into(),
            "the property is forbidden:  upstream.create_time".into(),
        ),
        (
            "/apisix/admin/routes/1",
            r#"{"uri": "/a", "upstream": {"nodes": {"127.0.0.1:1980": 1}, "update_time": 1}}"#
                .into(),
            "the property is forbidden:  upstream.update_time".into(),
        ),
        (
            "/apisix/admin/routes/1",
            format!(r#"{{"uri": "/a", "upstream": {up}, "plugins": {{"create_time": 1}}}}"#),
            "the property is forbidden:  plugins.create_time".into(),
        ),
        (
            "/apisix/admin/services/1",
            r#"{"upstream": {"nodes": {"127.0.0.1:1980": 1}, "create_time": 1}}"#.into(),
            "the property is forbidden:  upstream.create_time".into(),
        ),
        (
            "/apisix/admin/routes/1",
            r#"{"uri": "/a", "plugins": {"x": {}}}"#.into(),
            "unknown plugin [x]".into(),
        ),
        (
            "/apisix/admin/routes/1",
            r#"{"uri": "/a", "service_id": "invalid_id$"}"#.into(),
            "invalid configuration: property \"service_id\" validation failed: object matches none of the required".into(),
        ),
        (
            "/apisix/admin/routes",
            format!(r#"{{"id": -100, "uri": "/a", "upstream": {up}}}"#),
            "invalid configuration: property \"id\" validation failed: object matches none of the required".into(),
        ),
        ("/apisix/admin/routes/1", "[1]".into(), "invalid configuration…".into()),
        (
            "/apisix/admin/upstreams/1",
            r#"{"nodes": {"127.0.0.1:1980": "x"}}"#.into(),
            "invalid configuration: property \"nodes\" validation failed: object matches none of the required".into(),
        ),
        (
            "/apisix/admin/upstreams/1",
            r#"{"nodes": {"127.0.0.1:1980": 1}, "retries": -1}"#.into(),
            "invalid configuration: property \"retries\" validation failed: expected -1 to be at least 0".into(),
        ),
        (
            "/apisix/admin/upstreams/1",
            r#"{"nodes": {"127.0.0.1:1980": 1}, "foo": 1}"#.into(),
            "invalid configuration: additional properties forbidden, found foo".into(),
        ),
        (
            "/apisix/admin/upstreams/1",
            r#"{"nodes": {"127.0.0.1:1980": 1}, "create_time": 1}"#.into(),
            "the property is forbidden:  create_time".into(),
        ),
        (
            "/apisix/admin/services/1",
            format!(r#"{{"name": "{long_name}"}}"#),
            "invalid configuration: property \"name\" validation failed: string too long, expected at most 256, got 257".into(),
        ),
        (
            "/apisix/admin/services/1",
            r#"{"uri": "/a"}"#.into(),
            "invalid configuration: additional properties forbidden, found uri".into(),
        ),
        (
            "/apisix/admin/services/1",
            r#"{"plugins": {"x": {}}}"#.into(),
            "unknown plugin [x]".into(),
        ),
    ];
    for (path, body, want) in &cases {
        // Each case as a PUT, and (where no id is involved) as a POST on
        // the collection.
        let collection = path.strip_suffix("/1");
        let post = collection.filter(|_| !body.contains("\"id\""));
        let attempts = std::iter::once(("PUT", *path)).chain(post.map(|c| ("POST", c)));
        for (method, target) in attempts {
            let r = admin_text(&gw, method, target, body);
            expect_admin_envelope(&r);
            match want.strip_suffix('…') {
                Some(prefix) => {
                    expect_error_prefix(&r, 400, prefix);
                }
                None => expect_error(&r, 400, want),
            }
            assert_eq!(
                snapshot(&gw),
                before,
                "{method} {target} {body:?} changed what is stored"
            );
        }
    }
}

// ------------------------------------------- unknown resources, methods

#[test]
fn unknown_resources_and_unsupported_methods() {
    let gw = Gateway::start();
    gw.put_route("1", route_conf("/a"));

    let r = get(&gw, "/apisix/admin/routs");
    expect_admin_envelope(&r);
    expect_error(&r, 404, "Unsupported resource type: routs");
    let r = gw.admin("PUT", "/apisix/admin/routs/1", Some(route_conf("/a")));
    expect_error(&r, 404, "Unsupported resource type: routs");

    for (plural, word) in [
        ("routes", "route"),
        ("upstreams", "upstream"),
        ("services", "service"),
    ] {
        for path in [
            format!("/apisix/admin/{plural}"),
            format!("/apisix/admin/{plural}/1"),
        ] {
            let r = gw.admin("TRACE", &path, None);
            expect_admin_envelope(&r);
            expect_error(&r, 405, &format!("not supported `TRACE` method for {word}"));
        }
    }
    // DELETE/PATCH need an id.
    expect_error(
        &gw.admin("DELETE", "/apisix/admin/routes", None),
        400,
        "missing route id",
    );
    expect_error(
        &gw.admin(
            "PATCH",
            "/apisix/admin/upstreams",
            Some(json!({"name": "x"})),
        ),
        400,
        "missing upstream id",
    );
    assert_eq!(get(&gw, "/apisix/admin/routes").json()["total"], 1);

    // The prefix itself answers HEAD as a health probe.
    let r = gw.admin("HEAD", "/apisix/admin", None);
    assert_eq!(r.status, 200);
}

// ------------------------------------------------ pagination, filtering

#[test]
fn list_pagination_counts_before_paging() {
    let gw = Gateway::start();
    // Created in reverse key order, so creation order differs from key order.
    for i in (1..=11).rev() {
        gw.put_route(&format!("r{i:02}"), route_conf(&format!("/p/{i}")));
    }
    let ids =
        |v: &Value| -> Vec<String> { v["list"].as_array().unwrap().iter().map(id_of).collect() };

    // Without paging: all, in key order.
    let all = get(&gw, "/apisix/admin/routes").json();
    assert_eq!(all["total"], 11);
    let expected: Vec<String> = (1..=11).map(|i| format!("r{i:02}")).collect();
    assert_eq!(ids(&all), expected);

    // Paging sorts by createdIndex: r11 was created first.
    let by_creation: Vec<String> = (1..=11).rev().map(|i| format!("r{i:02}")).collect();
    let p1 = get(&gw, "/apisix/admin/routes?page=1&page_size=10").json();
    assert_eq!(p1["total"], 11);
    assert_eq!(ids(&p1), by_creation[..10]);
    let p2 = get(&gw, "/apisix/admin/routes?page=2&page_size=10").json();
    assert_eq!(p2["total"], 11);
    assert_eq!(ids(&p2), by_creation[10..]);
    let p10 = get(&gw, "/apisix/admin/routes?page=10&page_size=10").json();
    assert_eq!(p10, json!({"list": [], "total": 11}));
    // page < 1 or not a number counts as 1.
    for q in ["page=0&page_size=10", "page=x&page_size=10"] {
        let p = get(&gw, &format!("/apisix/admin/routes?{q}")).json();
        assert_eq!(ids(&p), by_creation[..10], "{q}");
    }
    // Only one of the two: no paging.
    assert_eq!(
        get(&gw, "/apisix/admin/routes?page_size=10").json()["list"]
            .as_array()
            .unwrap()
            .len(),
        11
    );
    assert_eq!(get(&gw, "/apisix/admin/routes?page=2").json()["total"], 11);

    // page_size outside 10..=500: plain-text 400.
    for q in [
        "page=1&page_size=5",
        "page=1&page_size=501",
        "page=1&page_size=x",
    ] {
        let r = get(&gw, &format!("/apisix/admin/routes?{q}"));
        assert_eq!(r.status, 400, "{q}: {}", r.body);
        assert_eq!(
            r.body.trim_end(),
            "page_size must be between 10 and 500",
            "{q}"
        );
        assert!(serde_json::from_str::<Value>(&r.body).is_err(), "not JSON");
        assert_eq!(r.header("x-api-version"), Some("v3"));
    }
    let r = get(&gw, "/apisix/admin/upstreams?page=1&page_size=500");
    expect_json(&r, 200, json!({"list": [], "total": 0}));
}

#[test]
fn list_filters_by_name_label_and_uri() {
    let gw = Gateway::start();
    let up = upstream_conf();
    gw.put_route(
        "1",
        json!({"uri": "/api/users", "name": "alpha-users", "labels": {"env": "prod"}, "upstream": up}),
    );
    gw.put_route(
        "2",
        json!({"uris": ["/web/x", "/api/orders"], "name": "alpha-orders", "labels": {"env": "dev", "team": "a"}, "upstream": up}),
    );
    gw.put_route(
        "3",
        json!({"uri": "/web/home", "name": "beta", "labels": {"team": "b"}, "upstream": up}),
    );
    gw.put_route("4", json!({"uri": "/api/anon", "upstream": up}));
    gw.put_resource(
        "upstreams",
        "1",
        json!({"name": "alpha-up", "nodes": {"127.0.0.1:1": 1}, "labels": {"env": "x"}}),
    );
    gw.put_resource(
        "upstreams",
        "2",
        json!({"name": "other", "nodes": {"127.0.0.1:1": 1}}),
    );

    let ids = |q: &str| -> (u64, Vec<String>) {
        let r = get(&gw, &format!("/apisix/admin/routes?{q}"));
        assert_eq!(r.status, 200, "{q}: {}", r.body);
        let v = r.json();
        (
            v["total"].as_u64().unwrap(),
            v["list"].as_array().unwrap().iter().map(id_of).collect(),
        )
    };
    let want = |n: u64, v: &[&str]| (n, v.iter().map(|s| s.to_string()).collect::<Vec<_>>());

    // name: unanchored regex; objects without a name are dropped.
    assert_eq!(ids("name=alpha"), want(2, &["1", "2"]));
    assert_eq!(ids("name=%5Ealpha-o"), want(1, &["2"]));
    assert_eq!(ids("name=a%24"), want(1, &["3"]));
    assert_eq!(ids("name=."), want(3, &["1", "2", "3"]));
    assert_eq!(ids("name=nomatch"), want(0, &[]));
    // label: the key must be present; its value does not matter.
    assert_eq!(ids("label=env"), want(2, &["1", "2"]));
    assert_eq!(ids("label=team"), want(2, &["2", "3"]));
    assert_eq!(ids("label=prod"), want(0, &[]));
    assert_eq!(ids("label="), want(0, &[]));
    // uri: regex against uri or any of uris.
    assert_eq!(ids("uri=%5E/api/"), want(3, &["1", "2", "4"]));
    assert_eq!(ids("uri=home"), want(1, &["3"]));
    assert_eq!(ids("uri=/web/x"), want(1, &["2"]));
    // ANDed.
    assert_eq!(ids("name=alpha&label=team"), want(1, &["2"]));
    assert_eq!(ids("uri=api&label=env&name=users"), want(1, &["1"]));
    // With paging, total counts the filtered set.
    assert_eq!(
        ids("uri=api&page=1&page_size=10"),
        want(3, &["1", "2", "4"])
    );
    assert_eq!(ids("uri=api&page=2&page_size=10"), want(3, &[]));

    // name and label work on other kinds too.
    let v = get(&gw, "/apisix/admin/upstreams?name=alpha").json();
    assert_eq!(v["total"], 1);
    assert_eq!(id_of(&v["list"][0]), "1");
    let v = get(&gw, "/apisix/admin/upstreams?label=env").json();
    assert_eq!(v["total"], 1);
}

// ------------------------------------------------------------------ auth

#[test]
fn admin_key_is_required() {
    let gw = Gateway::start();
    gw.put_route("1", route_conf("/a"));
    let routes = "/apisix/admin/routes";

    let expect_401 = |r: &Resp, description: &str| {
        assert_eq!(r.status, 401, "{}", r.body);
        assert_eq!(
            r.json(),
            json!({"error_msg": "failed to check token", "description": description})
        );
        assert_eq!(r.header("x-api-version"), None, "no version on 401");
        assert!(!r.body.contains("/apisix/routes/1"));
    };
    expect_401(&gw.admin_raw("GET", routes, &[], None), "missing apikey");
    expect_401(
        &gw.admin_raw("GET", routes, &[("X-API-KEY", "not-the-key")], None),
        "wrong apikey",
    );
    expect_401(
        &gw.admin_raw("GET", routes, &[("X-API-KEY", WELL_KNOWN_KEY)], None),
        "wrong apikey",
    );
    expect_401(
        &gw.admin_raw("GET", &format!("{routes}?api_key=nope"), &[], None),
        "wrong apikey",
    );
    expect_401(
        &gw.admin_raw("GET", &format!("{routes}?api_key="), &[], None),
        "missing apikey",
    );
    // A prefix of the key, or the key with extra characters, is wrong.
    expect_401(
        &gw.admin_raw("GET", routes, &[("X-API-KEY", &KEY[..KEY.len() - 1])], None),
        "wrong apikey",
    );
    expect_401(
        &gw.admin_raw("GET", routes, &[("X-API-KEY", &format!("{KEY}x"))], None),
        "wrong apikey",
    );
    // Writes without a key change nothing.
    expect_401(
        &gw.admin_raw(
            "PUT",
            "/apisix/admin/routes/2",
            &[("Content-Type", "application/json")],
            Some(&route_conf("/b").to_string()),
        ),
        "missing apikey",
    );
    expect_401(
        &gw.admin_raw("DELETE", "/apisix/admin/routes/1", &[], None),
        "missing apikey",
    );
    // Even unknown resources need the key first.
    expect_401(
        &gw.admin_raw("GET", "/apisix/admin/routs", &[], None),
        "missing apikey",
    );

    // The right key: header, query argument.
    let ok = gw.admin_raw("GET", routes, &[("X-API-KEY", KEY)], None);
    expect_admin_envelope(&ok);
    assert_eq!(ok.json()["total"], 1);
    let ok = gw.admin_raw("GET", &format!("{routes}?api_key={KEY}"), &[], None);
    expect_admin_envelope(&ok);
    assert_eq!(ok.json()["total"], 1);

    // As in APISIX, the query argument is looked at before the header; an
    // empty value counts as absent.
    let ok = gw.admin_raw(
        "GET",
        &format!("{routes}?api_key={KEY}"),
        &[("X-API-KEY", "not-the-key")],
        None,
    );
    assert_eq!(ok.status, 200, "{}", ok.body);
    expect_401(
        &gw.admin_raw(
            "GET",
            &format!("{routes}?api_key=nope"),
            &[("X-API-KEY", KEY)],
            None,
        ),
        "wrong apikey",
    );
    let ok = gw.admin_raw(
        "GET",
        &format!("{routes}?api_key="),
        &[("X-API-KEY", KEY)],
        None,
    );
    assert_eq!(ok.status, 200, "{}", ok.body);
    let raw = raw_request(
        gw.admin_addr(),
        format!(
            "GET /apisix/admin/routes?api_key={KEY} HTTP/1.1\r\nHost: a\r\nX-API-KEY:\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(raw.status, Some(200), "{}", raw.text);

    // Header names are case-insensitive; an empty value is no key. Sent
    // raw so the client cannot normalise the header.
    let addr = gw.admin_addr();
    for (header, status) in [
        (format!("x-api-key: {KEY}"), 200),
        (format!("X-Api-Key: {KEY}"), 200),
        ("X-API-KEY: ".to_owned(), 401),
        ("x-api-key:".to_owned(), 401),
        (format!("x-api-key: {WELL_KNOWN_KEY}"), 401),
    ] {
        let raw = raw_request(
            addr,
            format!(
                "GET /apisix/admin/routes HTTP/1.1\r\nHost: admin\r\n{header}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        );
        assert_eq!(raw.status, Some(status), "{header:?}: {}", raw.text);
        if status == 401 {
            assert!(!raw.text.contains("/apisix/routes/1"), "{}", raw.text);
        }
    }
    stored(&gw, "/apisix/admin/routes/1");
    expect_json(&get(&gw, "/apisix/admin/routes/2"), 404, not_found());
}

// ------------------------------------------------------------ body size

#[test]
fn request_bodies_over_the_limit_are_refused() {
    let gw = Gateway::start();
    let addr = gw.admin_addr();
    let request = |body: &[u8]| {
        let mut req = format!(
            "PUT /apisix/admin/routes/big HTTP/1.1\r\nHost: admin\r\nX-API-KEY: {KEY}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        raw_request(addr, &req)
    };
    // A valid route padded with JSON whitespace to exactly the limit.
    let mut body = route_conf("/big").to_string().into_bytes();
    body.resize(MAX_BODY, b' ');
    let at_limit = request(&body);
    assert_eq!(
        at_limit.status,
        Some(201),
        "{}",
        &at_limit.text[..at_limit.text.len().min(500)]
    );

    body.push(b' ');
    let over = request(&body);
    assert_eq!(
        over.status,
        Some(413),
        "{}",
        &over.text[..over.text.len().min(500)]
    );
    let parts = over.responses();
    let msg: Value = serde_json::from_slice(&parts[0].body).expect("413 body is JSON");
    assert!(
        msg["error_msg"]
            .as_str()
            .is_some_and(|m| m.contains("greater than the maximum size 1572864")),
        "{msg}"
    );

    // Chunked, with no declared length: refused while reading.
    let mut req = format!(
        "PUT /apisix/admin/routes/big2 HTTP/1.1\r\nHost: admin\r\nX-API-KEY: {KEY}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    let chunk = vec![b' '; 64 * 1024];
    for _ in 0..(MAX_BODY / chunk.len() + 2) {
        req.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        req.extend_from_slice(&chunk);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let chunked = raw_request(addr, &req);
    assert_eq!(
        chunked.status,
        Some(413),
        "{}",
        &chunked.text[..chunked.text.len().min(500)]
    );

    expect_json(&get(&gw, "/apisix/admin/routes/big2"), 404, not_found());
    assert_eq!(get(&gw, "/apisix/admin/routes").json()["total"], 1);
}

// ----------------------------------------------------------- B09: keys

fn generated_key_line_count(logs: &str) -> usize {
    logs.lines()
        .filter(|l| l.contains("generated admin key"))
        .count()
}

/// Every file under `dir`, read whole.
fn files_contain(dir: &Path, needle: &[u8]) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        let p = e.path();
        if p.is_dir() {
            files_contain(&p, needle)
        } else {
            std::fs::read(&p).is_ok_and(|data| data.windows(needle.len()).any(|w| w == needle))
        }
    })
}

#[test]
fn b09_without_a_configured_key_a_random_key_is_generated_once() {
    let mut gw = Gateway::start_with(GatewayOpts::new().no_admin_key());
    let line = gw.wait_for_log("generated admin key", Duration::from_secs(5));
    let key = line
        .rsplit(": ")
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned();
    assert!(
        key.len() >= 32 && key.bytes().all(|b| b.is_ascii_alphanumeric()),
        "no key in {line:?}"
    );
    assert_ne!(key, WELL_KNOWN_KEY);
    assert_eq!(generated_key_line_count(&gw.logs()), 1, "{}", gw.logs());

    let routes = "/apisix/admin/routes";
    let check = |gw: &Gateway| {
        let status = |h: &[(&str, &str)]| gw.admin_raw("GET", routes, h, None).status;
        assert_eq!(status(&[("X-API-KEY", &key)]), 200);
        assert_eq!(status(&[]), 401);
        assert_eq!(status(&[("X-API-KEY", WELL_KNOWN_KEY)]), 401);
        assert_eq!(status(&[("X-API-KEY", "")]), 401);
        assert_eq!(status(&[("x-api-key", WELL_KNOWN_KEY)]), 401);
        assert_eq!(
            gw.admin_raw(
                "GET",
                &format!("{routes}?api_key={WELL_KNOWN_KEY}"),
                &[],
                None
            )
            .status,
            401
        );
        // Raw, so the empty header really is sent.
        let raw = raw_request(
            gw.admin_addr(),
            b"GET /apisix/admin/routes HTTP/1.1\r\nHost: a\r\nX-API-KEY:\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(raw.status, Some(401), "{}", raw.text);
    };
    check(&gw);
    let put = gw.admin_raw(
        "PUT",
        "/apisix/admin/routes/1",
        &[("X-API-KEY", &key), ("Content-Type", "application/json")],
        Some(&route_conf("/a").to_string()),
    );
    assert_eq!(put.status, 201, "{}", put.body);
    assert!(
        !files_contain(&gw.data_dir(), key.as_bytes()),
        "the plain generated key is stored in the data dir"
    );

    // Restart with still no key configured: the stored hash is used, and no
    // new key is generated or printed.
    gw.restart();
    assert_eq!(generated_key_line_count(&gw.logs()), 0, "{}", gw.logs());
    check(&gw);
    let r = gw.admin_raw(
        "GET",
        "/apisix/admin/routes/1",
        &[("X-API-KEY", &key)],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!gw.logs().contains(&key), "the key is logged again");
}

#[test]
fn b09_weak_configured_keys_are_refused_at_start() {
    for (key, needle) in [
        (WELL_KNOWN_KEY, "well-known"),
        ("4054f7cf07e344346cd3f287985e76a2", "well-known"),
        ("", "admin key is empty"),
        ("   ", "admin key is empty"),
        ("short-key", "shorter than"),
    ] {
        let failure = Gateway::try_start(
            GatewayOpts::new()
                .admin_key(key)
                .ready_timeout(Duration::from_secs(10)),
        )
        .map(|_| ())
        .expect_err(&format!("started with admin key {key:?}"));
        assert!(!failure.status.success(), "{failure:?}");
        assert!(failure.output.contains(needle), "{key:?}: {failure:?}");
    }

    // The same from the config file.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("portcullis.yaml");
    std::fs::write(&file, format!("admin_key: {WELL_KNOWN_KEY}\n")).unwrap();
    let failure = Gateway::try_start(
        GatewayOpts::new()
            .no_admin_key()
            .arg("--config")
            .arg(file.to_str().unwrap())
            .ready_timeout(Duration::from_secs(10)),
    )
    .map(|_| ())
    .expect_err("started with the well-known key from the config file");
    assert!(!failure.status.success(), "{failure:?}");
    assert!(failure.output.contains("well-known"), "{failure:?}");
}

// ------------------------------------------------- B08: admin allowlist

#[test]
fn b08_allowlist_uses_the_socket_peer_and_the_proxy_serves_no_admin_paths() {
    // Put a route in place with the default (loopback) allowlist first.
    let mut setup = Gateway::start();
    setup.put_route("1", route_conf("/secret-route"));
    setup.stop();

    let gw = Gateway::start_with(
        GatewayOpts::new()
            .data_dir(setup.data_dir())
            .args(["--allow-admin", "10.9.9.9/32"]),
    );
    let spoof: &[(&str, &str)] = &[
        ("X-API-KEY", KEY),
        ("X-Real-IP", "10.9.9.9"),
        ("X-Forwarded-For", "10.9.9.9"),
        ("Forwarded", "for=10.9.9.9"),
    ];
    for path in [
        "/apisix/admin/routes",
        "/apisix/admin/routes/1",
        "/openapi.json",
    ] {
        let r = gw.admin_raw("GET", path, spoof, None);
        assert_eq!(r.status, 403, "{path}: {}", r.body);
        assert!(!r.body.contains("/apisix/routes"), "{path}: {}", r.body);
        assert!(!r.body.contains("secret-route"), "{path}: {}", r.body);
    }
    let r = gw.admin_raw(
        "GET",
        &format!("/apisix/admin/routes?api_key={KEY}"),
        &[("X-Real-IP", "10.9.9.9")],
        None,
    );
    assert_eq!(r.status, 403, "{}", r.body);
    let r = gw.admin_raw("DELETE", "/apisix/admin/routes/1", spoof, None);
    assert_eq!(r.status, 403, "{}", r.body);

    // The proxy port serves no admin paths, with or without spoofing.
    let r = gw.proxy("GET", "/apisix/admin/routes", spoof);
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(!r.body.contains("secret-route"), "{}", r.body);
    let batch = json!({"pipeline": [{
        "method": "GET",
        "path": "/apisix/admin/routes",
        "headers": {"X-Real-IP": "127.0.0.1", "X-API-KEY": KEY}
    }]})
    .to_string();
    let r = gw.proxy_body(
        "POST",
        "/apisix/batch-requests",
        &[
            ("Content-Type", "application/json"),
            ("X-Real-IP", "127.0.0.1"),
        ],
        batch.as_bytes(),
    );
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(!r.body.contains("secret-route"), "{}", r.body);

    // The route is still there (nothing above changed it).
    drop(gw);
    let check = Gateway::start_in(setup.data_dir());
    assert_eq!(
        stored(&check, "/apisix/admin/routes/1")["value"]["uri"],
        "/secret-route"
    );
}

// ------------------------------------------------------------ durability

#[test]
fn configuration_survives_a_restart_with_its_indexes() {
    let echo = EchoUpstream::start();
    let mut gw = Gateway::start();
    gw.put_resource("upstreams", "1", json!({"nodes": {echo.node(): 1}}));
    gw.put_resource("services", "1", json!({"name": "s", "upstream_id": "1"}));
    gw.put_route("1", json!({"uri": "/one", "service_id": "1"}));
    gw.put_route("2", route_conf("/two"));
    let post = gw.admin("POST", "/apisix/admin/routes", Some(route_conf("/posted")));
    assert_eq!(post.status, 201, "{}", post.body);
    let r = gw.admin(
        "PATCH",
        "/apisix/admin/routes/2",
        Some(json!({"name": "patched"})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    gw.put_resource("upstreams", "gone", upstream_conf());
    let r = gw.admin("DELETE", "/apisix/admin/upstreams/gone", None);
    assert_eq!(r.status, 200, "{}", r.body);

    let lists = |gw: &Gateway| -> Vec<Value> {
        ["routes", "services", "upstreams"]
            .iter()
            .map(|k| get(gw, &format!("/apisix/admin/{k}")).json())
            .collect()
    };
    let before = lists(&gw);
    assert_eq!(before[0]["total"], 3);
    assert_eq!(before[2]["total"], 1);
    let max_index = before
        .iter()
        .flat_map(|l| l["list"].as_array().unwrap().iter())
        .map(|i| i["modifiedIndex"].as_u64().unwrap())
        .max()
        .unwrap();

    gw.restart();
    assert_eq!(lists(&gw), before);
    // …and the proxy serves it without any further write.
    let r = gw.proxy("GET", "/one", &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(echo.count(), 1);

    // Revisions carry on from where they were.
    let r = gw.put_route("3", route_conf("/three"));
    assert_eq!(r.status, 201);
    let idx = stored(&gw, "/apisix/admin/routes/3")["createdIndex"]
        .as_u64()
        .unwrap();
    assert!(idx > max_index, "new index {idx} not above {max_index}");
    // POST ids stay unique too.
    let again = gw.admin("POST", "/apisix/admin/routes", Some(route_conf("/p2")));
    assert_eq!(again.status, 201);
    assert_ne!(again.json()["key"], post.json()["key"]);
    // References still enforced against the reloaded data.
    expect_error(
        &gw.admin("DELETE", "/apisix/admin/upstreams/1", None),
        400,
        "can not delete this upstream, service [1] is still using it now",
    );
}

#[test]
fn a_second_process_on_the_same_data_dir_fails_fast() {
    let gw = Gateway::start();
    gw.put_route("1", route_conf("/a"));
    let started = std::time::Instant::now();
    let failure = Gateway::try_start(
        GatewayOpts::new()
            .data_dir(gw.data_dir())
            .ready_timeout(Duration::from_secs(10)),
    )
    .map(|_| ())
    .expect_err("a second gateway started on a data dir in use");
    assert!(!failure.status.success(), "{failure:?}");
    assert!(failure.output.contains("in use"), "{failure:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    // The first one is unharmed.
    assert_eq!(stored(&gw, "/apisix/admin/routes/1")["value"]["uri"], "/a");
}

// -------------------------------------------------------- docs, OpenAPI

#[test]
fn swagger_ui_and_openapi_document_are_served_without_a_key() {
    let gw = Gateway::start();
    let r = gw.admin_raw("GET", "/docs", &[], None);
    assert!((300..400).contains(&r.status), "{} {}", r.status, r.body);
    assert_eq!(r.header("location"), Some("/docs/"));

    let r = gw.admin_raw("GET", "/docs/", &[], None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/html")),
        "{:?}",
        r.headers
    );
    assert!(r.body.to_lowercase().contains("swagger"), "{}", r.body);

    let r = gw.admin_raw("GET", "/openapi.json", &[], None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{:?}",
        r.headers
    );
    let doc = r.json();
    let schemes = doc["components"]["securitySchemes"]
        .as_object()
        .expect("securitySchemes");
    assert!(
        schemes
            .values()
            .any(|s| s["type"] == "apiKey" && s["in"] == "header" && s["name"] == "X-API-KEY"),
        "{schemes:?}"
    );
    for path in [
        "/apisix/admin/routes",
        "/apisix/admin/routes/{id}",
        "/apisix/admin/upstreams/{id}",
        "/apisix/admin/services",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "no {path} in the document"
        );
    }
    // The served document is the one `portcullis openapi` prints.
    assert_eq!(r.body, openapi_from_binary());
}

fn openapi_from_binary() -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PORTCULLIS_") {
            cmd.env_remove(&key);
        }
    }
    let out = cmd.arg("openapi").output().expect("run portcullis openapi");
    assert!(
        out.status.success(),
        "portcullis openapi failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("the document is UTF-8")
}

#[test]
fn committed_openapi_document_is_current() {
    let generated = openapi_from_binary();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi/admin-api.json");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "openapi/admin-api.json is stale; regenerate it with: cargo run -- openapi > openapi/admin-api.json"
    );
}
