# -*- coding: utf-8 -*-
# Copyright: llmops-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""File restores: the uploads tree, model versions and configuration files. Used by
``library/files_restore.py``; the counterpart of ``llmops_files`` (whose tree hash it recomputes).

Every change to a live path goes through a journal (``<staging>/journal.json``), written before
and after each rename, so that ``rollback`` can undo exactly what was done, also after a crash:

* ``swap``: ``path`` was moved aside to ``safety`` (when it ``existed``) and new content ``placed``
  there. Undo: remove ``path`` (only when it was moved aside or did not exist), rename ``safety`` back.
* ``link``: the symlink ``path`` pointed at ``before`` (None: there was none). Undo: point it back.

``restore_tree``   check the set's tree against its recorded tree hash, move the live folder aside
                   (``<path><suffix>``), ``rsync -a`` the tree into place, check the result's tree hash.
``restore_models`` copy model versions from the content-addressed store into a hidden temp folder next
                   to ``<models>/<model>/<version>``, check every file's sha256 against the store's
                   record, swap it in (an existing different copy is kept as ``.<version><suffix>``) and
                   point the link (``current``) at it; any failure undoes every swap and link change.
``restore_configs`` check out a commit of the config history into a temp worktree, copy each recorded
                   path back (or under ``dest_root``), the replaced file or folder kept as ``<path><suffix>``;
                   put back what Git does not keep (modes, owners, empty folders: ``configs_commit.json``), then
                   check each path against the fingerprint of the backup's mirror (kind, mode, tree hash); what
                   the backup kept out of the history as secrets is copied back from the replaced folder
                   (``keep_secrets``) or reported missing (roles/stack renders it again from the vault).

Everything read back from a manifest is untrusted: paths inside the set must be relative, normalised,
without ``..`` and (symlinks resolved) inside the set (``set_member``); model, version and link names
must be single path components; config paths absolute and normalised; a commit a revision, never an
option. File names themselves are content and are never parsed from a tool's output.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat

from ansible.module_utils.llmops_backupset import set_member as member_path
from ansible.module_utils.llmops_backupset import write_json
from ansible.module_utils.llmops_common import LlmopsError, load_state
from ansible.module_utils.llmops_files import (
    ARCHIVE,
    CONFIGS_REF,
    GIT_DIR,
    MODELS_DIR,
    MODELS_INDEX,
    FilesBackupError,
    GitRepo,
    path_info,
    run_tool,
    tree_info,
)
from ansible.module_utils.llmops_layout import layout_path
from ansible.module_utils.llmops_pipeline import decompress_to, hash_file

JOURNAL = "journal.json"
LINK_NAME = "current"
# Model versions come from the store as 0600/0700 files; the restored copy is made readable for the
# serving containers, as the model folders are.
MODEL_CHMOD = "--chmod=Du=rwx,Dgo=rx,Fu=rw,Fgo=r"  # an unprefixed item would apply to both


class FilesRestoreError(LlmopsError):
    """A file restore step failed; the message says which and why."""


# --------------------------------------------------------------------------------------------
# journal


class Journal:
    """The list of changes made to live paths, saved to ``<staging>/journal.json`` after every change."""

    def __init__(self, staging):
        self.path = os.path.join(staging, JOURNAL)
        self.entries = []

    @classmethod
    def load(cls, staging):
        journal = cls(staging)
        journal.entries = load_state(journal.path, [])
        return journal

    def save(self):
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        write_json(self.path, self.entries)

    def add(self, **entry):
        self.entries.append(entry)
        self.save()
        return entry


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def swap_in(journal, path, safety, place):
    """Move ``path`` aside to ``safety`` (when it exists), then ``place(path)``; journaled."""
    if os.path.lexists(safety):
        raise FilesRestoreError("the safety copy %s exists already" % safety)
    entry = journal.add(op="swap", path=path, safety=safety, existed=os.path.lexists(path), moved=False,
                        placed=False)
    if entry["existed"]:
        os.rename(path, safety)
        entry["moved"] = True
        journal.save()
    place(path)
    entry["placed"] = True
    journal.save()
    return entry


