//! Black-box integration tests: one binary, tests grouped in modules.

mod support;
mod support_selftest;
