//! A minimal upstream for bursts of concurrent requests: one thread per
//! connection, HTTP/1.1 keep-alive, every request answered `200 ok`.
//!
//! [`super::EchoUpstream`] (tiny_http 0.12) can starve connections under
//! such bursts: its accept thread hands each new connection to a task pool
//! that counts idle workers before the woken one has left the count, so a
//! second connection can queue behind workers that are busy with other
//! keep-alive connections until one of them closes. Requests on it then
//! hang. This server spawns a thread for every connection instead.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

pub struct OkUpstream {
    addr: SocketAddr,
    count: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl OkUpstream {
    pub fn start() -> OkUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("ok upstream: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("ok upstream address");
        let count = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let (count, stop) = (count.clone(), stop.clone());
            thread::Builder::new()
                .name(format!("ok-upstream-{}", addr.port()))
                .spawn(move || {
                    for conn in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        if let Ok(conn) = conn {
                            let count = count.clone();
                            let _ = thread::Builder::new()
                                .name("ok-upstream-conn".into())
                                .spawn(move || serve(conn, &count));
                        }
                    }
                })
                .expect("spawn ok upstream acceptor")
        };
        OkUpstream {
            addr,
            count,
            stop,
            acceptor: Some(acceptor),
        }
    }

    /// `"127.0.0.1:PORT"`, for route upstream node lists.
    pub fn node(&self) -> String {
        format!("127.0.0.1:{}", self.addr.port())
    }

    /// Requests answered so far.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

impl Drop for OkUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the acceptor so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }
}

/// Answers every request on one connection until the peer closes it.
fn serve(mut conn: TcpStream, count: &AtomicUsize) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(60)));
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let body_len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + body_len {
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..head_end + body_len);
        count.fetch_add(1, Ordering::SeqCst);
        let answer = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok";
        if conn.write_all(answer).is_err() {
            return;
        }
    }
}
