#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, llmops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# ruff: noqa: E402 - Ansible modules put DOCUMENTATION/EXAMPLES/RETURN before the imports.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: redis_restore
short_description: Restore Redis from a set's RDB, step by step, with a safety copy, AOF handling and verification
description:
  - One step of a Redis restore per call, so that the playbook stops and starts the service between them and can
    roll back. In order
  - O(step=stage) (service running) unpacks the set's RDB into O(staging) (sha256 checked while it streams) and
    checks it with C(redis-check-rdb) in a throw-away container of the server's image; it also records the live
    server's persistence settings (C(appendonly), C(dbfilename), C(appenddirname), C(appendfilename)). A damaged
    artefact fails here, before anything is stopped.
  - O(step=swap) (service stopped) moves the data folder's RDB and AOF folder into C(<datadir>/.<safety_tag>)
    (the safety copy; a rename, instant) and puts the staged RDB in place, owned by O(owner).
  - O(step=load) (service stopped) makes the data folder start right. With AOF on, Redis 7 starts from the AOF
    (and would start empty without one), so a throw-away container of the server's image (no network, no
    password) starts on the data folder with AOF off, loads the RDB, switches AOF on (C(CONFIG SET appendonly
    yes)) and waits until the AOF rewrite has finished (C(aof_rewrite_in_progress:0),
    C(aof_last_bgrewrite_status:ok), the AOF manifest written), then C(SHUTDOWN SAVE); the container is removed.
    Before the AOF is written, the fingerprint of the loaded data (every key's name, type, value and absolute
    expiry, computed by a Lua script in the throw-away server) is compared with the manifest's fingerprint of the
    artefact; a difference fails the step. With AOF off only the load is checked.
  - O(step=verify) (service just started) waits until the server answers C(PONG) (every 0.2 s), then computes the
    same fingerprint on the restored server (one C(EVAL) per database, which blocks the server while it runs) and
    compares it with the manifest's. Compared are the keys
    without expiry and those expiring after the moment of the comparison; keys that may have expired since the
    backup (their expiry lies within about twice the time since it) are counted in RV(not_compared_keys). A set
    made before artefact fingerprints is compared with the fingerprint O(step=load) recorded from its RDB.
  - O(step=rollback) (service stopped) puts the safety copy back; O(step=cleanup) removes the staging folder and,
    unless O(keep_safety_copy), the safety copy.
extends_documentation_fragment: [llmops, llmops.restore, llmops.connection, llmops.redis, llmops.encryption]
attributes:
  check_mode:
    support: full
    description: Says what the step would do and changes nothing; O(step=verify) only reads and runs as usual.
options:
  step:
    choices: [stage, swap, load, verify, rollback, cleanup]
  datadir:
    description:
      - The host folder mounted as the server's data folder (its C(dir)). Required for O(step=swap),
        O(step=load), O(step=rollback) and O(step=cleanup).
    type: path
  safety_tag:
    description:
      - The safety copy is the folder C(.<safety_tag>) inside O(datadir) - the data folder is the server's mount
        and stays in place, so the RDB and the AOF folder move into that folder inside it (a rename on the same
        file system).
  container:
    description: The Redis container (its image provides the tools; its settings are read by O(step=stage)).
  image:
    description: The image whose C(redis-check-rdb) and C(redis-server) are used. Defaults to the image of O(container).
    type: str
  owner:
    description: C(uid:gid) owning the restored files; the throw-away server runs as this user (the images use 999).
    type: str
    default: "999:999"
  timeout:
    description:
      - Seconds to wait for the throw-away server to load the RDB and to rewrite the AOF, each, and for one
        database's fingerprint script.
    type: int
    default: 600
"""

EXAMPLES = r"""
- name: Unpack and check the RDB before stopping anything
  redis_restore:
    step: stage
    set_path: "{{ plan.plan.set_path }}"
    staging: /backup/.restore/redis
    login_password: "{{ redis_password }}"

- name: Swap it in (service stopped)
  redis_restore:
    step: swap
    set_path: "{{ plan.plan.set_path }}"
    staging: /backup/.restore/redis
    datadir: /srv/appdb/redis
    safety_tag: "pre-restore-{{ stamp }}"

- name: Load it and write the AOF (service stopped)
  redis_restore:
    step: load
    set_path: "{{ plan.plan.set_path }}"
    staging: /backup/.restore/redis
    datadir: /srv/appdb/redis
"""

RETURN = r"""
keys_read:
  description: Keys C(redis-check-rdb) read from the staged RDB (O(step=stage)).
  returned: when O(step=stage) and not check mode
  type: int
  sample: 958
settings:
  description: The live server's persistence settings used by the later steps (O(step=stage)).
  returned: when O(step=stage) and not check mode
  type: dict
  sample: {appendonly: "yes", dbfilename: dump.rdb, appenddirname: appendonlydir, appendfilename: appendonly.aof,
           databases: "16"}
safety_copy:
  description: The folder holding the previous RDB and AOF folder (O(step=swap)).
  returned: when O(step=swap)
  type: str
  sample: /srv/appdb/redis/.pre-restore-20260131_020000
aof:
  description: Whether an AOF was written from the loaded data (O(step=load)).
  returned: when O(step=load) and not check mode
  type: bool
