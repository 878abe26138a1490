//! Findings of the first attack review, each kept fixed: underscore header
//! names, Host normalisation, session cookies on every route, body framing,
//! unexpected protocol switches, and bounded sign-in state.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::thread;
use std::time::Duration;

use serde_json::json;

use crate::support::{raw_request, EchoUpstream, Gateway};

fn raw_get(gw: &Gateway, path: &str, extra: &str) -> crate::support::RawResponse {
    let req = format!("GET {path} HTTP/1.1\r\n{extra}Connection: close\r\n\r\n");
    raw_request(gw.proxy_addr(), req.as_bytes())
}

#[test]
fn underscore_header_names_never_reach_the_upstream() {
    let echo = EchoUpstream::start();
    let gw = Gateway::start();
    gw.put_route(
        "open",
        json!({"uri": "/*", "upstream": {"nodes": {echo.node(): 1}}}),
    );
    let r = raw_get(
        &gw,
        "/x",
        "Host: a\r\nX_Userinfo: eyJzdWIiOiJhZG1pbiJ9\r\nX_Real_IP: 10.9.9.9\r\nX-Ok: 1\r\n",
    );
    assert_eq!(r.status, Some(200), "{}", r.text);
    let seen = echo.wait_for(1, Duration::from_secs(5));
    let names: Vec<String> = seen[0]
        .headers
        .iter()
        .map(|(n, _)| n.to_lowercase())
        .collect();
    assert!(names.iter().all(|n| !n.contains('_')), "{names:?}");
    assert_eq!(seen[0].header("x-ok"), Some("1"));
    assert_eq!(seen[0].header("x-real-ip"), Some("127.0.0.1"));
}

#[test]
fn host_is_normalised_before_matching_and_forwarding() {
    let open = EchoUpstream::start_named("open");
    let admin = EchoUpstream::start_named("admin");
    let gw = Gateway::start();
    gw.put_route(
        "open",
        json!({"uri": "/h/*", "upstream": {"nodes": {open.node(): 1}}}),
    );
    gw.put_route(
        "admin",
        json!({"uri": "/h/*", "host": "admin.example.com",
               "upstream": {"nodes": {admin.node(): 1}}}),
    );
    for host in [
        "admin.example.com.",
        "Admin.Example.COM.",
        "admin.example.com.:80",
    ] {
        let r = raw_get(&gw, "/h/x", &format!("Host: {host}\r\n"));
        assert_eq!(r.status, Some(200), "{host}: {}", r.text);
        assert!(
            r.text.contains("\"server\":\"admin\""),
            "{host} went elsewhere"
        );
    }
    let seen = admin.requests();
    assert!(seen
        .iter()
        .all(|s| !s.header("host").unwrap_or("").contains("com.")));
    for bad in ["x@admin.example.com", "admin%2eexample.com", "a b"] {
        let r = raw_get(&gw, "/h/x", &format!("Host: {bad}\r\n"));
        assert!(matches!(r.status, Some(400)), "{bad}: {}", r.text);
    }
    assert_eq!(open.count(), 0, "the open route was reached");
}

#[test]
fn session_cookies_are_removed_on_every_route() {
    let echo = EchoUpstream::start();
    let gw = Gateway::start();
    gw.put_route(
        "app",
        json!({"uri": "/app/*", "plugins": {"openid-connect": {
            "client_id": "c", "client_secret": "s",
            "discovery": "http://127.0.0.1:1/.well-known/openid-configuration",
            "session": {"cookie_name": "my_sess"}}},
            "upstream": {"nodes": {echo.node(): 1}}}),
    );
    gw.put_route(
        "open",
        json!({"uri": "/open/*", "upstream": {"nodes": {echo.node(): 1}}}),
    );
    let r = gw.proxy(
        "GET",
        "/open/x",
        &[("Cookie", "theme=dark; my_sess=secret-id; my_sess_login=abc")],
    );
    assert_eq!(r.status, 200);
    let seen = echo.wait_for(1, Duration::from_secs(5));
    assert_eq!(seen[0].header("cookie"), Some("theme=dark"));
}

#[test]
fn a_body_with_a_length_keeps_its_length() {
    let echo = EchoUpstream::start();
    let gw = Gateway::start();
    gw.put_route(
        "open",
        json!({"uri": "/*", "upstream": {"nodes": {echo.node(): 1}}}),
    );
    let r = gw.proxy_body("POST", "/p", &[("Content-Type", "text/plain")], b"abc");
    assert_eq!(r.status, 200);
    let seen = echo.wait_for(1, Duration::from_secs(5));
    assert_eq!(seen[0].header("content-length"), Some("3"));
    assert_eq!(seen[0].header("transfer-encoding"), None);
    assert_eq!(seen[0].body_len, 3);
}

#[test]
fn an_unexpected_protocol_switch_is_a_bad_gateway() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nraw",
            );
        }
    });
    let gw = Gateway::start();
    gw.put_route(
        "plain",
        json!({"uri": "/*", "upstream": {"nodes": {addr.to_string(): 1}}}),
    );
    let r = gw.proxy("GET", "/x", &[]);
    assert_eq!(r.status, 502, "{}", r.body);
}

