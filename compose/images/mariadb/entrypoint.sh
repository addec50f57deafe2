#!/bin/bash
# Initialises an empty datadir once, then runs mariadbd as mysql. root@localhost authenticates
# through the unix socket (so `docker exec` tools such as mariadb-backup need no password) or
# with the password read from MARIADB_ROOT_PASSWORD_FILE; root@'%' with that password only.
set -euo pipefail
DATADIR=/var/lib/mysql
if [ "$(id -u)" = 0 ]; then
  mkdir -p "$DATADIR" /run/mysqld
  chown mysql:mysql "$DATADIR" /run/mysqld
fi
if [ "${1:-}" = mariadbd ] && [ ! -d "$DATADIR/mysql" ]; then
  [ -r "${MARIADB_ROOT_PASSWORD_FILE:-}" ] || { echo "entrypoint: MARIADB_ROOT_PASSWORD_FILE unreadable" >&2; exit 1; }
  echo "entrypoint: initialising $DATADIR"
  mariadb-install-db --user=mysql --datadir="$DATADIR" --skip-test-db --auth-root-authentication-method=socket >/dev/null
  setpriv --reuid=mysql --regid=mysql --init-groups mariadbd --skip-networking --socket=/run/mysqld/init.sock &
  pid=$!
  for _ in $(seq 1 60); do mariadb-admin --socket=/run/mysqld/init.sock ping --silent 2>/dev/null && break; sleep 1; done
  # The password goes to the client on stdin, never on a command line.
  pw=$(cat "$MARIADB_ROOT_PASSWORD_FILE")
  pw=${pw//\\/\\\\}; pw=${pw//\'/\\\'}
  # sql_log_bin=0 (as the official image's init): the statements carry the password and must not reach the binary
  # log, which the backups archive
  mariadb --socket=/run/mysqld/init.sock <<SQL
SET sql_log_bin=0;
ALTER USER 'root'@'localhost' IDENTIFIED VIA unix_socket OR mysql_native_password USING PASSWORD('$pw');
CREATE USER 'root'@'%' IDENTIFIED BY '$pw';
GRANT ALL PRIVILEGES ON *.* TO 'root'@'%' WITH GRANT OPTION;
FLUSH PRIVILEGES;
SQL
  unset pw
  mariadb-admin --socket=/run/mysqld/init.sock shutdown
  wait "$pid" || true
  echo "entrypoint: initialised"
fi
if [ "$(id -u)" = 0 ] && [ "${1:-}" = mariadbd ]; then
  exec setpriv --reuid=mysql --regid=mysql --init-groups "$@"
fi
exec "$@"
