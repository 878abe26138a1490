//! WebSocket proxying: routes with `enable_websocket` tunnel an upgrade to
//! a real upstream that speaks the handshake; other routes never do.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use serde_json::json;

use crate::support::{EchoUpstream, Gateway};

/// A one-connection-at-a-time upstream that answers a WebSocket handshake
/// with 101 and then echoes every byte it receives, prefixed by `echo:`.
struct WsUpstream {
    addr: SocketAddr,
}

impl WsUpstream {
    fn start() -> WsUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind ws upstream");
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                thread::spawn(move || serve(conn));
            }
        });
        WsUpstream { addr }
    }
}

fn serve(mut conn: TcpStream) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if conn.read(&mut byte).unwrap_or(0) == 0 {
            return;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    if !head.contains("upgrade: websocket") {
        let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
        return;
    }
    let _ = conn.write_all(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: test\r\n\r\n",
    );
    let mut buf = [0u8; 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let mut out = b"echo:".to_vec();
                out.extend_from_slice(&buf[..n]);
                if conn.write_all(&out).is_err() {
                    return;
                }
            }
        }
    }
}

const UPGRADE: &str = "GET /ws/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

fn read_until(conn: &mut TcpStream, needle: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(needle.len()).any(|w| w == needle) {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    got
}

#[test]
fn websocket_route_tunnels_both_ways() {
    let upstream = WsUpstream::start();
    let gw = Gateway::start();
    gw.put_route(
        "ws",
        json!({"uri": "/ws/*", "enable_websocket": true,
               "upstream": {"nodes": {upstream.addr.to_string(): 1}}}),
    );

    let mut conn = TcpStream::connect(gw.proxy_addr()).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    conn.write_all(UPGRADE.as_bytes()).unwrap();
    let head = read_until(&mut conn, b"\r\n\r\n");
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.to_lowercase().contains("upgrade: websocket"), "{head}");
    assert!(
        !head.to_lowercase().contains("content-type"),
        "the switch gained a content type: {head}"
    );

    for msg in ["hello", "second message"] {
        conn.write_all(msg.as_bytes()).unwrap();
        let got = read_until(&mut conn, msg.as_bytes());
        assert_eq!(String::from_utf8_lossy(&got), format!("echo:{msg}"));
    }
}

#[test]
fn upgrade_on_a_plain_route_is_a_plain_request() {
    let echo = EchoUpstream::start();
    let gw = Gateway::start();
    gw.put_route(
        "plain",
        json!({"uri": "/ws/*", "upstream": {"nodes": {echo.node(): 1}}}),
    );
    let mut conn = TcpStream::connect(gw.proxy_addr()).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    conn.write_all(UPGRADE.as_bytes()).unwrap();
    let got = read_until(&mut conn, b"}");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let seen = echo.wait_for(1, Duration::from_secs(5));
    assert!(seen[0].header("upgrade").is_none(), "upstream saw Upgrade");
    assert!(seen[0].header("sec-websocket-key").is_some());
}

#[test]
fn an_upgrade_the_upstream_refuses_passes_its_whole_answer_on() {
    // The echo upstream answers an upgrade with 200 and a JSON body larger
    // than one read; the client must get all of it.
    let echo = EchoUpstream::start();
    let gw = Gateway::start();
    gw.put_route(
        "ws",
        json!({"uri": "/ws/*", "enable_websocket": true,
               "upstream": {"nodes": {echo.node(): 1}}}),
    );
    let pad = "p".repeat(6000);
    let request = UPGRADE.replace("\r\n\r\n", &format!("\r\nX-Pad: {pad}\r\n\r\n"));
    let mut conn = TcpStream::connect(gw.proxy_addr()).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    conn.write_all(request.as_bytes()).unwrap();
    let got = read_until(&mut conn, b"\r\n\r\n");
    let split = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&got[..split]).to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .expect("content-length")
        .trim()
        .parse()
        .unwrap();
    assert!(length > 6000, "{head}");
    let mut body = got[split..].to_vec();
    let mut buf = [0u8; 4096];
    while body.len() < length {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&buf[..n]),
        }
    }
    assert_eq!(body.len(), length);
    assert!(String::from_utf8_lossy(&body).contains(&pad));
}