def point_link(journal, path, target):
    """Point the symlink ``path`` at ``target`` atomically (temp link + rename); journaled. Returns the old target."""
    before = os.readlink(path) if os.path.islink(path) else None
    if before == target:
        return before
    if os.path.lexists(path) and not os.path.islink(path):
        raise FilesRestoreError("%s exists and is not a symlink" % path)
    journal.add(op="link", path=path, before=before, after=target)
    tmp = os.path.join(os.path.dirname(path), ".%s.tmp-%s" % (os.path.basename(path), secrets.token_hex(4)))
    os.symlink(target, tmp)
    try:
        os.replace(tmp, path)
    except OSError:
        os.unlink(tmp)
        raise
    return before


def undo(journal):
    """Undo the journal's changes, newest first; return what was put back. Problems raise at the end."""
    restored, problems = [], []
    for entry in reversed(journal.entries):
        try:
            if entry["op"] == "link":
                if entry["before"] is None:
                    if os.path.islink(entry["path"]):
                        os.unlink(entry["path"])
                else:
                    tmp = entry["path"] + ".rollback-%s" % secrets.token_hex(4)
                    os.symlink(entry["before"], tmp)
                    os.replace(tmp, entry["path"])
                restored.append(entry["path"])
            else:
                # killed between the rename and the journal's save: the rename is atomic, so the live path
                # gone and the safety copy there means it was moved (nothing was placed yet)
                moved = entry["moved"] or (entry["existed"] and not os.path.lexists(entry["path"])
                                           and os.path.lexists(entry["safety"]))
                if entry["existed"] and not moved:
                    continue  # the live path was never touched
                _remove(entry["path"])
                if moved:
                    os.rename(entry["safety"], entry["path"])
                restored.append(entry["path"])
        except OSError as exc:
            problems.append("%s: %s" % (entry["path"], exc))
    if problems:
        raise FilesRestoreError("rollback incomplete (put back: %s): %s"
                                % (", ".join(restored) or "nothing", "; ".join(problems)))
    journal.entries = []
    journal.save()
    return restored


def cleanup(staging, keep_safety_copy=True, dry_run=False):
    """Remove ``staging`` and, unless ``keep_safety_copy``, the safety copies its journal names."""
    journal = Journal.load(staging)
    removed = []
    if not keep_safety_copy:
        removed += [e["safety"] for e in journal.entries if e["op"] == "swap" and e.get("moved")
                    and os.path.lexists(e["safety"])]
    if os.path.isdir(staging):
        removed.append(staging)
    if not dry_run:
        for path in removed:
            _remove(path)
    return removed


def _rsync(src, dest, extra=()):
    run_tool(["rsync", "-a", "--numeric-ids"] + list(extra) + [src, dest])


def set_member(set_path, rel, what="file"):
    """``llmops_backupset.set_member``, raising ``FilesRestoreError``."""
    return member_path(set_path, rel, what, FilesRestoreError)


def _listed(set_path, entry, name):
    """The path inside the set of the entry's file called ``name`` (``files`` lists it), checked."""
    paths = [f.get("path") for f in entry.get("files") or [] if isinstance(f, dict) and isinstance(f.get("path"), str)
             and os.path.basename(f["path"]) == name]
    if len(paths) != 1:
        raise FilesRestoreError("the manifest lists %d files called %s" % (len(paths), name))
    return set_member(set_path, paths[0], name)


def _set_json(set_path, entry, name):
    """The JSON object in the set's file ``name`` (listed in the entry's files), or ``FilesRestoreError``."""
    with open(_listed(set_path, entry, name), encoding="utf-8") as handle:
        try:
            doc = json.load(handle)
        except ValueError as exc:
            raise FilesRestoreError("the set's %s is not JSON (%s): restore from another set" % (name, exc)) from exc
    if not isinstance(doc, dict):
        raise FilesRestoreError("the set's %s is not a JSON object: restore from another set" % name)
    return doc


