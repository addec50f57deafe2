#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, llmops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# ruff: noqa: E402 - Ansible modules put DOCUMENTATION/EXAMPLES/RETURN before the imports.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: offsite_sync
short_description: Replicate the backup sets off the host with restic, prune and check the off-site repository
description:
  - O(operation=sync) sends every complete set of O(root) that the repository does not hold yet (never a
    C(.partial); a failed set only with O(include_failed)) with one C(restic backup) per set, tagged C(llmops-set),
    C(set=<id>), C(kind=<name>), C(status=), C(ended=<YYYYmmddTHHMMSSZ>), C(type=full|incremental), C(parent=<id>)
    and C(binlog), so that the retention can map snapshots to sets without the local disk. A set that already has
    a snapshot is not sent again. Then the binary log archive, the config history and the model store go as
    C(llmops-extra) snapshots (C(extra=<key>); restic de-duplicates, so unchanged data costs nothing).
  - O(operation=prune) rebuilds the sets from the snapshot tags, asks the local retention policy (O(policy), the
    same rules as C(backup_set command=retention)) which to keep, forgets the snapshots of the other sets by id (a
    kept incremental keeps its full), thins the extras with C(--keep-within O(extra_keep_days)d), then runs
    C(restic prune). Run it from a TRUSTED host with credentials that may delete, never from the backed-up server.
  - O(operation=check) lists the snapshots (the repository must answer; with O(init) a missing one is created),
    then runs C(restic check --read-data-subset=O(check_subset_pct)%).
  - O(operation=fetch) brings a restore point back from the repository into O(root) (a new, possibly empty backup
    root, e.g. on the new host of a rebuild) - by default per component the newest successful set (the snapshots'
    C(component=) tags, or the manifest of older snapshots), or the sets named in O(fetch_sets); plus every set an
    incremental chain needs (the C(parent=) tags, then each verified manifest's C(parent) and C(chain)), and the
    newest snapshot of each of O(fetch_extras) (the binary log archive and the config history by default). Each
    set is restored with C(restic restore) into a private staging folder under the layout's C(restore_staging) (the
    same file system), verified - SHA256SUMS re-hashed against the manifest, and the HMAC with O(auth_key) - and
    only when every set and extra is good are they renamed into place (one atomic rename per set); otherwise
    nothing is moved and the module fails naming each problem (a damaged pack, a set that fails its checksums or
    its HMAC, a chain set missing off-site). A set already in O(root) stays when it equals the off-site copy and
    verifies; one that differs is refused, never overwritten; an extra's file with other content likewise.
    Then C(latest) names the newest successful set in O(root).
  - Repository URL forms - C(sftp:user@host:/path) (SSH keys of the user running the module, or O(ssh_identity_file),
    O(ssh_known_hosts_file) and O(ssh_port), which become C(restic -o sftp.command=ssh ...) with key and file
    PATHS only),
    C(rest:https://user:password@host:8000/path) (restic REST server, e.g. C(rclone serve restic --append-only)),
    C(s3:https://s3.example.com/bucket/path) with C(AWS_ACCESS_KEY_ID) and C(AWS_SECRET_ACCESS_KEY) in O(env).
  - The password reaches restic through C(RESTIC_PASSWORD_FILE) (O(password_file), or a 0600 file in a private
    temporary folder written from O(password) and removed afterwards); the repository URL through
    C(RESTIC_REPOSITORY). Neither is ever on a command line.
  - Ransomware - give the server append-only credentials. On the off-site host run
    C(rclone serve restic --append-only --htpasswd /etc/restic/htpasswd --addr :8000 /srv/restic) (or S3 with
    object lock and a key without delete rights); the server can add snapshots but C(restic forget) and
    C(restic prune) with its credentials fail. Pruning runs on the trusted host with its own credentials
    (a plain C(rclone serve restic) without C(--append-only) bound to that host only, or the repository path).
  - Transient errors (connection refused or reset, timeouts, HTTP 5xx, a locked repository) are retried
    O(retries) times with exponential backoff starting at O(backoff) seconds.
  - Sync and check write C(<root>/.offsite_state.json) and, with O(metrics_path), a Prometheus textfile
    (C(llmops_offsite_last_success_timestamp_seconds), C(llmops_offsite_last_run_success),
    C(llmops_offsite_lag_seconds), C(llmops_offsite_bytes_added), C(llmops_offsite_check_last_success)...), also
    when they fail, so that alerts see the failure.
extends_documentation_fragment: [llmops]
attributes:
  check_mode:
    support: full
    description:
      - O(operation=sync) lists the repository and returns the sets it would send; sends nothing, writes nothing.
      - O(operation=prune) returns the snapshots it would forget; O(operation=check) returns the command it would run.
      - O(operation=fetch) returns the sets (id, components, bytes to restore) and extras it would fetch; restores
        nothing, writes nothing.
options:
  operation:
    description: What to do, see the description.
    type: str
    choices: [sync, prune, check, fetch]
    default: sync
  root:
    description: The backup root (the folder holding the sets). O(operation=prune) and O(operation=check) need it
      only to record state and metrics; give a scratch folder on the trusted host.
    type: path
    required: true
  repository:
    description: The restic repository URL (see the description); passed as C(RESTIC_REPOSITORY).
    type: str
    required: true
  password:
    description: The repository password, from the vault. Written to a 0600 file for restic, never on a command line.
    type: str
  password_file:
    description: A file (mode 0600) holding the repository password; used instead of O(password).
    type: path
  env:
    description: Extra environment for restic, e.g. C(AWS_ACCESS_KEY_ID), C(AWS_SECRET_ACCESS_KEY) for S3.
    type: dict
    default: {}
  init:
    description: Run C(restic init) when the repository does not exist yet (O(operation=sync) and O(operation=check)).
    type: bool
    default: false
  include_failed:
    description: Also replicate complete sets whose status is failed.
    type: bool
    default: false
  limit_upload_kib:
    description: Upload bandwidth limit in KiB/s (C(restic --limit-upload)); V(0) no limit.
    type: int
    default: 0
  retries:
    description: Retries of a restic command that failed with a transient error.
    type: int
    default: 3
  backoff:
    description: Seconds before the first retry; doubled at each further retry.
    type: float
    default: 5.0
  policy:
    description: The retention policy for O(operation=prune) (roles/common's C(backup_retention); the key
      C(mariadb_incremental_days) is accepted for C(incremental_days)).
    type: dict
    default: {}
  extra_keep_days:
    description: O(operation=prune) keeps the extras' snapshots of this many days (and always the newest).
    type: int
    default: 30
  check_subset_pct:
    description: Percentage of the data packs O(operation=check) reads back; V(0) checks the structure only.
    type: int
    default: 5
  fetch_sets:
    description: O(operation=fetch) - the set ids to fetch (each with the sets its incremental chain needs); empty -
      per component the newest successful set in the repository.
    type: list
    elements: str
    default: []
  fetch_extras:
    description: O(operation=fetch) - the extras to bring back with the sets (their newest snapshot). The model store
      always comes when a fetched set holds C(models) (its parts reference their versions there).
    type: list
    elements: str
    choices: [binlogs, config_repo, model_store]
    default: [binlogs, config_repo]
  auth_key:
    description:
      - O(operation=fetch) - the backup authentication key (C(backup_auth_key), from the vault); every fetched set
        must carry its HMAC (C(SHA256SUMS.hmac)). Empty - the HMAC is not checked (SHA256SUMS still is).
    type: str
  allow_unauthenticated:
    description: O(operation=fetch) with O(auth_key) - accept a set without C(SHA256SUMS.hmac) (made before
      authentication). A set whose HMAC is wrong or made with another key is refused all the same.
    type: bool
    default: false
  host:
    description: Host name recorded in the snapshots (C(restic --host)); default the machine's host name.
    type: str
  cache_dir:
    description: restic's cache folder (C(RESTIC_CACHE_DIR)); default restic's own.
    type: path
  metrics_path:
    description: Prometheus textfile to write (e.g. C(/var/lib/node_exporter/textfile_collector/llmops_offsite.prom)).
    type: path
  restic_binary:
    description: The restic program.
    type: str
    default: restic
  ssh_identity_file:
    description:
      - sftp repositories - the private key file ssh uses (C(ssh -i PATH -o IdentitiesOnly=yes)). Only the path is on
        ssh's command line; the key stays in its 0600 file.
    type: path
  ssh_known_hosts_file:
    description:
      - sftp repositories - the known hosts file that holds the off-site host's key; with it ssh runs with
        C(StrictHostKeyChecking=yes), so an unknown or changed host key fails the run.
    type: path
  ssh_port:
    description: sftp repositories - the off-site host's SSH port (default 22, or the port in an C(sftp://) URL).
    type: int
  ssh_options:
    description: sftp repositories - more C(ssh -o) options (C(Name=value)), e.g. C(ConnectTimeout=20).
    type: list
    elements: str
    default: []
notes:
  - Debian 12's C(restic) (0.14) package; the REST append-only server is Debian 12's C(rclone serve restic).
"""

EXAMPLES = r"""
- name: Copy every new set off the host
  offsite_sync:
    root: /backup
    repository: "rest:https://llmops:{{ offsite_rest_password }}@offsite.example.org:8000/llmops"
    password: "{{ offsite_password }}"
    limit_upload_kib: 20480
    metrics_path: /var/lib/node_exporter/textfile_collector/llmops_offsite.prom
  no_log: true

- name: Copy every new set to an SFTP off-site host (key and known hosts by path; a changed host key fails)
  offsite_sync:
    root: /backup
    repository: sftp:offsite@offsite.example.org:/srv/restic/llmops
    password: "{{ offsite_password }}"
    ssh_identity_file: /etc/llmops/offsite_ed25519
    ssh_known_hosts_file: /etc/llmops/offsite_known_hosts
    ssh_port: 22
  no_log: true

- name: Prune the off-site repository (trusted host, its own credentials)
  offsite_sync:
    operation: prune
    root: /var/lib/llmops-offsite
    repository: /srv/restic/llmops
    password: "{{ offsite_password }}"
    policy: "{{ backup_retention }}"

- name: Bring the newest restore point back onto a new host (sets, their chains, binlogs, config history)
  offsite_sync:
    operation: fetch
    root: /backup
    repository: "rest:https://llmops:{{ offsite_rest_password }}@offsite.example.org:8000/llmops"
    password: "{{ offsite_password }}"
    auth_key: "{{ backup_auth_key }}"
  no_log: true
"""

RETURN = r"""
sets_sent:
  description: The set ids sent (sync; in check mode those it would send).
  type: list
  elements: str
  returned: operation=sync
extras_sent:
  description: The extras sent (binlogs, config_repo, model_store).
  type: list
  elements: str
  returned: operation=sync
bytes_added:
  description: Bytes added to the repository (restic's JSON summary C(data_added)).
  type: int
  returned: operation=sync
lag_s:
  description: Newest complete local set's end minus the newest replicated set's end, seconds (null - none yet).
  type: float
  returned: operation=sync
forget:
  description: Snapshot ids forgotten (prune).
  type: list
  elements: str
  returned: operation=prune
forget_sets:
  description: Set ids whose snapshots were forgotten (prune).
  type: list
  elements: str
  returned: operation=prune
keep:
  description: Set ids kept, with the reasons (prune).
  type: dict
  returned: operation=prune
snapshots_count:
  description: Snapshots in the repository when the check started.
  type: int
  returned: operation=check
sets:
  description:
    - O(operation=fetch) - each set fetched or found in place - C(id), C(components), C(bytes), C(verified) (null in
      check mode), C(action) (C(fetch), C(present), in check mode C(check_present)), C(snapshot), C(auth) (the HMAC
      check - C(authenticated), C(not_checked), C(unauthenticated_allowed)), C(status).
  type: list
  elements: dict
  returned: operation=fetch
extras:
  description: O(operation=fetch) - each extra brought back - C(key), C(snapshot), C(bytes), C(action), C(files_added).
  type: list
  elements: dict
  returned: operation=fetch
by_component:
  description: O(operation=fetch) without O(fetch_sets) - the set chosen for each component.
  type: dict
  returned: operation=fetch
latest:
  description: O(operation=fetch) - the set C(latest) names afterwards (null in check mode).
  type: str
  returned: operation=fetch
missing_extras:
  description: O(operation=fetch) - extras asked for that the repository does not hold.
  type: list
  elements: str
  returned: operation=fetch
repository:
  description: The repository URL with any password replaced by C(***).
  type: str
  returned: always
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.llmops_common import LlmopsError, argument_spec
from ansible.module_utils.llmops_offsite import (
    Restic,
    check,
    fetch,
    prune,
    record,
    redact,
    restic_policy,
    sftp_command,
    sync,
)


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(
            operation=dict(type="str", choices=["sync", "prune", "check", "fetch"], default="sync"),
            root=dict(type="path", required=True),
            repository=dict(type="str", required=True),
            password=dict(type="str", no_log=True),
            password_file=dict(type="path"),
            env=dict(type="dict", default={}, no_log=True),
            init=dict(type="bool", default=False),
            include_failed=dict(type="bool", default=False),
            limit_upload_kib=dict(type="int", default=0),
            retries=dict(type="int", default=3),
            backoff=dict(type="float", default=5.0),
            policy=dict(type="dict", default={}),
            extra_keep_days=dict(type="int", default=30),
            check_subset_pct=dict(type="int", default=5),
            fetch_sets=dict(type="list", elements="str", default=[]),
            fetch_extras=dict(type="list", elements="str", choices=["binlogs", "config_repo", "model_store"],
                              default=["binlogs", "config_repo"]),
            auth_key=dict(type="str", no_log=True),
            allow_unauthenticated=dict(type="bool", default=False),
            host=dict(type="str"),
            cache_dir=dict(type="path"),
            metrics_path=dict(type="path"),
            restic_binary=dict(type="str", default="restic"),
            ssh_identity_file=dict(type="path"),
            ssh_known_hosts_file=dict(type="path"),
            ssh_port=dict(type="int"),
            ssh_options=dict(type="list", elements="str", default=[]),
        ),
        mutually_exclusive=[["password", "password_file"]],
        supports_check_mode=True,
    )
    p = module.params
    root = os.path.abspath(p["root"])
    op = p["operation"]
    result = {}
    try:
        sftp = sftp_command(p["repository"], p["ssh_identity_file"], p["ssh_known_hosts_file"], p["ssh_port"],
                            p["ssh_options"])
        with Restic(p["repository"], password=p["password"], password_file=p["password_file"], env=p["env"],
                    binary=p["restic_binary"], retries=p["retries"], backoff=p["backoff"],
                    limit_upload_kib=p["limit_upload_kib"], cache_dir=p["cache_dir"],
                    options=["sftp.command=%s" % sftp] if sftp else None) as restic:
            try:
                if op == "sync":
                    result = sync(restic, root, include_failed=p["include_failed"], init=p["init"], host=p["host"],
                                  check_mode=module.check_mode)
                elif op == "fetch":
                    result = fetch(restic, root, sets=p["fetch_sets"], extras=p["fetch_extras"],
                                   auth_key=p["auth_key"], allow_unauthenticated=p["allow_unauthenticated"],
                                   check_mode=module.check_mode)
                elif op == "prune":
                    result = prune(restic, restic_policy(p["policy"]), extra_keep_days=p["extra_keep_days"],
                                   check_mode=module.check_mode)
                else:
                    result = check(restic, p["check_subset_pct"], check_mode=module.check_mode, init=p["init"])
            except LlmopsError as exc:
                if op in ("sync", "check") and not module.check_mode and os.path.isdir(root):
                    record(root, op, False, error=str(exc), metrics_path=p["metrics_path"])
                raise
            if op in ("sync", "check") and not module.check_mode:
                record(root, op, True, result=result, metrics_path=p["metrics_path"])
    except (LlmopsError, OSError, ValueError) as exc:
        module.fail_json(msg="off-site %s to %s failed: %s" % (op, redact(p["repository"]), exc))
    changed = result.pop("changed", False)
    for warning in result.pop("warnings", []):
        module.warn(warning)
    module.exit_json(changed=changed, repository=redact(p["repository"]), **result)


if __name__ == "__main__":
    main()
