#!/usr/bin/env bash
# The lab's Docker engine at the default socket, plus the Compose v2 CLI plugin.
#   engine.sh up      start an engine if none answers (systemd where it runs, else a background
#                     dockerd whose log and pid live in .state/engine/); install Compose v2
#   engine.sh down    stop the engine only if this project started it (nothing else)
#   engine.sh status  say whether an engine answers and who started it
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
STATE="$PWD/.state/engine"
MARK="$STATE/started-by-project"
PIDFILE="$STATE/dockerd.pid"
# Debian 12 packages only Compose v1; Debian 13 ships Compose v2 as a static CLI plugin.
COMPOSE_DEB_SUITE=trixie
COMPOSE_DEB_VERSION=2.26.1-4
PLUGIN_DIR=/usr/local/lib/docker/cli-plugins

engine_answers() { timeout 10 docker info >/dev/null 2>&1; }

# sd_booted(3): systemd runs as init exactly when /run/systemd/system exists
have_systemd() { [ -d /run/systemd/system ]; }

install_compose_plugin() {
  if docker compose version >/dev/null 2>&1; then return 0; fi
  echo "engine: installing the Compose v2 plugin from Debian ${COMPOSE_DEB_SUITE} (${COMPOSE_DEB_VERSION})"
  local tmp uri
  tmp=$(mktemp -d)
  # Same mirror as the host's own sources, a private source list and state: the host's apt
  # configuration is not touched.
  uri=$(apt_mirror_uri)
  mkdir -p "$tmp/lists/partial" "$tmp/archives/partial"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri $COMPOSE_DEB_SUITE main" > "$tmp/sources.list"
  local aptopts=(-o "Dir::Etc::SourceList=$tmp/sources.list" -o Dir::Etc::SourceParts=- \
    -o "Dir::State::Lists=$tmp/lists" -o "Dir::Cache::Archives=$tmp/archives" -o APT::Get::List-Cleanup=0 -o APT::Sandbox::User=root)
  apt-get "${aptopts[@]}" update -qq
  (cd "$tmp" && apt-get "${aptopts[@]}" download "docker-compose=${COMPOSE_DEB_VERSION}" >/dev/null)
  dpkg -x "$tmp"/docker-compose_*.deb "$tmp/root"
  install -D -m 0755 "$tmp/root/usr/libexec/docker/cli-plugins/docker-compose" "$PLUGIN_DIR/docker-compose"
  rm -rf "$tmp"
  docker compose version
}

up() {
  mkdir -p "$STATE"
  if engine_answers; then
    echo "engine: a Docker engine already answers at the default socket"
  else
    command -v dockerd >/dev/null || { echo "engine: dockerd missing: run scripts/bootstrap.sh first" >&2; exit 1; }
    if have_systemd; then
      echo "engine: starting docker.service through systemd"
      systemctl start docker
    else
      echo "engine: starting dockerd in the background (log: .state/engine/dockerd.log)"
      # setsid: the engine outlives this shell and make; its log and pid stay in .state/engine/
      setsid dockerd --pidfile "$PIDFILE" >>"$STATE/dockerd.log" 2>&1 < /dev/null &
    fi
    touch "$MARK"
    for _ in $(seq 1 60); do engine_answers && break; sleep 1; done
    engine_answers || { echo "engine: dockerd did not answer in 60 s; last log lines:" >&2; tail -n 20 "$STATE/dockerd.log" >&2 || true; exit 1; }
    echo "engine: up ($(docker info --format '{{.ServerVersion}} {{.Driver}}'))"
  fi
  install_compose_plugin >/dev/null
}

down() {
  if [ ! -f "$MARK" ]; then
    echo "engine: not started by this project: left alone"
    return 0
  fi
  if have_systemd && systemctl is-active --quiet docker; then
    systemctl stop docker docker.socket containerd 2>/dev/null || true
  elif [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    local pid; pid=$(cat "$PIDFILE")
    kill "$pid"
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  fi
  rm -f "$MARK"
  echo "engine: stopped"
}

status() {
  if engine_answers; then
    echo "engine: answering ($([ -f "$MARK" ] && echo started by this project || echo not ours))"
  else
    echo "engine: not answering"; return 1
  fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
