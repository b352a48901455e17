#!/bin/sh
# First start of the compose PostgreSQL (docker-entrypoint-initdb.d): the example's table,
# the daemon's role and its publication. The password comes from the environment.
set -eu

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v walcached_password="$WALCACHED_POSTGRES_PASSWORD" <<'EOSQL'
CREATE TABLE IF NOT EXISTS users (id bigint PRIMARY KEY, email text NOT NULL);
INSERT INTO users (id, email) VALUES
    (1, 'ada@example.com'),
    (2, 'grace@example.com'),
    (3, 'edsger@example.com')
ON CONFLICT (id) DO NOTHING;

-- The daemon: REPLICATION for the slot, SELECT on the tables its rules name (for
-- `walcached check`). The publication is made here, by the tables' owner, because creating one
-- FOR TABLE needs ownership; walcached finds it and adds nothing.
CREATE ROLE walcached LOGIN REPLICATION PASSWORD :'walcached_password';
GRANT SELECT ON users TO walcached;
CREATE PUBLICATION walcached FOR TABLE users WITH (publish_via_partition_root = true);
EOSQL