fingerprint:
  description: The fingerprint of the loaded RDB, keys and digest per database (O(step=load)).
  returned: when O(step=load) and not check mode
  type: dict
  sample: {"0": {keys: 708, digest: "79c872ab7e869411b23ace383d3961e2cd19573e"}}
checked:
  description: >-
    What O(step=load) compared with the manifest (null for a set without artefact fingerprint): keys compared,
    keys not compared, and the expiry after which keys were compared.
  returned: when O(step=load) and not check mode
  type: dict
  sample: {compared_keys: 957, not_compared_keys: 1, cutoff: "2026-01-31T02:00:08.192Z"}
differences:
  description: How the live data differs from the reference (O(step=verify)).
  returned: when O(step=verify)
  type: list
  elements: str
against:
  description: The reference O(step=verify) compared with.
  returned: when O(step=verify)
  type: str
  sample: the manifest's fingerprint of the artefact
compared_keys:
  description: Keys of the reference that O(step=verify) compared (no expiry, or expiring after RV(cutoff)).
  returned: when O(step=verify)
  type: int
not_compared_keys:
  description: Keys of the reference that expire before RV(cutoff), so may have expired since the backup.
  returned: when O(step=verify)
  type: int
cutoff:
  description: Keys expiring after this instant were compared (O(step=verify)).
  returned: when O(step=verify)
  type: str
  sample: "2026-01-31T02:00:08.192Z"
summary:
  description: One line saying how many keys O(step=verify) compared and left out (also its C(msg)).
  returned: when O(step=verify)
  type: str
  sample: 2321 keys compared, 1 not (they expire before 2026-01-31T02:00:08.192Z, so may have expired since the backup)
removed:
  description: What O(step=cleanup) removed (or would remove).
  returned: when O(step=cleanup)
  type: list
  elements: str
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.llmops_backupset import load_component
from ansible.module_utils.llmops_common import StepFailed, argument_spec, remove_paths, run_restore_step, safety_tag
from ansible.module_utils.llmops_exec import connection_of
from ansible.module_utils.llmops_redis_restore import (
    artefact_of,
    load,
    rollback,
    server_settings,
    stage,
    swap,
    verify,
)

NEEDS_DATADIR = ("swap", "load", "rollback", "cleanup")


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(
            store="redis", default_timeout=600,
            restore=dict(steps=["stage", "swap", "load", "verify", "rollback", "cleanup"]),
            datadir=dict(type="path"),
            image=dict(type="str"),
            owner=dict(type="str", default="999:999"),
        ),
        required_if=[("step", step, ["datadir"]) for step in NEEDS_DATADIR],
        supports_check_mode=True,
    )
    target, conn, password = connection_of(module.params)

    def safety(p):
        return os.path.join(p["datadir"] or "", "." + safety_tag(p))

    def stage_step(p, check):
        artefact, sha256 = artefact_of(p["set_path"], load_component(p["set_path"], "redis"))
        if check:
            return dict(changed=True, msg="would unpack %s and check it with redis-check-rdb" % artefact)
        settings = server_settings(target, conn, password)
        staged = stage(p["image"] or target.image(), artefact, sha256, p["staging"], settings, timeout=p["timeout"])
        return dict(changed=True, keys_read=staged["keys_read"], settings=settings, rdb=staged["rdb"])

    def swap_step(p, check):
        if check:
            return dict(changed=True, safety_copy=safety(p), msg="would move the RDB and AOF of %s into %s and put "
                        "the staged RDB in place" % (p["datadir"], safety(p)))
        return dict(changed=True, **swap(p["datadir"], p["staging"], os.path.basename(safety(p)), owner=p["owner"]))

    def load_step(p, check):
        entry = load_component(p["set_path"], "redis")
        if check:
            return dict(changed=True, msg="would load the RDB in a throw-away server on %s and write its AOF"
                        % p["datadir"])
        return dict(changed=True, **load(p["datadir"], p["staging"], owner=p["owner"], timeout=p["timeout"],
                                         entry=entry))

    def verify_step(p, check):
        result = verify(target, conn, load_component(p["set_path"], "redis"), p["staging"], password,
                        timeout=p["timeout"])
        if result["differences"]:
            raise StepFailed("the restored Redis data differs from %s (%s): %s" % (
                result["against"], result["summary"], "; ".join(result["differences"][:20])), **result)
        return dict(changed=False, msg=result["summary"], **result)

    def rollback_step(p, check):
        if check:
            present = os.path.isdir(safety(p))
            return dict(changed=present, msg=("would put %s back" if present else
                                              "no safety copy at %s: nothing to roll back") % safety(p))
        restored = rollback(p["datadir"], p["staging"], os.path.basename(safety(p)))
        if restored is None:
            return dict(changed=False, msg="no safety copy at %s: the data folder was not changed" % safety(p))
        return dict(changed=True, restored=restored, restored_from=safety(p))

    def cleanup(p, check):
        removed = remove_paths([p["staging"]] + ([] if p["keep_safety_copy"] else [safety(p)]), dry_run=check)
        return dict(changed=bool(removed), removed=removed)

    run_restore_step(module, "Redis", dict(stage=stage_step, swap=swap_step, load=load_step, verify=verify_step,
                                           rollback=rollback_step, cleanup=cleanup))


if __name__ == "__main__":
    main()
