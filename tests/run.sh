#!/usr/bin/env bash
# Runs every test of Portcullis: formatting, lints, unit tests, the
# black-box integration tests (real gateway binary, real upstream servers,
# the real `oidc-provider` identity provider from npm) and the browser test
# of the full-stack demo (tests/e2e).
#
# Installs what the tests need first: the identity provider's npm packages
# and the browser test's playwright-core (`npm ci`, from the lockfiles), and
# Debian's chromium for the browser test of the full-stack demo (installed
# with apt-get when running as root; otherwise a missing one is an error).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "tests need Node.js and npm (for the test identity provider)" >&2
  exit 1
fi
npm ci --prefix tests/idp --no-audit --no-fund --loglevel=error
npm ci --prefix tests/e2e --no-audit --no-fund --loglevel=error
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
  else
    echo "the browser test needs Debian's chromium at /usr/bin/chromium:" >&2
    echo "  sudo apt-get install chromium" >&2
    exit 1
  fi
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace

# The full-stack demo in a real browser, on the binary cargo test just built.
PORTCULLIS_BIN=target/debug/portcullis node --test tests/e2e/demo.spec.mjs
