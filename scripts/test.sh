#!/usr/bin/env bash
# The project's test command (README "Run the tests"; .ci/run calls exactly this).
#
# 1. formatting and lint checks (fail fast);
# 2. every test of the workspace: unit tests, the executor's and simulator's black-box suites,
#    the contract snapshots and the Cucumber features (tests/cucumber.rs prints "N passed, N failed");
# 3. snapshot hygiene: with CI=true insta never writes or accepts snapshots (a changed or missing
#    snapshot fails with its diff), and any committed snapshot no test referenced fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
  echo "cargo not found: install the Rust toolchain (https://rustup.rs)" >&2
  exit 1
fi

# Style gates run where the toolchain has the components (rustup's default profile does).
if cargo fmt --version >/dev/null 2>&1; then
  echo "==> cargo fmt --check"
  cargo fmt --all -- --check
else
  echo "==> cargo fmt not installed: formatting not checked"
fi
if cargo clippy --version >/dev/null 2>&1; then
  echo "==> cargo clippy -D warnings"
  cargo clippy --workspace --all-targets --locked -- -D warnings
else
  echo "==> cargo clippy not installed: lints not checked"
fi

# The PostgreSQL store's tests start a throwaway server (initdb + postgres) unless
# EXECUTOR_TEST_DATABASE_URL names one; install PostgreSQL where it is missing and we may.
if [ -z "${EXECUTOR_TEST_DATABASE_URL:-}" ] && ! command -v initdb >/dev/null \
  && ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "==> installing PostgreSQL for the store's tests"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  else
    echo "PostgreSQL not found: install it (initdb and postgres) or set EXECUTOR_TEST_DATABASE_URL" >&2
    exit 1
  fi
fi

# The dashboard's browser test drives Debian's Chromium headless through chromedriver
# (CHROMIUM / CHROMEDRIVER name other binaries); install both where they are missing and we may.
if { [ -z "${CHROMIUM:-}" ] && ! command -v chromium >/dev/null; } \
  || { [ -z "${CHROMEDRIVER:-}" ] && ! command -v chromedriver >/dev/null; }; then
  if { [ "$(id -u)" = 0 ] || [ "${CI:-}" = true ]; } && command -v apt-get >/dev/null; then
    echo "==> installing Chromium and chromedriver for the dashboard's browser test"
    sudo_if_needed=""
    [ "$(id -u)" = 0 ] || sudo_if_needed="sudo"
    $sudo_if_needed apt-get update -qq \
      && $sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "Chromium not found: install chromium and chromium-driver, or set CHROMIUM and CHROMEDRIVER" >&2
    exit 1
  fi
fi

# The TLS test of the PostgreSQL store makes its certificates with openssl.
if ! command -v openssl >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "==> installing openssl for the store's TLS test"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null
  else
    echo "openssl not found: install it (the PostgreSQL TLS test makes its certificates with it)" >&2
    exit 1
  fi
fi

refs=$(mktemp)
trap 'rm -f "$refs"' EXIT
if [ -n "${CI:-}" ] && [ "${CI}" != "false" ]; then
  export INSTA_UPDATE=no
fi

echo "==> cargo test --workspace"
INSTA_SNAPSHOT_REFERENCES_FILE="$refs" cargo test --workspace --locked "$@"

if [ "$#" -eq 0 ]; then
  echo "==> unreferenced snapshots"
  unreferenced=$(comm -23 \
    <(git ls-files -- '*.snap' | xargs -r realpath | sort -u) \
    <(xargs -r realpath < "$refs" 2>/dev/null | sort -u))
  if [ -n "$unreferenced" ]; then
    echo "snapshots that no test referenced (delete them, or restore the test that wrote them):" >&2
    echo "$unreferenced" >&2
    exit 1
  fi
  echo "all snapshots referenced"
fi
