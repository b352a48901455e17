#!/usr/bin/env bash
# Instructions per L1 hit (walcache vs raw moka), from valgrind's callgrind: each mode runs with
# 0 and N lookups, and the difference divided by N is the cost of one lookup.
# Run with: cargo build --release -p walcache-benches --bin l1-instructions && benches/l1_instructions.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin=target/release/l1-instructions
n=${1:-200000}
count() {
    valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$1" "$2" 2>&1 \
        | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
for mode in moka moka-str walcache; do
    base=$(count "$mode" 0)
    full=$(count "$mode" "$n")
    echo "$mode: $(( (full - base) / n )) instructions per lookup ($n lookups)"
done
