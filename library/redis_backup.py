#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, llmops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# ruff: noqa: E402 - Ansible modules put DOCUMENTATION/EXAMPLES/RETURN before the imports.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: redis_backup
short_description: Back up Redis as an RDB snapshot (BGSAVE, or redis-cli --rdb) checked with redis-check-rdb
description:
  - With O(method=bgsave) starts a C(BGSAVE) of its own, waits until it has finished successfully (an already
    running save is waited for first), then copies the server's RDB file (C(dir)/C(dbfilename) from
    C(CONFIG GET) when allowed, else O(rdb_dir)/O(rdb_filename)) through zstd into C(<dest>/dump.rdb.zst),
    computing its sha256 in the same pass.
  - With O(method=rdb) streams a snapshot over the replication protocol (C(redis-cli --rdb -)) instead, for a
    server whose files are out of reach.
  - The artefact is streamed back (sha256 checked) into C(redis-check-rdb), in the server's container or, on
    the host, next to the artefact.
  - Fingerprints the artefact itself, not the live server, so that writes during the backup do not matter. The RDB
    is unpacked into a temp folder next to the set's folder (removed afterwards) and loaded by a throw-away
    C(redis-server) of O(image) (no network, no password, nothing saved); there a Lua script per database walks
    every key with C(SCAN) (never C(KEYS)) and hashes its name, type, absolute expiry and value (hash fields and
    set members order-free, lists, sorted sets and streams in order). Only hex digests and counts leave the
    script, so any bytes in names and values are safe. The scratch server needs memory for the dataset.
  - Keys with a TTL are kept apart by absolute expiry (buckets doubling from the save point), so that a restore
    verified later compares every key that cannot have expired meanwhile (see C(redis_restore)).
  - Returns the manifest entry of the component for C(backup_set), with that fingerprint, the save point, whether
    AOF is on, and the server's version.
extends_documentation_fragment: [llmops, llmops.connection, llmops.redis, llmops.compression, llmops.timeout,
                                 llmops.encryption]
attributes:
  check_mode:
    support: full
    description:
      - Connects and returns the server's version, persistence settings and keyspace, but starts no save and
        writes nothing; C(changed) says that a backup would be made.
options:
  dest:
    description:
      - Folder of this component inside the set being written; created with mode 0700. The file is 0600.
    type: path
    required: true
  method:
    description:
      - V(bgsave) (snapshot on the server, then copy its file) or V(rdb) (C(redis-cli --rdb -)), the usual choice
        for a server whose files are out of reach (tools on this host, an empty O(container)).
    type: str
    choices: [bgsave, rdb]
    default: bgsave
  rdb_dir:
    description: The server's C(dir), used when C(CONFIG GET) is not allowed.
    type: str
    default: /data
  rdb_filename:
    description: The server's C(dbfilename), used when C(CONFIG GET) is not allowed.
    type: str
    default: dump.rdb
  wait_timeout:
    description: Seconds to wait for the background save (and one already running) to finish.
    type: int
    default: 300
  timeout:
    description:
      - Seconds after which copying, checking or fingerprinting the snapshot is stopped and fails (V(0) = no limit
        for the copy and check, one hour for loading it in the scratch server and for each database's script).
  image:
    description:
      - The Redis image of the scratch server that loads the snapshot to fingerprint it. Defaults to the image of
        O(container); required when O(container) is empty. It must read the server's RDB version (same or newer).
    type: str
notes:
  - On a host without C(redis-check-rdb) the check is skipped with a warning (C(component.rdb_check.ok) is null).
  - The fingerprint needs Redis 7.0 or later (C(PEXPIRETIME), script flags) in O(image).
  - C(component.save_point) is our clock just before the C(BGSAVE) was sent (or the replication stream was
    asked for); every write acknowledged before it is in the snapshot. With O(method=bgsave), when another save
    replaced the server's RDB file before the copy ended, the save and the copy are repeated (three times at
    most).
"""

EXAMPLES = r"""
- name: Back up Redis
  redis_backup:
    dest: "{{ bset.path }}/redis"
    login_password: "{{ redis_password }}"
  register: redis_result

