//! Tests of the test fixtures themselves (no gateway involved).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::gateway::{http_request, parse_ready_line, strip_ansi};
use crate::support::{
    free_port, parse_responses, raw_request, raw_request_timeout, wait_until, EchoUpstream,
    PatternReader,
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

/// Reads one response framed by `Content-Length` (what the echo sends):
/// status, headers, body. Panics on timeout or a malformed response.
fn read_response(reader: &mut impl BufRead) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut line = String::new();
    reader.read_line(&mut line).expect("read a status line");
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("read a header line");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (n, v) = line.split_once(':').expect("header line has a colon");
        headers.push((n.to_string(), v.trim().to_string()));
    }
    let len: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map_or(0, |(_, v)| v.parse().expect("numeric Content-Length"));
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).expect("read a response body");
    (status, headers, body)
}

/// The failure that retired tiny_http: a burst of new keep-alive
/// connections while others are held open. Every connection stays open
/// until all are done, each sends several requests (the last two
/// pipelined), and every request must be answered well within the bound.
#[test]
fn echo_serves_a_burst_of_concurrent_keep_alive_connections() {
    const CONNS: usize = 64;
    const PER_CONN: usize = 5;
    let up = EchoUpstream::start_named("burst");
    let addr = up.addr();
    let start = Barrier::new(CONNS);
    // Not a second barrier: a connection that fails must not leave the
    // others waiting forever.
    let done = AtomicUsize::new(0);
    let hold_until = Instant::now() + Duration::from_secs(30);
    let started = Instant::now();
    std::thread::scope(|s| {
        for c in 0..CONNS {
            let (start, done) = (&start, &done);
            s.spawn(move || {
                // All connect at once (nothing before this can fail).
                start.wait();
                let stream = TcpStream::connect(addr).expect("connect to the echo upstream");
                stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                let mut writer = stream.try_clone().unwrap();
                let mut reader = BufReader::new(stream);
                let request = |i: usize| {
                    format!("GET /c{c}/r{i} HTTP/1.1\r\nHost: burst\r\nX-Conn: {c}\r\n\r\n")
                };
                for i in 0..PER_CONN - 2 {
                    writer.write_all(request(i).as_bytes()).unwrap();
                    let (status, _, body) = read_response(&mut reader);
                    assert_eq!(status, 200);
                    let echo: Value = serde_json::from_slice(&body).unwrap();
                    assert_eq!(echo["raw_target"], format!("/c{c}/r{i}"));
                }
                let pipelined = request(PER_CONN - 2) + &request(PER_CONN - 1);
                writer.write_all(pipelined.as_bytes()).unwrap();
                for i in PER_CONN - 2..PER_CONN {
                    let (status, headers, body) = read_response(&mut reader);
                    assert_eq!(status, 200);
                    assert!(headers
                        .iter()
                        .any(|(n, v)| n.eq_ignore_ascii_case("x-echo-server") && v == "burst"));
                    let echo: Value = serde_json::from_slice(&body).unwrap();
                    assert_eq!(echo["raw_target"], format!("/c{c}/r{i}"));
                }
                // Hold the connection open until every connection is done.
                done.fetch_add(1, Ordering::SeqCst);
                while done.load(Ordering::SeqCst) < CONNS && Instant::now() < hold_until {
                    std::thread::sleep(Duration::from_millis(5));
                }
            });
        }
    });
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(15),
        "{} requests on {CONNS} connections took {elapsed:?}",
        CONNS * PER_CONN
    );
    assert_eq!(up.count(), CONNS * PER_CONN);
    for c in 0..CONNS {
        let targets: Vec<String> = up
            .requests()
            .into_iter()
            .filter(|r| r.header("x-conn") == Some(c.to_string().as_str()))
            .map(|r| r.raw_target)
            .collect();
        let expected: Vec<String> = (0..PER_CONN).map(|i| format!("/c{c}/r{i}")).collect();
        assert_eq!(targets, expected, "connection {c}: requests out of order");
    }
}

