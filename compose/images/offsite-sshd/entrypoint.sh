#!/bin/sh
# A fresh host key per container; the one authorized key from the environment (a public key, not a secret).
set -eu
[ -f /etc/ssh/ssh_host_ed25519_key ] || ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key
if [ -z "${OFFSITE_AUTHORIZED_KEY:-}" ]; then
  echo "offsite-sshd: set OFFSITE_AUTHORIZED_KEY to the client's public key (ssh-ed25519 AAAA...)" >&2
  exit 2
fi
printf '%s\n' "$OFFSITE_AUTHORIZED_KEY" > /home/offsite/.ssh/authorized_keys
chown offsite:offsite /home/offsite/.ssh/authorized_keys /srv/restic
chmod 0600 /home/offsite/.ssh/authorized_keys
exec "$@"
