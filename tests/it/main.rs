//! Black-box integration tests: one binary, tests grouped in modules.

mod admin_api;
mod proxy;
mod support;
mod support_selftest;
mod websocket;
