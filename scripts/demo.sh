#!/usr/bin/env bash
# The walcache demo in one command: installs PostgreSQL and Redis if missing (Debian, as root),
# then runs examples/demo.rs — private servers, the walcached daemon and an embedded cache;
# rows are written and read, and each read says which tier answered and each commit how long
# it took to evict the cached entry. Ctrl-C stops everything.
#
#   ./scripts/demo.sh            # until Ctrl-C
#   ./scripts/demo.sh --rounds 3
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/ensure-packages.sh
exec cargo run --release --locked -p walcache-examples --bin demo -- "$@"