#[test]
fn anonymous_sign_in_starts_stay_bounded() {
    let echo = EchoUpstream::start();
    let discovery = TcpListener::bind("127.0.0.1:0").unwrap();
    let daddr = discovery.local_addr().unwrap();
    let doc = format!(
        "{{\"issuer\":\"http://{daddr}\",\"authorization_endpoint\":\"http://{daddr}/auth\",\
         \"token_endpoint\":\"http://{daddr}/token\",\"jwks_uri\":\"http://{daddr}/jwks\"}}"
    );
    thread::spawn(move || {
        for mut conn in discovery.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{doc}",
                doc.len()
            );
            let _ = conn.write_all(resp.as_bytes());
        }
    });
    let gw = Gateway::start();
    gw.put_route(
        "app",
        json!({"uri": "/app/*", "plugins": {"openid-connect": {
            "client_id": "c", "client_secret": "s",
            "discovery": format!("http://{daddr}/.well-known/openid-configuration")}},
            "upstream": {"nodes": {echo.node(): 1}}}),
    );
    let dir_size = |p: &std::path::Path| -> u64 {
        fn walk(p: &std::path::Path) -> u64 {
            std::fs::read_dir(p)
                .map(|it| {
                    it.flatten()
                        .map(|e| match e.metadata() {
                            Ok(m) if m.is_dir() => walk(&e.path()),
                            Ok(m) => m.len(),
                            Err(_) => 0,
                        })
                        .sum()
                })
                .unwrap_or(0)
        }
        walk(p)
    };
    let before = dir_size(&gw.data_dir());
    let long = "a".repeat(6000);
    for i in 0..200 {
        let r = gw.proxy(
            "GET",
            &format!("/app/{i}{long}"),
            &[("Accept", "text/html")],
        );
        assert_eq!(r.status, 302, "{}", r.body);
        let loc = r.header("location").unwrap_or("");
        assert!(loc.starts_with(&format!("http://{daddr}/auth?")), "{loc}");
    }
    let after = dir_size(&gw.data_dir());
    // 200 sign-ins with 6 KB URLs would be over a megabyte if they were
    // written to the store; they are kept in bounded memory instead.
    assert!(
        after < before + 512 * 1024,
        "data dir grew {before} → {after}"
    );
}

#[test]
fn concurrent_admin_writes_all_complete() {
    // sled 0.34 deadlocked when several writers flushed at once.
    let gw = std::sync::Arc::new(Gateway::start());
    let writers: Vec<_> = (0..16)
        .map(|t| {
            let gw = gw.clone();
            thread::spawn(move || {
                for i in 0..20 {
                    let r = gw.admin(
                        "PUT",
                        &format!("/apisix/admin/routes/w{t}-{i}"),
                        Some(json!({"uri": format!("/w/{t}/{i}"),
                                    "upstream": {"nodes": {"127.0.0.1:1": 1}}})),
                    );
                    assert_eq!(r.status, 201, "{}", r.body);
                }
            })
        })
        .collect();
    for w in writers {
        w.join().expect("writer finished");
    }
    let list = gw.admin("GET", "/apisix/admin/routes", None);
    assert_eq!(list.json()["total"], 320);
}

/// An upstream that answers each request on a connection with the next
/// of `answers`, raw, then keeps the connection open for more.
fn scripted_upstream(answers: Vec<&'static [u8]>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let answers = answers.clone();
            thread::spawn(move || {
                let mut buf = [0u8; 8192];
                for a in answers {
                    let mut got = Vec::new();
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    if conn.write_all(a).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn chunked_and_close_delimited_answers_are_relayed_whole() {
    let chunked: &'static [u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n";
    let again: &'static [u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nagain";
    let up = scripted_upstream(vec![chunked, again]);
    let close: &'static [u8] = b"HTTP/1.0 200 OK\r\n\r\nuntil the end";
    let up10 = scripted_upstream(vec![close]);
    // One worker, so both requests share its connection pool.
    let gw = Gateway::start_with(crate::support::GatewayOpts::new().args(["--workers", "1"]));
    gw.put_route(
        "c",
        json!({"uri": "/c", "upstream": {"nodes": {up.to_string(): 1}}}),
    );
    gw.put_route(
        "d",
        json!({"uri": "/d", "upstream": {"nodes": {up10.to_string(): 1}}}),
    );
    let r = gw.proxy("GET", "/c", &[]);
    assert_eq!((r.status, r.body.as_str()), (200, "hello, world"));
    // The connection went back to the pool and carries the next answer.
    let r = gw.proxy("GET", "/c", &[]);
    assert_eq!((r.status, r.body.as_str()), (200, "again"));
    let r = gw.proxy("GET", "/d", &[]);
    assert_eq!((r.status, r.body.as_str()), (200, "until the end"));
}

#[test]
fn a_pooled_connection_the_upstream_closed_is_replaced_transparently() {
    let once: &'static [u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    // Answers one request per connection, then closes it.
    let up = scripted_upstream(vec![once]);
    let gw = Gateway::start_with(crate::support::GatewayOpts::new().args(["--workers", "1"]));
    gw.put_route(
        "c",
        json!({"uri": "/c", "upstream": {"nodes": {up.to_string(): 1}}}),
    );
    for _ in 0..3 {
        let r = gw.proxy("GET", "/c", &[]);
        assert_eq!((r.status, r.body.as_str()), (200, "ok"));
        thread::sleep(Duration::from_millis(50));
    }
}
