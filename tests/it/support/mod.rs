//! Shared fixtures for the `it` integration tests: an echo upstream, a
//! harness for the real `portcullis` binary, and raw TCP exchanges.

// Not every test uses every helper.
#![allow(dead_code, unused_imports)]

pub mod browser;
pub mod fault_idp;
pub mod fault_op;
pub mod gateway;
pub mod idp;
pub mod raw;
pub mod upstream;

use std::net::TcpListener;
use std::thread;
use std::time::{Duration, Instant};

pub use fault_idp::FaultIdp;
pub use fault_op::FaultOp;
pub use gateway::{
    Gateway, GatewayOpts, Resp, StartFailure, DEFAULT_ADMIN_KEY, READY_TIMEOUT, STOP_TIMEOUT,
};
pub use idp::Idp;
pub use raw::{
    parse_responses, raw_request, raw_request_parts, raw_request_timeout, raw_responses_count,
    RawPart, RawResponse,
};
pub use upstream::{EchoUpstream, PatternReader, Recorded};

/// A loopback port that was free a moment ago (bind to :0, then release).
/// Another process may take it before you do; prefer binding to :0 directly.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0 to find a free port")
        .port()
}

/// Polls `cond` every 20 ms until it returns true (→ `true`) or `timeout`
/// passes (→ `false`).
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}
