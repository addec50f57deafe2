#!/bin/bash
# Initialises an empty PGDATA once (superuser postgres, password from POSTGRES_PASSWORD_FILE;
# local socket connections by peer, network ones by scram-sha-256), then runs as postgres.
set -euo pipefail
if [ "$(id -u)" = 0 ]; then
  mkdir -p "$PGDATA" /run/postgresql
  chown postgres:postgres "$PGDATA" /run/postgresql
  chmod 0700 "$PGDATA"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi
if [ "${1:-}" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
  [ -r "${POSTGRES_PASSWORD_FILE:-}" ] || { echo "entrypoint: POSTGRES_PASSWORD_FILE unreadable" >&2; exit 1; }
  echo "entrypoint: initialising $PGDATA"
  initdb -D "$PGDATA" --username=postgres --pwfile="$POSTGRES_PASSWORD_FILE" --auth-local=peer \
    --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
  echo "entrypoint: initialised"
fi
if [ "${1:-}" = postgres ]; then
  shift
  exec postgres -D "$PGDATA" "$@"
fi
exec "$@"
