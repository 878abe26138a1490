//! Black-box integration tests: one binary, tests grouped in modules.

mod admin_api;
mod bearer;
mod browser;
mod cors;
mod hardening;
mod logout;
mod proxy;
mod server;
mod support;
mod support_selftest;
mod websocket;
