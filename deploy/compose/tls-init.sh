#!/bin/sh
# One-shot (the compose `tls` service): a private CA and a server certificate for the
# `postgres` service, written once into the `pgtls` volume; the CA certificate alone is copied
# into the `pgca` volume, the only one walcached mounts. PostgreSQL serves the certificate;
# walcached verifies it against the CA and the name `postgres` (sslmode=verify-full), so a
# server that is not ours cannot feed it a change stream. Uses the openssl of the postgres
# image (Debian's postgresql packages depend on it).
set -eu
dir=/etc/walcache-tls
if [ -s "$dir/server.crt" ] && [ -s /etc/walcache-ca/ca.crt ]; then
    echo "tls-init: $dir already holds a certificate"
    exit 0
fi
cd "$dir"
openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=walcache demo CA" \
    -keyout ca.key -out ca.crt
openssl req -newkey rsa:2048 -nodes -subj "/CN=postgres" -keyout server.key -out server.csr
printf 'subjectAltName=DNS:postgres,DNS:localhost,IP:127.0.0.1\n' > san.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
    -extfile san.ext -out server.crt
rm -f server.csr san.ext ca.srl ca.key
# PostgreSQL refuses a key others may read; it runs as uid 999 in the postgres image.
chown 999:999 server.key server.crt
chmod 600 server.key
chmod 644 server.crt ca.crt
cp ca.crt /etc/walcache-ca/ca.crt
echo "tls-init: wrote ca.crt, server.crt and server.key"
