# -*- coding: utf-8 -*-
# Copyright: llmops-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Search engine (Elasticsearch) restores from a backup set, one step per call (``llmops_common.RESTORE_STEPS``).
Used by ``library/search_restore.py``.

``stage``     check the sha256 of the set's ``repository.tar.zst`` against the manifest (a mismatch is refused
              before anything is unpacked), unpack it into ``<repo_path>/llmops_restore_<tag>`` (a folder under
              the server's ``path.repo``, given the owner of ``repo_path``), register it as the read-only
              ``fs`` repository ``llmops_restore``, verify it and check that it holds the set's snapshot with
              every index to restore. Nothing live changes. ``<staging>/search_restore.json`` records what the
              next steps need.
``swap``      take a safety snapshot (``<tag>-<time>``) of the indices to replace that exist now, in the
              server's own ``llmops_safety`` repository, then delete those indices (a restore over a closed
              index would keep its shard count; a deleted one takes the snapshot's). ``safety.json`` records
              which indices existed and were touched.
``load``      restore the chosen indices from the staged repository (``wait_for_completion``), then wait for
              green or yellow health of those indices.
``verify``    each index's fingerprint (doc count, sha256 over the sorted ids, sha256 over ids and ``_source``)
              against the manifest's when it describes the snapshot (``fingerprint_source`` ``snapshot`` or
              ``server-unchanged``), else against the staged snapshot's files when they can be read (the
              stand-in), else the index is reported ``unverified`` (only its doc count is checked).
``rollback``  delete the indices the restore touched and restore those that existed from the safety snapshot.
``cleanup``   unregister ``llmops_restore``, remove the unpacked copy and ``staging``; unless ``keep_safety_copy``
              also delete the safety snapshot.
"""

from __future__ import annotations

import fnmatch
import os
import time

from ansible.module_utils.llmops_backupset import set_member as member_path
from ansible.module_utils.llmops_backupset import write_json
from ansible.module_utils.llmops_common import LlmopsError, load_state, remove_paths
from ansible.module_utils.llmops_pipeline import decompress_to, hash_file
from ansible.module_utils.llmops_search import (
    ARTEFACT,
    ARTEFACT_SOURCES,
    FINGERPRINT_KEYS,
    SearchBackupError,
    SearchError,
    compare,
    ensure_repository,
    fingerprint_index,
    snapshot_fingerprints,
)

STAGED_REPOSITORY = "llmops_restore"
SAFETY_REPOSITORY = "llmops_safety"
STATE = "search_restore.json"
SAFETY = "safety.json"


class SearchRestoreError(LlmopsError):
    """A search restore step failed; the message says which and why (never the password)."""


def staged_location(tag):
    return "llmops_restore_" + tag


def set_artefact(set_path, entry):
    """``(path, sha256)`` of the set's repository copy, its path checked to lie inside the set."""
    repo = entry.get("repository") or {}
    fname = repo.get("file") or ARTEFACT
    listed = [f for f in entry.get("files") or [] if isinstance(f, dict) and isinstance(f.get("path"), str)
              and os.path.basename(f["path"]) == fname]
    if len(listed) != 1 or os.path.basename(fname) != fname:
        raise SearchRestoreError("the manifest lists %d files named %r for the search repository copy"
                                 % (len(listed), fname))
    path = member_path(set_path, listed[0]["path"], "repository copy", SearchRestoreError)
    if not listed[0].get("sha256"):
        raise SearchRestoreError("the manifest gives no sha256 for %s" % fname)
    return path, listed[0]["sha256"]


def set_indices(entry, patterns=None):
    """``{index: {fingerprint, source}}`` of the set's indices that ``patterns`` select (every one without)."""
    details = entry.get("indices") or {}
    fingerprints = entry.get("fingerprint") or {}
    names = sorted(details)
    if patterns:
        chosen = []
        for pattern in patterns:
            matched = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
            if not matched:
                raise SearchRestoreError("the set holds no index matching %r (it holds: %s)"
                                         % (pattern, ", ".join(names) or "none"))
            chosen += [n for n in matched if n not in chosen]
        names = chosen
    if not names:
        raise SearchRestoreError("the set's search component holds no index")
    out = {}
    for name in names:
        item = details[name] if isinstance(details[name], dict) else {}
        fp = fingerprints.get(name) or {k: item[k] for k in FINGERPRINT_KEYS if k in item}
        out[name] = {"fingerprint": fp, "source": item.get("fingerprint_source") or "legacy"}
    return out