#[test]
fn echo_counts_chunked_bodies_and_keeps_the_connection() {
    let up = EchoUpstream::start();
    let raw = raw_request(
        up.addr(),
        b"POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\nA;ext=1\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n\
          POST /sized HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\nabc\
          HEAD /bytes/100 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(raw.closed, "{}", raw.text);
    // 200, then 100 Continue + 200 (the bodiless HEAD answer is not framed
    // by the parser, so only its status line is checked).
    let parts = parse_responses(&raw.bytes);
    let statuses: Vec<u16> = parts.iter().map(|p| p.status).collect();
    assert_eq!(&statuses[..3], [200, 100, 200], "{}", raw.text);
    let echo: Value = serde_json::from_slice(&parts[0].body).unwrap();
    assert_eq!(echo["body_len"], 15);
    let echo: Value = serde_json::from_slice(&parts[2].body).unwrap();
    assert_eq!(echo["body_len"], 3);
    assert!(
        raw.text
            .ends_with("Content-Length: 100\r\nConnection: close\r\n\r\n"),
        "{}",
        raw.text
    );
    let seen = up.wait_for(3, Duration::from_secs(5));
    let lens: Vec<(&str, u64)> = seen
        .iter()
        .map(|r| (r.raw_target.as_str(), r.body_len))
        .collect();
    assert_eq!(lens, [("/chunked", 15), ("/sized", 3), ("/bytes/100", 0)]);
}

#[test]
fn echo_http_1_0_closes_unless_kept_alive() {
    let up = EchoUpstream::start();
    let raw = raw_request(up.addr(), b"GET /old HTTP/1.0\r\n\r\n");
    assert_eq!(raw.status, Some(200), "{}", raw.text);
    assert!(raw.closed, "HTTP/1.0 without keep-alive closes");
    let raw = raw_request_timeout(
        up.addr(),
        b"GET /old HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        Duration::from_millis(300),
    );
    assert_eq!(raw.status, Some(200), "{}", raw.text);
    assert!(!raw.closed, "HTTP/1.0 with keep-alive stays open");
    assert!(
        raw.text.contains("Connection: keep-alive\r\n"),
        "{}",
        raw.text
    );
}

#[test]
fn echo_answers_malformed_requests_400_and_closes() {
    let up = EchoUpstream::start();
    let unparsable: &[&[u8]] = &[
        b"GARBAGE\r\n\r\n",
        b"GET /\r\n\r\n",
        b"GET  / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/2.0\r\n\r\n",
        b"GET / HTTP/1.1 extra\r\n\r\n",
        b"G(T / HTTP/1.1\r\n\r\n",
        b"GET /\xff\xfe HTTP/1.1\r\n\r\n",
        b"GET /a\x01b HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\nHost: x\n\n",
        b"GET / HTTP/1.1\r\nNo colon here\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
        b"GET / HTTP/1.1\r\n: empty-name\r\n\r\n",
        b"GET / HTTP/1.1\r\nX-A: 1\r\n folded\r\n\r\n",
        b"GET / HTTP/1.1\r\nX-A: a\x00b\r\n\r\n",
        b"GET / HTTP/1.1\r\nX-A: a\rb\r\n\r\n",
    ];
    for bytes in unparsable {
        let raw = raw_request(up.addr(), bytes);
        let label = String::from_utf8_lossy(bytes);
        assert_eq!(raw.status, Some(400), "{label:?}: {}", raw.text);
        assert!(raw.closed, "{label:?}: 400 but the connection stayed open");
    }
    assert_eq!(up.count(), 0, "unparsable heads are not recorded");

    // Heads that parse but whose body framing is refused: recorded (they
    // did reach the upstream), answered 400, connection closed.
    let bad_framing = [
        ("Content-Length: abc", ""),
        ("Content-Length: +5", ""),
        ("Content-Length: 5, 6", ""),
        ("Content-Length: 5\r\nContent-Length: 6", ""),
        ("Transfer-Encoding: gzip", ""),
        ("Transfer-Encoding: chunked, chunked", ""),
        ("Transfer-Encoding: chunked", "zz\r\n"),
        ("Transfer-Encoding: chunked", "3\r\nabcXY"),
    ];
    for (i, (head, body)) in bad_framing.iter().enumerate() {
        let req = format!(
            "POST /framing/{i} HTTP/1.1\r\nHost: x\r\n{head}\r\n\r\n{body}\r\n\r\n\
             GET /after HTTP/1.1\r\nHost: x\r\n\r\n"
        );
        let raw = raw_request(up.addr(), req.as_bytes());
        assert_eq!(raw.status, Some(400), "{head:?} {body:?}: {}", raw.text);
        assert!(raw.closed, "{head:?}: 400 but the connection stayed open");
        assert_eq!(raw.responses_count(), 1, "{head:?}: {}", raw.text);
    }
    let targets: Vec<String> = up.requests().into_iter().map(|r| r.raw_target).collect();
    let expected: Vec<String> = (0..bad_framing.len())
        .map(|i| format!("/framing/{i}"))
        .collect();
    assert_eq!(targets, expected);

    // Both framings: read as chunked, answered, then closed.
    up.clear();
    let raw = raw_request(
        up.addr(),
        b"POST /both HTTP/1.1\r\nHost: x\r\nContent-Length: 52\r\n\
          Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
          GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert_eq!(raw.status, Some(200), "{}", raw.text);
    assert!(raw.closed);
    assert_eq!(raw.responses_count(), 1, "{}", raw.text);
    let seen = up.requests();
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert_eq!(seen[0].body_len, 0);

    // Still serving.
    let raw = raw_request(up.addr(), b"GET /ok HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert_eq!(raw.status, Some(200), "{}", raw.text);
}

#[test]
fn dropping_the_upstream_ends_open_keep_alive_connections() {
    let up = EchoUpstream::start();
    let stream = TcpStream::connect(up.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    writer
        .write_all(b"GET /held HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut reader).0, 200);
    drop(up);
    // EOF (or a reset), not the read timeout of a connection left open.
    let mut rest = Vec::new();
    if let Err(e) = reader.read_to_end(&mut rest) {
        assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "the connection stayed open: {e}"
        );
    }
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