def check_name(value, what):
    """A model, version or link name read from a manifest: one path component, not ``.``/``..``, no NUL."""
    if not isinstance(value, str) or not value or value in (".", "..") or "/" in value or "\0" in value:
        raise FilesRestoreError("the manifest names %s %r, which is not a single file name" % (what, value))
    return value


def check_config_path(value):
    """A config path read from a manifest: absolute, normalised (no ``..``), not ``/``."""
    if not isinstance(value, str) or not os.path.isabs(value) or os.path.normpath(value) != value or value == os.sep \
            or "\0" in value or value.startswith("//") or GIT_DIR in value.split(os.sep):
        raise FilesRestoreError("the manifest names the config path %r, which is not a plain absolute path" % (value,))
    return value


# --------------------------------------------------------------------------------------------
# tree (uploads)


def tree_source(set_path, entry, staging, check_mode=False):
    """The set's tree, checked against its recorded tree hash; ``(folder, tree_sha256)``.

    When the tree is missing, the full archive (``uploads.tar.zst``) is unpacked into the staging folder
    (in check mode: not unpacked, the archive's path is returned).
    """
    expected = (entry.get("fingerprint") or {}).get("tree_sha256")
    if not expected:
        raise FilesRestoreError("the manifest records no tree hash for this component")
    tree = set_member(set_path, entry["tree_dir"], "tree folder") if entry.get("tree_dir") else None
    if tree is None or os.path.islink(tree) or not os.path.isdir(tree):
        archive = entry.get("full_archive")
        if not archive:
            raise FilesRestoreError("the set has neither the tree %s nor a full archive" % tree)
        source = _listed(set_path, entry, ARCHIVE)
        if check_mode:
            return source, expected
        tree = os.path.join(staging, "unpacked")
        _remove(tree)
        os.makedirs(tree, mode=0o700)
        decompress_to(source, ["tar", "--numeric-owner", "-xf", "-", "-C", tree], expected_sha256=archive["sha256"])
    actual = tree_info(tree)["sha256"]
    if actual != expected:
        raise FilesRestoreError("the set's tree %s has tree hash %s, the manifest says %s; nothing was changed"
                                % (tree, actual, expected))
    return tree, expected


def restore_tree(set_path, entry, path, staging, suffix, check_mode=False):
    """Check the set's tree, move ``path`` aside, rsync the tree into place and check the result."""
    path = os.path.abspath(path).rstrip(os.sep)
    tree, expected = tree_source(set_path, entry, staging, check_mode)
    safety = path + suffix
    if check_mode:
        return {"changed": True, "path": path, "safety_copy": safety if os.path.lexists(path) else None,
                "tree_sha256": expected, "source": tree}
    journal = Journal(staging)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    done = swap_in(journal, path, safety, lambda dst: _rsync(tree + "/", dst + "/"))
    info = tree_info(path)
    if info["sha256"] != expected:
        raise FilesRestoreError("the restored tree %s has tree hash %s, the manifest says %s"
                                % (path, info["sha256"], expected))
    return {"changed": True, "path": path, "safety_copy": safety if done["moved"] else None,
            "tree_sha256": info["sha256"], "files": info["files"], "bytes": info["bytes"], "source": tree}


# --------------------------------------------------------------------------------------------
# models


def parse_versions(value):
    """``{model: version}`` from ``llm=v1,embedding=v2``, a dict, or a list of ``model=version``; {} when empty."""
    if not value:
        return {}
    if isinstance(value, dict):
        items = list(value.items())
    else:
        parts = value if isinstance(value, list) else str(value).split(",")
        items = []
        for part in parts:
            part = str(part).strip()
            if not part:
                continue
            if "=" not in part:
                raise FilesRestoreError("model_version %r is not <model>=<version>" % part)
            items.append(tuple(x.strip() for x in part.split("=", 1)))
    out = {}
    for model, version in items:
        if not model or not version or "/" in str(model) or "/" in str(version):
            raise FilesRestoreError("model_version %s=%s is not a model and version name" % (model, version))
        out[str(model)] = str(version)
    return out