def check_artefact(path, sha256):
    if not os.path.isfile(path):
        raise SearchRestoreError("the repository copy %s is missing" % path)
    digest, _size = hash_file(path)
    if digest != sha256:
        raise SearchRestoreError("the repository copy %s has sha256 %s, the manifest says %s: the file is damaged; "
                                 "nothing was unpacked, restore another set" % (path, digest, sha256))
    return digest


def stage(client, set_path, entry, staging, repo_path, tag, patterns=None, check=False):
    """The ``stage`` step (see the module docstring); returns the state it records."""
    path, sha256 = set_artefact(set_path, entry)
    chosen = set_indices(entry, patterns)
    check_artefact(path, sha256)
    snapshot = (entry.get("repository") or {}).get("snapshot")
    if not snapshot:
        raise SearchRestoreError("the manifest names no snapshot for the search component")
    location = staged_location(tag)
    unpacked = os.path.join(repo_path, location)
    state = {"repository": STAGED_REPOSITORY, "location": location, "unpacked": unpacked, "snapshot": snapshot,
             "indices": sorted(chosen), "artefact": path}
    if check:
        return state
    if not os.path.isdir(repo_path):
        raise SearchRestoreError("repo_path %s does not exist: it must be the host side of the server's path.repo "
                                 "mount" % repo_path)
    remove_paths([unpacked])
    os.makedirs(unpacked, mode=0o755)
    try:
        decompress_to(path, ["tar", "-C", unpacked, "--no-same-owner", "-xf", "-"], expected_sha256=sha256,
                      consumer_name="tar")
    except LlmopsError:
        remove_paths([unpacked])
        raise
    give_to_server(unpacked, repo_path)
    try:
        ensure_repository(client, STAGED_REPOSITORY, location, readonly=True)
        info = client.get_snapshot(STAGED_REPOSITORY, snapshot)
    except (SearchError, SearchBackupError) as exc:
        raise SearchRestoreError("registering the staged copy %s as repository %s failed: %s"
                                 % (unpacked, STAGED_REPOSITORY, exc)) from exc
    missing = [n for n in chosen if n not in (info.get("indices") or [])]
    if info.get("state") != "SUCCESS" or missing:
        raise SearchRestoreError("the staged snapshot %s is %s and lacks %s"
                                 % (snapshot, info.get("state"), ", ".join(missing) or "nothing"))
    os.makedirs(staging, mode=0o700, exist_ok=True)
    write_json(os.path.join(staging, STATE), state)
    return state


def give_to_server(path, repo_path):
    """Give the unpacked copy the owner of ``repo_path`` (the server's user: uid 1000 in the official image), so
    that the server can read files the archive holds with mode 0600; only root can, and only root needs to."""
    if os.geteuid() != 0:
        return
    owner = os.stat(repo_path)
    for root, dirs, files in os.walk(path):
        for name in [root] + [os.path.join(root, n) for n in dirs + files]:
            os.lchown(name, owner.st_uid, owner.st_gid)


def read_state(staging):
    state = load_state(os.path.join(staging, STATE))
    if not state:
        raise SearchRestoreError("no staged search restore in %s: run step=stage first" % staging)
    return state


def swap(client, staging, tag, safety_location=SAFETY_REPOSITORY):
    """The ``swap`` step: safety snapshot of the existing indices, then delete them; returns the safety index."""
    state = read_state(staging)
    names = state["indices"]
    existing = [n for n in names if client.index_exists(n)]
    safety = {"repository": SAFETY_REPOSITORY, "snapshot": None, "existed": {n: n in existing for n in names},
              "touched": []}
    if existing:
        ensure_repository(client, SAFETY_REPOSITORY, safety_location)
        snap = "%s-%s" % (tag.lower(), time.strftime("%Y%m%d-%H%M%S", time.gmtime()))
        info = client.create_snapshot(SAFETY_REPOSITORY, snap, existing)
        if info.get("state") != "SUCCESS" or sorted(info.get("indices") or []) != sorted(existing):
            raise SearchRestoreError("the safety snapshot %s ended %s with indices %s; nothing was deleted"
                                     % (snap, info.get("state"), info.get("indices")))
        safety["snapshot"] = snap
    safety["touched"] = list(names)
    write_json(os.path.join(staging, SAFETY), safety)
    for name in existing:
        client.delete_index(name)
    return safety


def wait_health(client, names, timeout_s):
    health = client.health(names, wait_for_status="yellow", timeout_s=timeout_s)
    if health.get("timed_out") or health.get("status") not in ("green", "yellow"):
        raise SearchRestoreError("the restored indices %s did not reach yellow or green health in %ss (status %s)"
                                 % (", ".join(names), timeout_s, health.get("status")))
    return health["status"]


