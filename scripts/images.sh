#!/usr/bin/env bash
# Builds the lab's images locally (no registry can be pulled from here):
#   llmops-lab/debian:bookworm        debootstrap --variant=minbase, imported
#   llmops-lab/<name>:<version>       one per folder compose/images/<name>/ (FROM the base)
#   llmops-lab/molecule-host:bookworm  a fresh Debian 12 host for the molecule scenarios
#                                      (molecule/host-image/; built only when named)
# Each image carries the label org.llmops.content-hash: a hash of its definition (and of its
# base). An image whose label matches its definition is not rebuilt.
#   images.sh            build what is missing or out of date
#   images.sh NAME...    only these (base included)
#   images.sh --list     print "tag content-hash status" for every image
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

BASE_TAG=llmops-lab/debian:bookworm
SUITE=bookworm
LABEL=org.llmops.content-hash
WORK=.state/images
# name:tag for each image folder under compose/images/
declare -A TAGS=(
  [mariadb]=llmops-lab/mariadb:10.11
  [postgres]=llmops-lab/postgres:15
  [redis]=llmops-lab/redis:7.0
  [qdrant-standin]=llmops-lab/qdrant-standin:1.19.0
  [elasticsearch-standin]=llmops-lab/elasticsearch-standin:8.15.3
  [offsite-sshd]=llmops-lab/offsite-sshd:bookworm
  [molecule-host]=llmops-lab/molecule-host:bookworm
  [newhost]=llmops-lab/newhost:bookworm
)
# The folder of each image's definition (compose/images/<name> unless listed here).
declare -A DIRS=([molecule-host]=molecule/host-image)
image_dir() { echo "${DIRS[$1]:-compose/images/$1}"; }

current_hash() { docker image inspect -f "{{index .Config.Labels \"$LABEL\"}}" "$1" 2>/dev/null || true; }

# The base image's definition is this script's base section: suite, variant, mirror.
base_hash() { printf 'suite=%s variant=minbase mirror=%s v=2\n' "$SUITE" "$(apt_mirror_uri)" | sha256sum | cut -c1-16; }

# A folder's definition: every file's path and content, plus the base image it builds on.
dir_hash() {
  (cd "$(image_dir "$1")" && find . -type f -print0 | sort -z | xargs -0 sha256sum; echo "base=$(base_hash)") \
    | sha256sum | cut -c1-16
}

build_base() {
  local want; want=$(base_hash)
  if [ "$(current_hash "$BASE_TAG")" = "$want" ]; then echo "images: $BASE_TAG up to date ($want)"; return; fi
  echo "images: building $BASE_TAG with debootstrap (about a minute)"
  local rootfs="$WORK/rootfs"
  rm -rf "$rootfs"; mkdir -p "$WORK"
  debootstrap --variant=minbase "$SUITE" "$rootfs" "$(apt_mirror_uri)" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -n 20 "$WORK/debootstrap.log" >&2; echo "images: debootstrap failed (log: $WORK/debootstrap.log)" >&2; exit 1; }
  # Container-friendly apt: no recommends, no caches left in layers.
  printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' >"$rootfs/etc/apt/apt.conf.d/90llmops"
  printf 'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb || true"; };\n' >"$rootfs/etc/apt/apt.conf.d/91clean"
  printf 'deb %s %s main\ndeb %s %s-updates main\ndeb http://deb.debian.org/debian-security %s-security main\n' \
    "$(apt_mirror_uri)" "$SUITE" "$(apt_mirror_uri)" "$SUITE" "$SUITE" >"$rootfs/etc/apt/sources.list"
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb
  tar -C "$rootfs" -c . | docker import --change "LABEL $LABEL=$want" --change 'CMD ["/bin/bash"]' - "$BASE_TAG" >/dev/null
  rm -rf "$rootfs"
  echo "images: $BASE_TAG built"
}

build_one() {
  local name=$1 tag=${TAGS[$1]} want
  want=$(dir_hash "$name")
  if [ "$(current_hash "$tag")" = "$want" ]; then echo "images: $tag up to date ($want)"; return; fi
  echo "images: building $tag from $(image_dir "$name")"
  local log="$WORK/build-$name.log"
  mkdir -p "$WORK"
  DOCKER_BUILDKIT=0 docker build --label "$LABEL=$want" -t "$tag" "$(image_dir "$name")" >"$log" 2>&1 \
    || { tail -n 30 "$log" >&2; echo "images: build of $tag failed (log: $log)" >&2; exit 1; }
  echo "images: $tag built"
}

if [ "${1:-}" = "--list" ]; then
  printf '%s %s\n' "$BASE_TAG" "$(current_hash "$BASE_TAG")"
  for n in "${!TAGS[@]}"; do printf '%s %s want=%s\n' "${TAGS[$n]}" "$(current_hash "${TAGS[$n]}")" "$(dir_hash "$n")"; done
  exit 0
fi

build_base
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(mariadb postgres redis qdrant-standin elasticsearch-standin)
for n in "${names[@]}"; do
  [ -n "${TAGS[$n]:-}" ] || { echo "images: unknown image $n (known: ${!TAGS[*]})" >&2; exit 2; }
  [ -f "$(image_dir "$n")/Dockerfile" ] || { echo "images: $(image_dir "$n")/Dockerfile missing" >&2; exit 1; }
  build_one "$n"
done
docker image prune -f --filter "label=$LABEL" >/dev/null
