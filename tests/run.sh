#!/usr/bin/env bash
# Runs every test of Portcullis: formatting, lints, unit tests and the
# black-box integration tests (real gateway binary, real upstream servers,
# the real `oidc-provider` identity provider from npm).
#
# Installs what the tests need first: the identity provider's npm packages
# (`npm ci`, from the lockfile).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "tests need Node.js and npm (for the test identity provider)" >&2
  exit 1
fi
npm ci --prefix tests/idp --no-audit --no-fund --loglevel=error

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