def load(client, staging, timeout_s=60):
    """The ``load`` step: restore the chosen indices from the staged repository, wait for green/yellow."""
    state = read_state(staging)
    names = state["indices"]
    present = [n for n in names if client.index_exists(n)]
    if present:
        raise SearchRestoreError("index(es) %s exist: run step=swap first (it keeps a safety snapshot)"
                                 % ", ".join(present))
    result = client.restore_snapshot(state["repository"], state["snapshot"], names)
    restored = sorted(result.get("indices") or [])
    if restored != sorted(names) or (result.get("shards") or {}).get("failed"):
        raise SearchRestoreError("restoring %s from snapshot %s restored %s, with %s failed shard(s)"
                                 % (", ".join(names), state["snapshot"], ", ".join(restored),
                                    (result.get("shards") or {}).get("failed")))
    return {"restored": restored, "health": wait_health(client, names, timeout_s)}


def verify(client, staging, chosen):
    """The ``verify`` step: ``{differences, against, unverified}`` of each restored index."""
    state = read_state(staging)
    differences, against, unverified = {}, {}, []
    from_files = None
    for name, item in chosen.items():
        expected = item["fingerprint"]
        if item["source"] in ARTEFACT_SOURCES or item["source"] == "legacy":
            against[name] = "the manifest's fingerprint of the snapshot (%s)" % item["source"]
        else:
            if from_files is None:
                from_files = snapshot_fingerprints(state["unpacked"], state["snapshot"]) or {}
            if name in from_files:
                expected = from_files[name]
                against[name] = "the fingerprint of the staged snapshot's files (the manifest's is %s)" % item["source"]
            else:
                expected = {k: v for k, v in expected.items() if k == "doc_count"}
                against[name] = "nothing but the doc count: the backup could not fingerprint this snapshot (%s)" \
                    % item["source"]
                unverified.append(name)
        if not client.index_exists(name):
            differences[name] = ["the index does not exist"]
            continue
        diff = compare(expected, fingerprint_index(client, name))
        if diff:
            differences[name] = diff
    return {"differences": differences, "against": against, "unverified": unverified}


def read_safety(staging):
    return load_state(os.path.join(staging, SAFETY), {}) or {}


def rollback(client, staging, timeout_s=60):
    """Put the touched indices back as the swap found them; returns ``{restored, deleted}``."""
    safety = read_safety(staging)
    touched = safety.get("touched") or []
    deleted, restored, problems = [], [], []
    for name in touched:
        try:
            if client.index_exists(name):
                client.delete_index(name)
                deleted.append(name)
        except SearchError as exc:
            problems.append("%s: %s" % (name, exc))
    back = [n for n in touched if (safety.get("existed") or {}).get(n)]
    if back and not problems:
        try:
            result = client.restore_snapshot(safety["repository"], safety["snapshot"], back)
            restored = sorted(result.get("indices") or [])
            wait_health(client, back, timeout_s)
        except (SearchError, SearchRestoreError) as exc:
            problems.append("restoring %s from the safety snapshot %s: %s" % (", ".join(back), safety["snapshot"],
                                                                              exc))
    if problems:
        raise SearchRestoreError("rollback incomplete (the safety snapshot %s of repository %s is kept): %s"
                                 % (safety.get("snapshot"), safety.get("repository"), "; ".join(problems)))
    return {"restored": restored, "deleted": [n for n in deleted if n not in restored]}


def cleanup(client, staging, repo_path, tag, keep_safety_copy=True, dry_run=False):
    """Unregister the staged repository, remove the unpacked copy and ``staging`` (and the safety snapshot unless
    kept); returns ``{removed, safety_snapshot_deleted, warnings}``."""
    warnings = []
    unpacked = os.path.join(repo_path, staged_location(tag))
    safety = read_safety(staging)
    removed = [p for p in (unpacked, staging) if os.path.lexists(p)]
    deleted = None
    if dry_run:
        return {"removed": removed, "safety_snapshot_deleted": None, "warnings": warnings}
    if client.get_repository(STAGED_REPOSITORY) is not None:
        client.delete_repository(STAGED_REPOSITORY)
    if not keep_safety_copy and safety.get("snapshot"):
        try:
            client.delete_snapshot(safety["repository"], safety["snapshot"])
            deleted = True
        except SearchError as exc:
            deleted = False
            warnings.append("could not delete the safety snapshot %s: %s" % (safety["snapshot"], exc))
    remove_paths(removed)
    return {"removed": removed, "safety_snapshot_deleted": deleted, "warnings": warnings}
