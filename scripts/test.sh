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

# install_missing <what needs it> <package>...: installs Debian packages with apt-get as root (or
# with sudo under CI=true); anywhere else it stops with what to install.
install_missing() {
  local why=$1 sudo=""
  shift
  if [ "$(id -u)" != 0 ]; then
    if [ "${CI:-}" = true ] && command -v sudo >/dev/null; then
      sudo="sudo"
    else
      echo "missing: $* ($why); install it and run again" >&2
      exit 1
    fi
  fi
  if ! command -v apt-get >/dev/null; then
    echo "missing: $* ($why), and apt-get is not here to install it" >&2
    exit 1
  fi
  echo "==> installing $* ($why)"
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# The PostgreSQL store's tests start a throwaway server (initdb + postgres) unless
# EXECUTOR_TEST_DATABASE_URL names one.
if [ -z "${EXECUTOR_TEST_DATABASE_URL:-}" ] && ! command -v initdb >/dev/null \
  && ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
  install_missing "the store's tests start a throwaway server; or set EXECUTOR_TEST_DATABASE_URL" postgresql
fi

# The dashboard's browser test drives Debian's Chromium headless through chromedriver
# (CHROMIUM / CHROMEDRIVER name other binaries).
if { [ -z "${CHROMIUM:-}" ] && ! command -v chromium >/dev/null; } \
  || { [ -z "${CHROMEDRIVER:-}" ] && ! command -v chromedriver >/dev/null; }; then
  install_missing "the dashboard's browser test; or set CHROMIUM and CHROMEDRIVER" chromium chromium-driver
fi

# The TLS test of the PostgreSQL store makes its certificates with openssl.
if ! command -v openssl >/dev/null; then
  install_missing "the store's TLS test makes its certificates with it" openssl
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
