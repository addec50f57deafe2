#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, llmops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# ruff: noqa: E402 - Ansible modules put DOCUMENTATION/EXAMPLES/RETURN before the imports.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: files_restore
short_description: Restore the uploads tree, model versions or configuration files from a backup set
description:
  - The counterpart of C(files_backup). Every change to a live path is written to a journal in O(staging) first,
    so that O(step=rollback) undoes exactly what O(step=swap) did; O(step=cleanup) removes the staging folder
    and, unless O(keep_safety_copy), the safety copies.
  - O(mode=tree) (uploads) checks the set's tree against the tree hash in the manifest (or unpacks the full archive
    when the tree is gone), moves O(path) aside as C(<path>.<safety_tag>), copies the tree into place with
    C(rsync -a --numeric-ids) and checks that the result has the manifest's tree hash.
  - O(mode=models) copies the chosen version of each model (O(model_version); default every version the set
    references) from the content-addressed store into a hidden temp folder next to C(<path>/<model>/<version>),
    checks every file's sha256 against the store's record, swaps it in (a different copy already there is kept
    as C(.<version>.<safety_tag>); an equal one is left as it is) and points C(current) at it (by default the
    links as the set recorded them). When any check fails, every folder and link is put back as it was (the
    previous C(current) target). Other versions in O(path) are left alone. Restored files are 0644, folders 0755.
  - O(mode=configs) checks out O(commit) (default the set's) of the config history
    (C(<backup_root>/configs.git-worktree)) into a temp worktree and copies every path the set recorded back to
    its absolute path, or under O(dest_root); the replaced file or folder is kept as C(<path>.<safety_tag>)
    and the owners of its files are kept. With the set's own commit, what Git does not keep (every file's and
    folder's mode and owner (uid, gid), empty folders, from C(configs_commit.json)) is put back and each path is
    checked against the fingerprint of the backup's copy (kind, mode, tree hash with modes); with another O(commit)
    (or a set written before those records), the replaced files' modes and owners are kept and each path is checked
    by hashing against the checkout. Owners are set when the restore runs as root (otherwise a warning names the
    files).
  - The config history never holds secrets (C(files_backup) leaves them out - the stack's C(secrets) folders,
    C(redis.conf) with its C(requirepass)...); the set records which. After the copy, those are copied back from the
    replaced live folder (with their modes and owners); those it does not have either (a rebuild on new hardware,
    a restore under O(dest_root)) are named in C(secrets_missing) and a warning. They come from ansible-vault -
    C(playbooks/stack.yml) renders them again.
  - Everything read from the manifest is untrusted. Paths inside the set must be plain relative paths that stay
    inside it; model, version and link names single file names; store entries C(models/<model>/<version>-<hash12>);
    config paths absolute and normalised; the config history is always the one under O(backup_root); a commit can
    never be taken for an option.
extends_documentation_fragment: [llmops, llmops.restore, llmops.encryption]
attributes:
  check_mode:
    support: full
    description:
      - Changes nothing. O(mode=tree) still checks the set's tree hash; O(mode=models) reports which versions
        would be copied and which links would change; O(mode=configs) checks that the commit exists and lists
        the paths that would be replaced.
options:
  mode:
    description: What to restore.
    type: str
    choices: [tree, models, configs]
    required: true
  step:
    description:
      - V(swap) (checks the set, keeps the safety copy, puts the set's files in place and checks them),
        V(rollback) (undo what the journal in O(staging) records) or V(cleanup).
    choices: [swap, rollback, cleanup]
    default: swap
    required: false
  set_path:
    description: The set to restore from (the plan of C(restore_plan) names it). Required for O(step=swap).
    required: false
  component:
    description: The component name in the set's manifest. Defaults to V(uploads), V(models) or V(configs) by O(mode).
    type: str
  path:
    description: The uploads folder (O(mode=tree)) or the models folder holding C(<model>/<version>) (O(mode=models)).
    type: path
  backup_root:
    description: The folder holding the sets, the model store and the config history. Defaults to the parent of
      O(set_path).
    type: path
  model_version:
    description:
      - With O(mode=models), the version to restore per model, as V(llm=v1,embedding=v2), a list of
        C(model=version) or a dict; C(current) is pointed at it. Empty means every version the set references.
    type: raw
  commit:
    description: With O(mode=configs), the commit of the config history to restore; default the set's.
    type: str
  dest_root:
    description: With O(mode=configs), restore each absolute path under this folder instead (a restore drill).
    type: path
"""

EXAMPLES = r"""
- name: Restore the uploads
  files_restore:
    mode: tree
    set_path: "{{ plan.plan.set_path }}"
    path: /srv/llmops/appdb/uploads
    staging: /backup/.restore/uploads
    safety_tag: pre-restore-20260131_101500

- name: Bring model llm back to v1 and point current at it
  files_restore:
    mode: models
    set_path: "{{ plan.plan.set_path }}"
    path: /srv/llmops/ai/models
    staging: /backup/.restore/models
    backup_root: /backup
    model_version: llm=v1

- name: Restore the configuration of the set into a scratch folder
  files_restore:
    mode: configs
    set_path: "{{ plan.plan.set_path }}"
    staging: /backup/.restore/configs
    dest_root: /tmp/drill/etc-restored

- name: Undo the uploads restore
  files_restore:
    mode: tree
    step: rollback
    staging: /backup/.restore/uploads
"""

RETURN = r"""
path:
  description: The restored uploads folder (O(mode=tree)).
  returned: when O(mode=tree) and O(step=swap)
  type: str
safety_copy:
  description: Where the previous uploads folder was moved (null when there was none).
  returned: when O(mode=tree) and O(step=swap)
  type: str
tree_sha256:
  description: The tree hash of the restored uploads, equal to the manifest's (O(mode=tree)).
  returned: when O(mode=tree) and O(step=swap)
  type: str
models:
  description: Per model the versions C(copied) and C(unchanged), and the C(links) changed (C(before), C(after)).
  returned: when O(mode=models) and O(step=swap)
  type: dict
  sample: {llm: {copied: [v1], unchanged: [], links: {current: {before: v2, after: v1}}}}
commit:
  description: The full commit restored (O(mode=configs)).
  returned: when O(mode=configs) and O(step=swap)
  type: str
restored:
  description: The config paths restored, each with C(dest), C(safety_copy), C(sha256) and C(checked_against)
    (V(fingerprint) of the backup's copy, or V(checkout) of another commit), C(secrets_kept) (relative paths copied
    back from the replaced folder) and C(secrets_missing) (left out of the history and not found there); only C(dest)
    in check mode, where C(secrets_from_live) lists per destination what would be copied back.
  returned: when O(mode=configs) and O(step=swap)
  type: list
  elements: raw
not_in_commit:
  description: Recorded config paths that the commit does not hold (left alone).
  returned: when O(mode=configs) and O(step=swap)
  type: list
  elements: str
rolled_back:
  description: The paths put back (O(step=rollback)).
  returned: when O(step=rollback)
  type: list
  elements: str
removed:
  description: The paths removed (O(step=cleanup)); in check mode those that would be.
  returned: when O(step=cleanup)
  type: list
  elements: str
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.llmops_backupset import load_component
from ansible.module_utils.llmops_common import LlmopsError, argument_spec, run_restore_step, safety_tag
from ansible.module_utils.llmops_files_restore import (
    Journal,
    cleanup,
    models_plan,
    restore_configs,
    restore_models,
    restore_tree,
    undo,
)

DEFAULT_COMPONENT = {"tree": "uploads", "models": "models", "configs": "configs"}


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(
            restore=dict(steps=["swap", "rollback", "cleanup"], default_step="swap"),
            mode=dict(type="str", required=True, choices=["tree", "models", "configs"]),
            component=dict(type="str"),
            path=dict(type="path"),
            backup_root=dict(type="path"),
            model_version=dict(type="raw"),
            commit=dict(type="str"),
            dest_root=dict(type="path"),
        ),
        required_if=[("step", "swap", ["set_path"])],
        supports_check_mode=True,
    )

    def swap(p, check):
        mode = p["mode"]
        if mode in ("tree", "models") and not p["path"]:
            raise LlmopsError("mode=%s needs path (the folder to restore)" % mode)
        if not check:
            Journal(p["staging"]).save()  # a new restore: a rollback undoes this run's changes only
        entry = load_component(p["set_path"], p["component"] or DEFAULT_COMPONENT[mode])
        backup_root = p["backup_root"] or os.path.dirname(os.path.abspath(p["set_path"]))
        suffix = "." + safety_tag(p)
        if mode == "tree":
            return restore_tree(p["set_path"], entry, p["path"], p["staging"], suffix, check_mode=check)
        if mode == "models":
            plan = models_plan(p["set_path"], entry, backup_root, os.path.abspath(p["path"]), p["model_version"])
            changes = restore_models(plan, p["staging"], suffix, check_mode=check)
            return dict(changed=any(m["copied"] or m["links"] for m in changes.values()), models=changes)
        return restore_configs(p["set_path"], entry, backup_root, p["staging"], suffix, commit=p["commit"],
                               dest_root=p["dest_root"], check_mode=check)

    def rollback(p, check):
        journal = Journal.load(p["staging"])
        if check:
            return dict(changed=bool(journal.entries), rolled_back=[e["path"] for e in journal.entries])
        rolled_back = undo(journal)
        return dict(changed=bool(rolled_back), rolled_back=rolled_back)

    def cleanup_step(p, check):
        removed = cleanup(p["staging"], p["keep_safety_copy"], dry_run=check)
        return dict(changed=bool(removed), removed=removed)

    run_restore_step(module, "files (mode=%s)" % module.params["mode"],
                     dict(swap=swap, rollback=rollback, cleanup=cleanup_step))


if __name__ == "__main__":
    main()
