#!/bin/sh
# Starts the compose Redis with walcache's least-privilege users (deploy/redis/users.acl.in,
# explained in docs/redis-acl.md) and an administrator as the default user. Every password
# comes from the environment and reaches Redis as its SHA-256 only: the generated ACL file
# holds no password in clear. Arguments are passed on to redis-server.
set -eu

in=/etc/walcache/users.acl.in
out=/data/users.acl

sha256() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }

umask 077
{
    # The default user (redis-cli without --user) is the administrator, with a password.
    echo "user default on #$(sha256 "$REDIS_ADMIN_PASSWORD") ~* &* +@all"
    grep '^user ' "$in" | while read -r _ name rules; do
        case "$name" in
            walcached) password=$WALCACHED_REDIS_PASSWORD ;;
            service) password=$SERVICE_REDIS_PASSWORD ;;
            *) echo "redis-acl.sh: no password variable for Redis user $name" >&2; exit 1 ;;
        esac
        echo "user $name #$(sha256 "$password") $rules"
    done
} >"$out"

# The image's entrypoint hands /data to the redis user and drops root before starting it.
exec docker-entrypoint.sh redis-server --aclfile "$out" "$@"