def models_plan(set_path, entry, backup_root, models_path, model_version=None, link_name=LINK_NAME):
    """What a models restore does: ``[{model, version, store, sha256, dest, files, copy, link}]``.

    ``model_version`` picks one version per model (and points the link at it); default: every version
    the set references, the links as the set recorded them.
    """
    models = entry.get("models")
    if not isinstance(models, dict):
        models = _set_json(set_path, entry, MODELS_INDEX).get("models")
        if not isinstance(models, dict):
            raise FilesRestoreError("the set's %s holds no models: restore them from another set" % MODELS_INDEX)
    chosen = parse_versions(model_version)
    plan = []
    for model in sorted(chosen or models):
        desc = models.get(model)
        if desc is None:
            raise FilesRestoreError("the set references no model %s (it has: %s)" % (model, ", ".join(sorted(models))))
        check_name(model, "the model")
        known = desc.get("versions") if isinstance(desc, dict) else None
        if not isinstance(known, dict):
            raise FilesRestoreError("the set's record of model %s lists no versions: restore it from another set"
                                    % model)
        versions = [chosen[model]] if chosen else sorted(known)
        links = {link_name: chosen[model]} if chosen else dict(desc.get("links") or {})
        for version in versions:
            ver = known.get(version)
            if not isinstance(ver, dict):
                raise FilesRestoreError("the set references no version %s of model %s (it has: %s)"
                                        % (version, model, ", ".join(sorted(known))))
            check_name(version, "the version")
            sha = ver.get("sha256")
            if not isinstance(sha, str) or len(sha) != 64 or ver.get("store") != "%s/%s/%s-%s" % (
                    MODELS_DIR, model, version, sha[:12]):
                raise FilesRestoreError("the manifest's store entry %r of %s/%s is not %s/<model>/<version>-<hash12>"
                                        % (ver.get("store"), model, version, MODELS_DIR))
            store = os.path.join(layout_path(backup_root, "model_store"), model, "%s-%s" % (version, sha[:12]))
            try:
                with open(store + ".json", encoding="utf-8") as handle:
                    record = json.load(handle)
            except (OSError, ValueError) as exc:
                raise FilesRestoreError("no usable store record for %s/%s: %s" % (model, version, exc)) from exc
            if not os.path.isdir(store) or record.get("tree_sha256") != ver["sha256"]:
                raise FilesRestoreError("the store has no copy of %s/%s with tree hash %s (%s)"
                                        % (model, version, ver["sha256"], store))
            dest = os.path.join(models_path, model, version)
            same = os.path.isdir(dest) and not os.path.islink(dest) and \
                tree_info(dest, modes=False)["sha256"] == ver["sha256"]
            plan.append({"model": model, "version": version, "store": store, "sha256": ver["sha256"], "dest": dest,
                         "files": {rel: v[2] for rel, v in (record.get("source_files") or {}).items()},
                         "copy": not same})
        for name, target in links.items():
            check_name(name, "the link")
            if isinstance(target, str):  # "./v2/" is "v2"
                target = target[2:] if target.startswith("./") else target
                target = target.rstrip("/")
            check_name(target, "the target of link %s/%s (a version folder next to it)" % (model, name))
            plan.append({"model": model, "link": os.path.join(models_path, model, name), "target": target})
    return plan


def _check_files(folder, expected, sha256):
    """Compare every file's sha256 (and the tree hash) of ``folder`` with the store's record; return problems."""
    info = tree_info(folder, modes=False)
    actual = {e["path"]: e["sha256"] for e in info["entries"] if e["kind"] == "f"}
    problems = ["%s: sha256 %s, the store recorded %s" % (rel, actual.get(rel, "missing"), digest)
                for rel, digest in sorted(expected.items()) if actual.get(rel) != digest]
    problems += ["%s: not in the store's record" % rel for rel in sorted(set(actual) - set(expected))]
    if not problems and info["sha256"] != sha256:
        problems.append("tree hash %s, the manifest says %s" % (info["sha256"], sha256))
    return problems


