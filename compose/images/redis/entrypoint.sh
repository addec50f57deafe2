#!/bin/bash
# Runs redis-server as redis, owning /data.
set -euo pipefail
if [ "$(id -u)" = 0 ]; then
  chown redis:redis /data
  exec setpriv --reuid=redis --regid=redis --init-groups "$@"
fi
exec "$@"
