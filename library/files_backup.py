#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, llmops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# ruff: noqa: E402 - Ansible modules put DOCUMENTATION/EXAMPLES/RETURN before the imports.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: files_backup
short_description: Back up file trees, model folders and configuration files
description:
  - O(mode=tree) (uploads) copies O(src) with C(rsync -a --delete --numeric-ids) into C(<dest>/uploads/), with
    C(--link-dest) pointing at the same tree of the newest complete successful set under O(backup_root) that has
    the component O(component), so unchanged files become hard links and only new or changed files take space.
    With O(full_archive=true) (weekly) also writes C(<dest>/uploads.tar.zst) of the copy through zstd.
    The fingerprint is a tree hash over the sorted relative paths, modes, sizes and content hashes, which a
    restore recomputes.
  - O(mode=models) hashes every version folder C(<src>/<model>/<version>) (content only) and stores a version
    only when its hash is new, in a content-addressed store outside the sets,
    C(<backup_root>/models/<model>/<version>-<hash12>/) (written to a temp folder and renamed; files 0600,
    folders 0700). Symlinks such as C(current) are recorded, not followed. The set gets C(models_index.json)
    naming the versions it references. Each model then keeps its newest O(keep_versions) stored versions plus
    every version that a set under O(backup_root) or this run references.
  - O(mode=configs) mirrors O(paths) (files or folders, by absolute path) with C(rsync -a --delete) into a Git
    worktree at C(<backup_root>/configs.git-worktree) (mode 0700, created on first use), and commits as
    C(llmops-backup <backup@localhost>) when something changed; the history is kept forever. Global and system
    Git configuration are neither read nor touched, nor hooks, fsmonitor or the paths' own C(.gitattributes) (content
    is kept byte for byte) and C(.gitignore) (every file is committed). Folders named C(.git) are not copied. The set
    gets C(configs_commit.json) naming the commit and recording what Git does not keep (every entry's mode, owner
    (uid, gid) and empty folders), which O(mode=configs) of C(files_restore) puts back. Owners are those of the
    history's copy, which are the sources' when the backup runs as root.
  - O(mode=configs) never commits a secret (the history is kept forever and is not encrypted). An entry whose own name
    (or a config path one of whose names) matches a glob of O(exclude) is never copied - the default covers the stack's
    layout, C(<stack_root>/appdb/secrets/*) and C(<stack_root>/ai/secrets/*), and environment, key and vault files.
    Every file that is copied is then read before the commit, and one that holds one of O(secret_values) (as
    written, or JSON-, URL-, backslash- or base64-encoded), or a value learnt from the excluded files (a one-line
    file's content, the value of a C(KEY=value) or YAML C(key:) line whose key names a secret), or that matches
    one of O(secret_patterns) (such as the C(requirepass) line of C(redis.conf)) is removed from the history's
    worktree and left out. What was left out is reported by path and reason, never by content (C(excluded), a warning,
    and per path in C(configs_commit.json)). The whole file is left out, never a redacted copy, which would restore a
    service without its password.
  - Those secrets come from ansible-vault and are rendered again by roles/stack (C(playbooks/stack.yml)) on a rebuild;
    a config restore copies them back from the live folder it replaces and reports the ones it has not found.
  - O(mode=configs_rewrite) rewrites a history that already holds secrets (written before these rules) - the
    documented command is C(ansible-playbook playbooks/config_history_rewrite.yml -e confirm=yes). Every path of any
    commit that O(exclude) names, or whose content in any commit holds one of O(secret_values) (or a value learnt
    from the excluded files' old contents) or matches O(secret_patterns), and the paths of O(remove_paths), go from
    every commit (C(git filter-repo), with the same hardening as every other Git call - the repository is checked,
    hooks and filters are off); then the reflogs expire and C(git gc --prune=now) deletes the old objects, so no blob
    of the repository holds them any more. Every commit id changes, so the config part of the sets written before
    can no longer be restored (their commits are gone; their other components are not affected) - run a config
    backup at once. Check mode lists what would go.
  - Names are content. Files keep their real names (newlines, quotes, leading dashes...) in the copies; sockets, fifos
    and devices are not copied. No tool output is parsed by lines (Git only in its C(-z) forms, with
    C(core.quotePath=false)).
  - Returns the manifest entry of the component for C(backup_set).
extends_documentation_fragment: [llmops, llmops.compression, llmops.encryption]
attributes:
  check_mode:
    support: full
    description:
      - Writes nothing; reports what would be copied (compared with the previous set's tree by kind, mode, size,
        modification time and link target, as rsync's quick check does), which model versions would be stored or
        pruned (hash comparison with the store) and what would be committed (content hashes against the history
        worktree). Trees are walked by Python, never parsed from a tool's output.
options:
  mode:
    description: What to back up.
    type: str
    choices: [tree, models, configs, configs_rewrite]
    required: true
  src:
    description: The tree (O(mode=tree)) or the models folder holding C(<model>/<version>) (O(mode=models)).
    type: path
  dest:
    description:
      - Folder of this component inside the set being written; created with mode 0700. Required but for
        O(mode=configs_rewrite).
    type: path
  backup_root:
    description:
      - The backup root holding the sets (as for C(backup_set)).
      - O(mode=tree) looks for the previous set here; O(mode=models) and O(mode=configs) keep their store and
        history repository here (required for them).
    type: path
  component:
    description:
      - The component name the playbook records this backup under; O(mode=tree) uses it to find the previous
        set's tree. Defaults to V(uploads), V(models) or V(configs) by O(mode).
    type: str
  full_archive:
    description:
      - With O(mode=tree), also write C(uploads.tar.zst), a complete archive of the copied tree (compressed as
        O(zstd_level) and O(zstd_threads) say).
      - With O(encrypt), the archive is always written (sealed with age) and the set keeps only it; the copied tree
        (the fingerprint's source) is removed before the module returns. O(mode=models) and O(mode=configs) are not
        encrypted.
    type: bool
    default: false
  keep_versions:
    description: With O(mode=models), stored versions kept per model (besides those a set references).
    type: int
    default: 5
  trust_mtime:
    description:
      - With O(mode=models), reuse the recorded content hash of a source file whose size and modification time
        are unchanged since it was stored, instead of reading it again (model files are large).
    type: bool
    default: true
  paths:
    description: With O(mode=configs), the files and folders whose history is kept.
    type: list
    elements: path
  remove_paths:
    description:
      - With O(mode=configs_rewrite), more paths to remove from every commit of the history, as the history stores
        them (the absolute path without its leading C(/), e.g. C(opt/llmops/stack/appdb/config/redis.conf)).
    type: list
    elements: str
    default: []
  exclude:
    description:
      - With O(mode=configs), globs (C(*), C(?), C([...])) on a file's or folder's own name; what matches is never
        copied into the history (a folder with everything in it), nor is a config path one of whose names matches.
        No C(/) or backslash in a rule. An empty list turns the name rules off (the content check still runs).
    type: list
    elements: str
    default: [secrets, .env, "*.env", "*.key", ".vault_pass*", vault.yml]
  secret_values:
    description:
      - With O(mode=configs), secrets (the stack's passwords and keys, from the vault) that no committed file may hold;
        a file that does is left out. Values shorter than 8 characters are not looked for (a warning says how many).
    type: list
    elements: str
    default: []
  secret_patterns:
    description:
      - With O(mode=configs), Python regular expressions applied to each copied file's bytes; a file one of them
        matches is left out of the history. The default finds Redis C(requirepass)/C(masterauth) lines, PEM private
        keys, C(KEY=value) and YAML or JSON C(key:) assignments to a key ending in password, passwd, secret, api_key
        or token (not when the value is empty or a reference such as C({{ x }}), C(${X}), C(!vault)), and URLs with a
        password.
    type: list
    elements: str
    default:
      - '(?im)^[ \t]*(?:requirepass|masterauth)[ \t]+\S'
      - '-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----'
      - "(?im)^[ \\t]*(?:export[ \\t]+)?[\\\"']?[a-z0-9_.-]*(?:password|passwd|secret|api[_-]?key|token)[\\\"']?\
        [ \\t]*[:=][ \\t]*(?![\\\"']?(?:\\{\\{|\\$\\{|\\$\\(|%\\(|!vault|$)|\\\"\\\"|'')[^\\s#]"
      - '(?i)\b[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@'
notes:
  - The C(--link-dest) hard links and the model store need O(dest) and O(backup_root) on one file system.
  - The history repository is kept 0700; secrets are kept out of it (see above), and what a custom setting of
    O(exclude) or O(secret_patterns) lets through stays in the history for ever.
"""

EXAMPLES = r"""
- name: Back up the uploads (weekly with a full archive)
  files_backup:
    mode: tree
    src: /srv/llmops/appdb/uploads
    dest: "{{ bset.path }}/uploads"
    backup_root: /backup
    component: uploads
    full_archive: "{{ ansible_date_time.weekday_number == '0' }}"
  register: uploads_result

- name: Back up the model folders
  files_backup:
    mode: models
    src: /srv/llmops/ai/models
    dest: "{{ bset.path }}/models"
    backup_root: /backup
    keep_versions: 5

- name: Keep the history of the configuration
  files_backup:
    mode: configs
    paths: [/etc/llmops, /srv/llmops/stack/ai/compose.yaml]
    dest: "{{ bset.path }}/configs"
    backup_root: /backup

- name: Remove every secret from the whole config history (playbooks/config_history_rewrite.yml)
  files_backup:
    mode: configs_rewrite
    backup_root: /backup
    secret_values: "{{ [mariadb_root_password, redis_password] }}"
  register: rewrite
"""

RETURN = r"""
component:
  description:
    - The manifest entry for C(backup_set) (not in check mode). Besides the common keys, by O(mode)
    - V(tree) C(tree_dir) (inside the set), C(file_count), C(tree_bytes), C(bytes_new) (not hard-linked),
      C(files_new), C(files_linked), C(files_hashed) (files read to hash them; a file hard-linked to the previous
      set's takes the sha256 that set recorded), C(linked_from) (set id or null), C(deleted) (entries of the previous
      set's tree that are gone), C(full_archive), C(fingerprint.tree_sha256) (the tree hash of the copy in the set).
    - V(models) C(models) (per model its C(links) and C(versions) with C(sha256), C(store), C(new)),
      C(stored_new), C(reused), C(pruned); each version's C(sha256) is the tree hash of the store's copy.
    - V(configs) C(repo), C(commit), C(changed), C(config_files), C(excluded) (C(path) and C(reason) of what was kept
      out of the history as a secret), C(paths) (those kept; a path left out whole is only in C(excluded)),
      C(fingerprint.paths) (per path the kind, mode and tree hash with modes of its mirror in the history worktree).
    - Every fingerprint describes the backup's own copy, read after the copy (C(fingerprint_of=copy)).
  returned: success and not check mode
  type: dict
  sample:
    status: success
    type: files
    mode: tree
    backup_type: full
    tool: rsync -a --delete --link-dest
    files: [{path: /backup/.llmops_20260131_020000.partial/uploads/uploads/report.pdf, sha256: "...", size: 1024}]
    file_count: 40
    bytes_new: 2048
    linked_from: llmops_20260130_020000
    fingerprint: {tree_sha256: "...", files: 40, bytes: 81920}
    fingerprint_of: copy
check:
  description: In check mode, what would be done (C(would_copy), C(would_delete), C(stored_new), C(pruned),
    C(would_commit), C(would_exclude)...; O(mode=configs_rewrite) C(removed), as RV(rewrite)).
  returned: check mode
  type: dict
rewrite:
  description:
    - O(mode=configs_rewrite) C(repo), C(removed) (C(path) and C(reason) of each path removed from every commit, never
      its content), C(head_before), C(head_after), C(commits_before), C(commits_after).
  returned: O(mode=configs_rewrite), not check mode
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.llmops_common import LlmopsError, argument_spec, use_encryption
from ansible.module_utils.llmops_files import (
    CONFIG_EXCLUDE,
    SECRET_PATTERNS,
    backup_configs,
    backup_models,
    backup_tree,
    rewrite_config_history,
)

DEFAULT_COMPONENT = {"tree": "uploads", "models": "models", "configs": "configs"}


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(
            compression=True,
            mode=dict(type="str", required=True, choices=["tree", "models", "configs", "configs_rewrite"]),
            src=dict(type="path"),
            dest=dict(type="path"),
            backup_root=dict(type="path"),
            component=dict(type="str"),
            full_archive=dict(type="bool", default=False),
            keep_versions=dict(type="int", default=5),
            trust_mtime=dict(type="bool", default=True),
            paths=dict(type="list", elements="path"),
            remove_paths=dict(type="list", elements="str", default=[]),
            exclude=dict(type="list", elements="str", default=list(CONFIG_EXCLUDE)),
            secret_values=dict(type="list", elements="str", default=[], no_log=True),
            secret_patterns=dict(type="list", elements="str", default=list(SECRET_PATTERNS), no_log=False),
        ),
        required_if=[
            ("mode", "tree", ["src", "dest"]),
            ("mode", "models", ["src", "backup_root", "dest"]),
            ("mode", "configs", ["paths", "backup_root", "dest"]),
            ("mode", "configs_rewrite", ["backup_root"]),
        ],
        supports_check_mode=True,
    )
    p = module.params
    mode = p["mode"]
    check = module.check_mode
    try:
        use_encryption(p)
        if mode == "configs_rewrite":
            result = rewrite_config_history(p["backup_root"], exclude=p["exclude"], secret_values=p["secret_values"],
                                            secret_patterns=p["secret_patterns"], remove=p["remove_paths"],
                                            check_mode=check)
            for warning in result.pop("warnings", None) or []:
                module.warn(warning)
            if check:
                module.exit_json(changed=result.pop("changed"), check=result)
            module.exit_json(changed=result.pop("changed"), rewrite=result)
        if mode == "tree":
            entry = backup_tree(p["src"], p["dest"], backup_root=p["backup_root"],
                                component=p["component"] or DEFAULT_COMPONENT[mode], full_archive=p["full_archive"],
                                zstd_level=p["zstd_level"], zstd_threads=p["zstd_threads"], check_mode=check)
        elif mode == "models":
            entry = backup_models(p["src"], p["dest"], p["backup_root"], keep_versions=p["keep_versions"],
                                  check_mode=check, trust_mtime=p["trust_mtime"])
        else:
            entry = backup_configs(p["paths"], p["dest"], p["backup_root"], check_mode=check, exclude=p["exclude"],
                                   secret_values=p["secret_values"], secret_patterns=p["secret_patterns"])
    except (LlmopsError, OSError) as exc:
        module.fail_json(msg="files backup (mode=%s) failed: %s" % (mode, exc))
    if check:
        module.exit_json(changed=entry.pop("changed"), check=entry)
    for warning in entry.get("warnings") or []:
        module.warn(warning)
    for skipped in entry.get("skipped") or []:
        module.warn("not a file, folder or symlink, skipped: %s" % skipped)
    if entry.get("symlinks"):
        module.warn("the copied tree holds %d symlink(s): they are kept as symlinks (and in the tree hash), but "
                    "backup_set lists regular files only" % entry["symlinks"])
    module.exit_json(changed=True, component=entry)


if __name__ == "__main__":
    main()