def restore_models(plan, staging, suffix, check_mode=False):
    """Carry out ``models_plan``: copy, check, swap in, point the links; undo everything on any failure.

    Returns ``{model: {copied: [versions], unchanged: [versions], links: {name: {before, after}}}}``.
    """
    changes = {}
    for item in plan:
        model = changes.setdefault(item["model"], {"copied": [], "unchanged": [], "links": {}})
        if "link" in item:
            before = os.readlink(item["link"]) if os.path.islink(item["link"]) else None
            if before != item["target"]:
                model["links"][os.path.basename(item["link"])] = {"before": before, "after": item["target"]}
        else:
            model["copied" if item["copy"] else "unchanged"].append(item["version"])
    if check_mode:
        return changes
    journal = Journal(staging)
    journal.save()
    try:
        for item in plan:
            if "link" in item or not item["copy"]:
                continue
            parent = os.path.dirname(item["dest"])
            os.makedirs(parent, exist_ok=True)
            tmp = os.path.join(parent, ".restore-%s" % secrets.token_hex(8))
            try:
                _rsync(item["store"] + "/", tmp + "/", [MODEL_CHMOD])
                problems = _check_files(tmp, item["files"], item["sha256"])
                if problems:
                    raise FilesRestoreError("%s/%s copied from the store fails its check: %s"
                                            % (item["model"], item["version"], "; ".join(problems[:20])))
                safety = os.path.join(parent, ".%s%s" % (item["version"], suffix))
                swap_in(journal, item["dest"], safety, lambda dst, src=tmp: os.rename(src, dst))
            finally:
                if os.path.lexists(tmp):
                    shutil.rmtree(tmp)
        for item in plan:
            if "link" in item:
                if not os.path.isdir(os.path.join(os.path.dirname(item["link"]), item["target"])):
                    raise FilesRestoreError("%s would point at %s, which is not a folder"
                                            % (item["link"], item["target"]))
                point_link(journal, item["link"], item["target"])
                if os.path.realpath(item["link"]) != os.path.realpath(
                        os.path.join(os.path.dirname(item["link"]), item["target"])):
                    raise FilesRestoreError("%s does not resolve to %s" % (item["link"], item["target"]))
    except (FilesRestoreError, FilesBackupError, OSError) as exc:
        try:
            undo(journal)
        except FilesRestoreError as again:
            raise FilesRestoreError("%s; and %s" % (exc, again)) from exc
        raise FilesRestoreError("%s; every model folder and link was put back as it was" % exc) from exc
    return changes


# --------------------------------------------------------------------------------------------
# configs


def configs_source(set_path, entry, backup_root, commit=None):
    """``(repo, commit, ref)``: the config history (always ``<backup_root>/configs.git-worktree``: a manifest
    never chooses which repository Git runs in), the full commit to restore (default: the set's) and the set's
    ``configs_commit.json`` (``{}`` when the set has none)."""
    repo = GitRepo(layout_path(backup_root, "config_repo"))
    ref = {}
    names = [os.path.basename(str(f.get("path"))) for f in entry.get("files") or [] if isinstance(f, dict)]
    if CONFIGS_REF in names:
        ref = _set_json(set_path, entry, CONFIGS_REF)
    commit = commit or entry.get("commit") or ref.get("commit")
    if not commit:
        raise FilesRestoreError("the set records no commit of the config history")
    if not isinstance(commit, str) or commit.startswith("-") or any(ch.isspace() or ch == "\0" for ch in commit):
        raise FilesRestoreError("%r is not a commit" % (commit,))
    if not repo.exists():
        raise FilesRestoreError("the config history %s does not exist" % repo.path)
    try:
        full = repo.git("rev-parse", "--verify", "-q", "--end-of-options", "%s^{commit}" % commit).strip()
    except FilesBackupError as exc:
        raise FilesRestoreError("commit %s is not in the config history %s" % (commit, repo.path)) from exc
    return repo, full, ref


