//! Tests of the test fixtures themselves (no gateway involved).

use std::io::Read;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::gateway::{http_request, parse_ready_line, strip_ansi};
use crate::support::{
    free_port, parse_responses, raw_request, wait_until, EchoUpstream, PatternReader,
};

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .redirects(0)
        .timeout(Duration::from_secs(30))
        .build()
}

#[test]
fn echo_records_the_raw_target_and_headers_as_sent() {
    let up = EchoUpstream::start_named("alpha");
    let raw = raw_request(
        up.addr(),
        b"GET /a/../b?x=%2F HTTP/1.1\r\nHost: example.test\r\nX-Mixed-Case: 1\r\n\
          x-dup: one\r\nx-dup: two\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(raw.status, Some(200), "{}", raw.text);
    assert!(raw.closed, "server should close after Connection: close");

    let parts = parse_responses(&raw.bytes);
    assert_eq!(parts.len(), 1);
    let echo: Value = serde_json::from_slice(&parts[0].body).expect("echo body is JSON");
    assert_eq!(echo["raw_target"], "/a/../b?x=%2F");
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["server"], "alpha");
    assert_eq!(echo["body_len"], 0);
    assert_eq!(
        echo["headers"],
        serde_json::json!([
            ["Host", "example.test"],
            ["X-Mixed-Case", "1"],
            ["x-dup", "one"],
            ["x-dup", "two"],
            ["Connection", "close"],
        ])
    );

    let recorded = up.wait_for(1, Duration::from_secs(5));
    assert_eq!(recorded[0].raw_target, "/a/../b?x=%2F");
    assert_eq!(recorded[0].path(), "/a/../b");
    assert_eq!(recorded[0].header_all("X-DUP"), ["one", "two"]);
    assert_eq!(up.count(), 1);
    up.clear();
    assert_eq!(up.count(), 0);
}

#[test]
fn echo_keeps_connections_alive_and_answers_pipelined_requests() {
    let up = EchoUpstream::start();
    let raw = raw_request(
        up.addr(),
        b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /two HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(raw.responses_count(), 2, "{}", raw.text);
    let targets: Vec<String> = up
        .wait_for(2, Duration::from_secs(5))
        .into_iter()
        .map(|r| r.raw_target)
        .collect();
    assert_eq!(targets, ["/one", "/two"]);
}

#[test]
fn echo_counts_request_bodies_without_storing_them() {
    let up = EchoUpstream::start();
    let body = vec![b'x'; 3 * 1024 * 1024 + 7];
    let resp = http_request(&agent(), "POST", &up.url("/upload"), &[], Some(&body))
        .expect("POST to echo upstream");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["body_len"], body.len() as u64);
    assert_eq!(up.last().expect("recorded").body_len, body.len() as u64);
}

#[test]
fn echo_streams_large_bodies_with_content_length() {
    let up = EchoUpstream::start();
    let n: u64 = 10 * 1024 * 1024;
    let response = agent()
        .get(&up.url(&format!("/bytes/{n}")))
        .call()
        .expect("GET /bytes/<n>");
    assert_eq!(
        response.header("content-length"),
        Some(n.to_string().as_str())
    );
    assert_eq!(response.header("transfer-encoding"), None);

    // Read incrementally and check the pattern without buffering it all.
    let mut reader = response.into_reader();
    let mut buf = vec![0u8; 64 * 1024];
    let mut offset = 0u64;
    loop {
        let got = reader.read(&mut buf).expect("read /bytes body");
        if got == 0 {
            break;
        }
        for (i, b) in buf[..got].iter().enumerate() {
            assert_eq!(
                *b,
                PatternReader::byte_at(offset + i as u64),
                "byte {offset}+{i}"
            );
        }
        offset += got as u64;
    }
    assert_eq!(offset, n);
}

#[test]
fn echo_delay_and_status_paths() {
    let up = EchoUpstream::start();
    let agent = agent();

    let started = Instant::now();
    let resp =
        http_request(&agent, "GET", &up.url("/prefix/delay/300"), &[], None).expect("GET /delay");
    assert_eq!(resp.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));

    let resp = http_request(&agent, "GET", &up.url("/status/418"), &[], None).expect("GET /status");
    assert_eq!(resp.status, 418);
    assert_eq!(resp.json()["raw_target"], "/status/418");

    let resp = http_request(&agent, "GET", &up.url("/status/503"), &[], None).expect("GET /status");
    assert_eq!(resp.status, 503);
}

#[test]
fn echo_serves_a_fast_request_while_a_slow_one_waits() {
    let up = EchoUpstream::start();
    let slow_url = up.url("/delay/2000");
    let slow = std::thread::spawn(move || {
        http_request(&agent(), "GET", &slow_url, &[], None).expect("slow request")
    });
    up.wait_for(1, Duration::from_secs(5));
    let fast = http_request(&agent(), "GET", &up.url("/fast"), &[], None).expect("fast request");
    assert_eq!(fast.status, 200);
    assert!(
        !slow.is_finished(),
        "the fast request waited for the slow one"
    );
    assert_eq!(slow.join().expect("slow thread").status, 200);
}

#[test]
fn dropping_the_upstream_closes_its_port() {
    let up = EchoUpstream::start();
    let addr = up.addr();
    drop(up);
    assert!(wait_until(Duration::from_secs(5), || {
        std::net::TcpStream::connect(addr).is_err()
    }));
}

#[test]
fn raw_parser_handles_chunked_and_content_length() {
    let bytes = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                  3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n\
                  HTTP/1.1 204 No Content\r\n\r\n\
                  HTTP/1.1 400 Bad Request\r\nContent-Length: 2\r\n\r\nno";
    let parts = parse_responses(bytes);
    let statuses: Vec<u16> = parts.iter().map(|p| p.status).collect();
    assert_eq!(statuses, [200, 204, 400]);
    assert_eq!(parts[0].body, b"abcde");
    assert_eq!(parts[2].body_text(), "no");
    assert_eq!(parts[2].header("content-length"), Some("2"));
}

#[test]
fn ready_line_parsing() {
    let text = "\u{1b}[2m2026-01-01T00:00:00Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m portcullis: \
                portcullis ready proxy.addr=127.0.0.1:41001 admin.addr=127.0.0.1:41002";
    assert!(!strip_ansi(text).contains('\u{1b}'));
    let (proxy, admin) = parse_ready_line(text).expect("text ready line");
    assert_eq!(proxy.port(), 41001);
    assert_eq!(admin.port(), 41002);

    let quoted = r#"INFO portcullis ready admin.addr="127.0.0.1:2" proxy.addr="127.0.0.1:1""#;
    let (proxy, admin) = parse_ready_line(quoted).expect("quoted ready line");
    assert_eq!((proxy.port(), admin.port()), (1, 2));

    let json = concat!(
        r#"{"level":"INFO","fields":{"message":"portcullis ready","#,
        r#""proxy.addr":"127.0.0.1:7","admin.addr":"127.0.0.1:8"}}"#
    );
    let (proxy, admin) = parse_ready_line(json).expect("json ready line");
    assert_eq!((proxy.port(), admin.port()), (7, 8));

    assert!(parse_ready_line("portcullis ready proxy.addr=127.0.0.1:1").is_none());
}

#[test]
fn free_port_is_bindable() {
    let port = free_port();
    assert_ne!(port, 0);
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("port from free_port is free");
}