- name: Back up a remote Redis over the replication protocol
  redis_backup:
    dest: "{{ bset.path }}/redis"
    container: ""
    login_host: cache.internal
    login_password: "{{ redis_password }}"
    method: rdb
"""

RETURN = r"""
component:
  description:
    - The redis component's manifest entry, for C(backup_set command=component) (not in check mode), with the
      fingerprint of the artefact per database and by expiry (C(fingerprint_detail)).
  returned: success and not check mode
  type: dict
  sample:
    status: success
    type: redis
    backup_type: full
    tool: redis-cli BGSAVE + cat
    tool_version: redis-cli 7.0.15
    server_version: 7.0.15
    redis_version: 7.0.15
    method: bgsave
    started: "2026-01-31T02:00:00Z"
    ended: "2026-01-31T02:00:02Z"
    duration_s: 1.8
    bytes: 9578
    files: [{path: /backup/.llmops_20260131_020000.partial/redis/dump.rdb.zst, sha256: "...", size: 9578}]
    rdb_source: /data/dump.rdb
    lastsave: "2026-01-31T02:00:01Z"
    bgsave: {reply: Background saving started, requested: "2026-01-31T02:00:00.412Z",
             finished: "2026-01-31T02:00:00.903Z", waited_for_other_save: false, copy_attempts: 1}
    save_point: "2026-01-31T02:00:00.412Z"
    aof_enabled: true
    rdb_check: {ok: true, where: container llmops-appdb-redis-1, keys_read: 958}
    fingerprint: {"0": {keys: 708, digest: "79c872ab..."}, "1": {keys: 250, digest: "3b6df60d..."}}
    fingerprint_detail:
      method: redis-lua/1
      reference_ms: 1769824800412
      bucket_ms: 1000
      dbs:
        "0":
          persistent: {keys: 207, digest: "98b25331..."}
          expiring: {"17": {keys: 1, digest: "419bd534..."}, "22": {keys: 500, digest: "9f7a4a46..."}}
        "1": {persistent: {keys: 250, digest: "3b6df60d..."}, expiring: {}}
      source: the artefact, loaded by a scratch server of redis:7.0
      seconds: 0.48
server:
  description: The server's version, persistence state and keyspace (before the backup).
  returned: success
  type: dict
  sample: {redis_version: 7.0.15, aof_enabled: true, keyspace: {"0": {keys: 708, expires: 501}}}
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.llmops_common import LlmopsError, argument_spec, use_encryption
from ansible.module_utils.llmops_exec import connection_of
from ansible.module_utils.llmops_redis import backup, server_info


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(
            store="redis", compression=True, default_timeout=0,
            dest=dict(type="path", required=True),
            method=dict(type="str", default="bgsave", choices=["bgsave", "rdb"]),
            rdb_dir=dict(type="str", default="/data"),
            rdb_filename=dict(type="str", default="dump.rdb"),
            wait_timeout=dict(type="int", default=300),
            image=dict(type="str"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    target, conn, password = connection_of(p)
    try:
        use_encryption(p)
        info = server_info(target, conn, password)  # fails (auth, unreachable) before anything is written
        if module.check_mode:
            module.exit_json(changed=True, server=info, msg="would take an RDB snapshot (%s) into %s"
                             % (p["method"], os.path.join(p["dest"], "dump.rdb.zst")))
        os.makedirs(p["dest"], mode=0o700, exist_ok=True)
        entry = backup(target, conn, p["dest"], password=password, method=p["method"], rdb_dir=p["rdb_dir"],
                       rdb_filename=p["rdb_filename"], wait_timeout=p["wait_timeout"], zstd_level=p["zstd_level"],
                       zstd_threads=p["zstd_threads"], timeout=p["timeout"] or None, image=p["image"])
        if entry["rdb_check"]["ok"] is None:
            module.warn("the snapshot was not checked: %s" % entry["rdb_check"]["reason"])
        module.exit_json(changed=True, server=info, component=entry)
    except (LlmopsError, OSError) as exc:
        module.fail_json(msg="Redis backup failed: %s" % exc)


if __name__ == "__main__":
    main()