def _dest_of(path, dest_root):
    return os.path.join(dest_root, path.lstrip(os.sep)) if dest_root else path


def _copy_modes(new, old):
    """Give files and folders of ``new`` that also exist in ``old`` the old mode and owner."""
    pairs = [(new, old)]
    if os.path.isdir(new) and not os.path.islink(new):
        for dirpath, dirnames, filenames in os.walk(new):
            for name in dirnames + filenames:
                full = os.path.join(dirpath, name)
                pairs.append((full, os.path.join(old, os.path.relpath(full, new))))
    for path, before in pairs:
        if os.path.islink(path) or not os.path.lexists(before) or os.path.islink(before):
            continue
        st = os.lstat(before)
        if stat.S_IFMT(st.st_mode) != stat.S_IFMT(os.lstat(path).st_mode):
            continue
        os.chown(path, st.st_uid, st.st_gid)
        os.chmod(path, stat.S_IMODE(st.st_mode))


def _owner(item, dest):
    """``(uid, gid)`` of a record (None when it has none: a set written before owners were recorded)."""
    if item[0] is None and item[1] is None:
        return None
    if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 2 ** 32 - 1 for i in item):
        raise FilesRestoreError("%s: the set's record holds a bad owner %r" % (dest, list(item)))
    return tuple(item)


def _set_owner_mode(path, owner, mode, not_owned):
    """chown (when ``owner`` differs; a refusal is noted in ``not_owned``), then chmod: chown clears set-id bits."""
    if owner is not None:
        st = os.lstat(path)
        if (st.st_uid, st.st_gid) != owner:
            try:
                os.chown(path, owner[0], owner[1], follow_symlinks=False)
            except PermissionError:
                not_owned.append(path)
    os.chmod(path, mode & 0o7777)


def _plain_rel(dest, rel):
    """``rel`` from a record: a plain relative path whose parent, symlinks resolved, lies inside ``dest``."""
    if not isinstance(rel, str) or not rel or os.path.isabs(rel) or os.path.normpath(rel) != rel \
            or ".." in rel.split(os.sep) or "\0" in rel:
        raise FilesRestoreError("%s: the set's record names %r, not a plain relative path" % (dest, rel))
    full = os.path.join(dest, rel)
    root = os.path.realpath(dest)
    parent = os.path.realpath(os.path.dirname(full))
    if parent != root and not parent.startswith(root + os.sep):
        raise FilesRestoreError("%s: %r leads outside it" % (dest, rel))
    return full


def apply_record(dest, record):
    """Put back what Git does not keep of one config path (``llmops_files.config_record``): the path's own
    mode and owner and, for a folder, every entry's mode and owner, creating the empty folders. Entries are
    untrusted: each must be a plain relative path whose parent, symlinks resolved, lies inside ``dest``; symlinks
    are left alone. Returns the paths whose owner could not be set (not running as root)."""
    if not isinstance(record, dict) or record.get("kind") not in ("d", "f", "l"):
        raise FilesRestoreError("%s: the set's record of it is not usable: %r" % (dest, record))
    not_owned = []
    if record["kind"] == "l" or os.path.islink(dest):
        return not_owned
    entries = (record.get("entries") or []) if record["kind"] == "d" else []
    for item in entries:
        if not (isinstance(item, list) and len(item) in (3, 5) and item[1] in ("d", "f") and isinstance(item[2], int)):
            raise FilesRestoreError("%s: the set's record holds a bad entry %r" % (dest, item))
        rel, kind, mode = item[:3]
        owner = _owner(item[3:5] if len(item) == 5 else (None, None), dest)
        full = _plain_rel(dest, rel)
        if kind == "d" and not os.path.lexists(full):
            os.mkdir(full, 0o700)
        if os.path.islink(full) or not os.path.lexists(full):
            continue
        _set_owner_mode(full, owner, mode, not_owned)
    _set_owner_mode(dest, _owner((record.get("uid"), record.get("gid")), dest), int(record.get("mode", 0o700)),
                    not_owned)
    return not_owned


