#!/usr/bin/env bash
# The walcache test command: installs what the tests need, then runs formatting, lints, tests
# and doc tests. Works on a fresh Debian 12 as root (no Docker needed); as another user it
# tells you what to install.
#
#   ./scripts/test.sh
#
# Environment: NEXTEST_PROFILE=ci shows every failure instead of stopping at the first.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

section() {
    printf '\n==> %s\n' "$*"
}

# --- System packages: redis-server, PostgreSQL (initdb, postgres, pg_ctl, psql), openssl ------
section "Checking system packages"
missing=()
if ! command -v redis-server >/dev/null 2>&1 && [ ! -x /usr/bin/redis-server ]; then
    missing+=(redis-server)
fi
# pg_config alone may come from libpq-dev: the server package provides initdb next to it.
pg_bindir="$(pg_config --bindir 2>/dev/null || true)"
if [ -z "$pg_bindir" ] || [ ! -x "$pg_bindir/initdb" ]; then
    missing+=(postgresql)
fi
# openssl makes the certificates of the TLS tests.
if ! command -v openssl >/dev/null 2>&1 && [ ! -x /usr/bin/openssl ]; then
    missing+=(openssl)
fi
if [ "${#missing[@]}" -gt 0 ]; then
    install_cmd="DEBIAN_FRONTEND=noninteractive apt-get install -y ${missing[*]}"
    if [ "$(id -u)" -ne 0 ]; then
        echo "missing: ${missing[*]}" >&2
        echo "install them with: sudo apt-get update && sudo $install_cmd" >&2
        exit 1
    fi
    echo "installing: ${missing[*]}"
    # Update the package lists only if they were never downloaded on this machine.
    if ! compgen -G '/var/lib/apt/lists/*_Packages' >/dev/null; then
        apt-get update
    fi
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"; then
        # Stale lists (a package version gone from the mirror): refresh once and retry.
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
    fi
fi
# The postgresql package may start its own cluster on port 5432 (or not, without systemd).
# The tests never use it: each one starts private servers on free ports.
echo "redis-server: $(command -v redis-server || echo /usr/bin/redis-server)"
echo "PostgreSQL:   $(pg_config --bindir) ($(pg_config --version))"

# --- Rust components -------------------------------------------------------------------------
section "Checking Rust components"
if command -v rustup >/dev/null 2>&1; then
    for component in rustfmt clippy; do
        if ! rustup component list --installed | grep -q "^${component}"; then
            rustup component add "$component"
        fi
    done
fi
cargo --version

# --- Checks ----------------------------------------------------------------------------------
section "cargo fmt --all --check"
cargo fmt --all --check

section "cargo clippy --workspace --all-targets --locked -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

if cargo nextest --version >/dev/null 2>&1; then
    section "cargo nextest run --workspace --locked"
    cargo nextest run --workspace --locked
else
    section "cargo test --workspace --locked (cargo-nextest is not installed)"
    cargo test --workspace --locked
fi

section "cargo test --workspace --doc --locked"
cargo test --workspace --doc --locked

# Each benchmark once, in test mode: keeps the benches compiling and working against real
# servers. The measured run is by hand: cargo bench -p walcache-benches (see BENCHMARKS.md).
section "cargo test --workspace --benches --locked (benchmark smoke run)"
cargo test --workspace --benches --locked

section "All checks passed"
