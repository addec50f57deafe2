# shellcheck shell=bash
# Shared helpers for the project's shell scripts (sourced, never run).

# The Debian mirror the host itself uses (deb822 sources first, then the classic list), so that
# image builds and the Compose plugin download go where the host's apt already goes.
apt_mirror_uri() {
  local uri
  uri=$(grep -hoE '^URIs: *\S+' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security | head -n1 | awk '{print $2}')
  [ -n "$uri" ] || uri=$(grep -hoE '^deb +\S+' /etc/apt/sources.list 2>/dev/null | grep -v security | head -n1 | awk '{print $2}')
  echo "${uri:-http://deb.debian.org/debian}"
}