def keep_secrets(dest, safety, record):
    """Copy into the restored folder ``dest``, from the live folder the restore moved aside (``safety``), what the
    backup kept out of the history as secrets (``record["excluded"]``), with their modes and owners (rsync -a).
    Returns ``(kept, missing)``: relative paths copied, and those the live folder did not have either (roles/stack
    renders them again from the vault). Entries are untrusted: plain relative paths inside both folders; a path the
    restore already placed is left as it is."""
    kept, missing = [], []
    if not isinstance(record, dict) or record.get("kind") != "d" or os.path.islink(dest) or not os.path.isdir(dest):
        return kept, missing
    live = os.path.realpath(safety) if os.path.isdir(safety) and not os.path.islink(safety) else None
    for item in record.get("excluded") or []:
        if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)):
            raise FilesRestoreError("%s: the set's record holds a bad excluded entry %r" % (dest, item))
        rel = item[0]
        target = _plain_rel(dest, rel)
        if os.path.lexists(target):
            continue
        source = os.path.join(safety, rel)
        parent = os.path.realpath(os.path.dirname(source)) if live else None
        if not live or not os.path.lexists(source) or not os.path.isdir(os.path.dirname(target)) \
                or (parent != live and not parent.startswith(live + os.sep)):
            missing.append(rel)
            continue
        is_dir = os.path.isdir(source) and not os.path.islink(source)
        _rsync(source + "/" if is_dir else source, target + "/" if is_dir else target)
        kept.append(rel)
    return kept, missing


def _digest(path):
    if os.path.isdir(path) and not os.path.islink(path):
        return tree_info(path, modes=False)["sha256"]
    if os.path.islink(path):
        return "link:" + os.readlink(path)
    return hash_file(path)[0]


def _check_path(dest, expected):
    """Differences between ``path_info(dest)`` and the fingerprint the backup recorded for the path."""
    actual = path_info(dest)
    return ["%s %s, the backup recorded %s" % (key, actual.get(key), expected.get(key))
            for key in ("kind", "mode", "sha256") if key in expected and actual.get(key) != expected[key]]


def restore_configs(set_path, entry, backup_root, staging, suffix, commit=None, dest_root=None, check_mode=False):
    """Check out ``commit`` into a temp worktree and copy every recorded path back (under ``dest_root``).

    With the set's own commit, each path is then made to match the backup's mirror (modes, owners and empty
    folders from ``configs_commit.json``) and checked against ``fingerprint.paths`` (kind, mode, tree hash with
    modes). With another commit, or a set without those records, the copy is checked against the checkout.
    Afterwards what the backup kept out of the history as secrets is copied back from the replaced live folder
    (``keep_secrets``); what it does not have either is reported (``secrets_missing``, a warning): roles/stack
    renders those again from the vault.
    """
    repo, full, ref = configs_source(set_path, entry, backup_root, commit)
    paths = [check_config_path(p) for p in entry.get("paths") or []]
    if not paths:
        raise FilesRestoreError("the manifest records no config paths")
    own_commit = full == (entry.get("commit") or ref.get("commit"))
    fingerprints = ((entry.get("fingerprint") or {}).get("paths") or {}) if own_commit else {}
    records = (ref.get("paths") or {}) if own_commit else {}
    secret_records = ref.get("paths") or {}  # what the history never holds, whichever commit is restored
    if not isinstance(secret_records, dict):
        raise FilesRestoreError("the set's %s holds no usable paths record: restore from another set" % CONFIGS_REF)
    tracked = [p for p in repo.git("ls-tree", "-r", "--name-only", "-z", full).split("\0") if p]
    inside = {p: p.lstrip(os.sep) for p in paths}
    present = [p for p in paths if any(t == inside[p] or t.startswith(inside[p] + "/") for t in tracked)
               or (p in records and records[p].get("kind") == "d")]
    missing = [p for p in paths if p not in present]
    plan = [{"path": p, "dest": _dest_of(p, dest_root)} for p in present]
    if check_mode:
        kept_out = {}
        for i in plan:
            record = secret_records.get(i["path"])
            excluded = record.get("excluded") if isinstance(record, dict) else None
            kept_out[i["dest"]] = [e[0] for e in excluded or [] if isinstance(e, list) and e and isinstance(e[0], str)]
        return {"changed": bool(plan), "commit": full, "restored": [i["dest"] for i in plan], "not_in_commit": missing,
                "secrets_from_live": {d: rels for d, rels in kept_out.items() if rels}}
    os.makedirs(staging, mode=0o700, exist_ok=True)
    checkout = os.path.join(os.path.abspath(staging), "checkout-%s" % secrets.token_hex(4))
    journal = Journal(staging)
    journal.save()
    done = []
    not_owned, lost = [], []
    try:
        repo.git("worktree", "add", "--detach", "--quiet", "--end-of-options", checkout, full)
        for item in plan:
            src = os.path.join(checkout, inside[item["path"]])
            dest = item["dest"]
            if not os.path.lexists(src):  # a folder that held only empty folders: Git has nothing of it
                os.makedirs(src, mode=0o700)
            is_dir = os.path.isdir(src) and not os.path.islink(src)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            safety = dest.rstrip(os.sep) + suffix
            swap_in(journal, dest, safety, lambda dst, s=src, d=is_dir: _rsync(
                s + "/" if d else s, dst + "/" if d else dst, ["--exclude=/%s" % GIT_DIR]))
            if os.path.lexists(safety):
                _copy_modes(dest, safety)
            if item["path"] in records:
                not_owned += apply_record(dest, records[item["path"]])
            if item["path"] in fingerprints:
                problems = _check_path(dest, fingerprints[item["path"]])
                if problems:
                    raise FilesRestoreError("%s differs from the backup's copy after the restore: %s"
                                            % (dest, "; ".join(problems)))
                checked = "fingerprint"
            else:
                expected, actual = _digest(src), _digest(dest)
                if expected != actual:
                    raise FilesRestoreError("%s differs from commit %s after the copy (%s != %s)"
                                            % (dest, full[:12], actual, expected))
                checked = "checkout"
            sha256 = path_info(dest)["sha256"]
            kept, missing_secrets = keep_secrets(dest, safety, secret_records.get(item["path"]))
            lost += [os.path.join(dest, rel) for rel in missing_secrets]
            done.append({"path": item["path"], "dest": dest, "safety_copy": safety if os.path.lexists(safety) else None,
                         "sha256": sha256, "checked_against": checked, "secrets_kept": kept,
                         "secrets_missing": missing_secrets})
    finally:
        try:
            repo.git("worktree", "remove", "--force", "--end-of-options", checkout)
        except FilesBackupError:
            shutil.rmtree(checkout, ignore_errors=True)
            repo.git("worktree", "prune")
    warnings = []

    def names(paths):
        return ", ".join(json.dumps(p, ensure_ascii=False) for p in paths[:20])

    if lost:
        warnings.append("%d secret file(s) or folder(s) are never kept in the config history and were not in the "
                        "replaced copy either: %s. They come from the vault: render them again with "
                        "playbooks/stack.yml" % (len(lost), names(lost)))
    if not_owned:
        warnings.append("%d restored config file(s) could not be given their recorded owner (run the restore as "
                        "root): %s" % (len(not_owned), names(not_owned)))
    return {"changed": True, "commit": full, "restored": done, "not_in_commit": missing, "warnings": warnings}
