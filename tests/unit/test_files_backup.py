"""files_backup: upload trees with hard links, the model store and the config history.

Real rsync, tar, zstd and git on trees built in tmp_path (no lab needed). Sets are made with
llmops_backupset (begin / write_manifest / finalize) so that the previous-set and reference
lookups read real manifests. One case per mode goes through `ansible -m files_backup`.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from ansible.module_utils.llmops_backupset import begin_set, finalize_set, list_sets, write_manifest
from ansible.module_utils.llmops_files import (
    CONFIGS_REPO,
    backup_configs,
    backup_models,
    backup_tree,
    compare_scans,
    scan_tree,
    tree_hash,
    tree_info,
)
from ansible.module_utils.llmops_pipeline import decompress_to, hash_file

from tests.conftest import LAB_STATE, run_module

LAB_MODELS = LAB_STATE / "data" / "ai" / "models"

ODD_NAMES = ["plain.txt", "with space.csv", "it's \"quoted\".md", "naïve-café ☕.json", "日本語ファイル.txt",
             "-leading-dash", "semi;colon&amp.txt", "back\\slash.txt"]


def make_tree(root: Path) -> Path:
    """A small tree with odd names, several modes, a nested folder, an empty folder and symlinks."""
    root.mkdir(parents=True)
    modes = [0o600, 0o640, 0o644, 0o755]
    for i, name in enumerate(ODD_NAMES):
        path = root / name
        path.write_bytes((name * (i + 1)).encode("utf-8") + os.urandom(64 * i))
        path.chmod(modes[i % len(modes)])
    sub = root / "sub dir" / "ünïcode"
    sub.mkdir(parents=True)
    (sub / "deep file.bin").write_bytes(os.urandom(4096))
    (sub / "deep file.bin").chmod(0o600)
    (root / "empty dir").mkdir()
    os.symlink("plain.txt", root / "link to plain")
    os.symlink("sub dir/ünïcode", root / "dirlink")
    return root


def finalize(root: Path, partial: str, components: dict) -> str:
    """Finalize a partial set the way backup_set does (files listed explicitly: trees may hold symlinks)."""
    comps = {}
    for name, comp in components.items():
        comp = dict(comp)
        comp["files"] = [dict(f, path=os.path.relpath(f["path"], partial)) for f in comp.get("files") or []]
        comps[name] = comp
    manifest = {"id": os.path.basename(partial)[1:-len(".partial")], "name": "t", "status": "success",
                "started": "2026-01-01T00:00:00Z", "ended": "2026-01-01T00:00:01Z", "components": comps}
    files = [f for c in comps.values() for f in c["files"]]
    shutil.rmtree(os.path.join(partial, ".components"), ignore_errors=True)
    os.unlink(os.path.join(partial, ".owner.json"))
    write_manifest(partial, manifest, files=files)
    return finalize_set(partial, str(root), "success")


def new_partial(root: Path, when: str) -> str:
    import datetime

    return begin_set(str(root), "t", now=datetime.datetime.fromisoformat(when))


# --------------------------------------------------------------------------------------------
# tree hash


def test_tree_hash_covers_content_modes_names_and_links(tmp_path):
    src = make_tree(tmp_path / "a")
    base = tree_hash(src)
    info = tree_info(src)
    assert info["files"] == len(ODD_NAMES) + 1 and info["symlinks"] == 2 and info["dirs"] == 3
    assert tree_hash(src) == base  # deterministic
    (src / "plain.txt").chmod(0o604)
    assert tree_hash(src) != base
    assert tree_hash(src, modes=False) == tree_info(src, modes=False)["sha256"]
    modeless = tree_hash(src, modes=False)
    (src / "plain.txt").chmod(0o600)
    assert tree_hash(src) == base and tree_hash(src, modes=False) == modeless
    os.unlink(src / "link to plain")
    os.symlink("with space.csv", src / "link to plain")
    assert tree_hash(src) != base


def test_compare_scans_reads_names_with_newlines_and_arrows(tmp_path):
    """Trees are compared by Python's walk, never by parsing a tool's lines: names may hold anything but / and NUL."""
    old, new = make_tree(tmp_path / "old"), tmp_path / "new"
    shutil.copytree(old, new, symlinks=True)
    for name in ["new\nline.txt", "link -> a", "tab\tname"]:
        (new / name).write_text(name)
    (new / "plain.txt").write_text("changed")
    os.utime(new / "plain.txt", ns=(1, 1))
    os.unlink(new / "-leading-dash")
    items = compare_scans(scan_tree(new), scan_tree(old))
    assert sorted(c["path"] for c in items["changes"] if c["change"] == "new") == sorted(
        ["new\nline.txt", "link -> a", "tab\tname"])
    assert [c["path"] for c in items["changes"] if c["change"] == "changed"] == ["plain.txt"]
    assert items["deleted"] == ["-leading-dash"]


# --------------------------------------------------------------------------------------------
# tree mode


def test_tree_two_backups_share_unchanged_files_and_restore(tmp_path):
    src = make_tree(tmp_path / "src")
    root = tmp_path / "backup"
    p1 = new_partial(root, "2026-01-01T02:00:00+00:00")
    first = backup_tree(src, os.path.join(p1, "uploads"), backup_root=root, component="uploads")
    assert first["linked_from"] is None and first["files_linked"] == 0
    assert first["file_count"] == len(ODD_NAMES) + 1
    assert first["bytes_new"] == first["tree_bytes"]
    assert first["tree_dir"] == "uploads/uploads"
    assert first["fingerprint"]["tree_sha256"] == tree_hash(src)
    set1 = finalize(root, p1, {"uploads": first})

    (src / "with space.csv").write_bytes(b"changed content \xe2\x98\x95")
    (src / "brand new.txt").write_text("new")
    os.unlink(src / "-leading-dash")
    p2 = new_partial(root, "2026-01-02T02:00:00+00:00")
    second = backup_tree(src, os.path.join(p2, "uploads"), backup_root=root, component="uploads",
                         full_archive=True)
    assert second["linked_from"] == os.path.basename(set1)
    assert second["files_new"] == 2
    assert second["bytes_new"] == len(b"changed content \xe2\x98\x95") + 3
    assert second["files_linked"] == second["file_count"] - 2

    old_tree = Path(set1) / "uploads" / "uploads"
    new_tree = Path(p2) / "uploads" / "uploads"
    for name in ["plain.txt", "it's \"quoted\".md", "日本語ファイル.txt", "sub dir/ünïcode/deep file.bin"]:
        a, b = os.lstat(old_tree / name), os.lstat(new_tree / name)
        assert a.st_ino == b.st_ino and b.st_nlink == 2, name
    a, b = os.lstat(old_tree / "with space.csv"), os.lstat(new_tree / "with space.csv")
    assert a.st_ino != b.st_ino and b.st_nlink == 1
    assert not (new_tree / "-leading-dash").exists()
    assert os.readlink(new_tree / "link to plain") == "plain.txt"
    for name in ODD_NAMES[1:5]:
        assert os.lstat(new_tree / name).st_mode == os.lstat(src / name).st_mode, name
    # The old set is untouched by the new backup.
    assert (old_tree / "-leading-dash").exists()
    assert (old_tree / "with space.csv").read_bytes() != (src / "with space.csv").read_bytes()

    # Every file of the component is listed with its sha256, inside the set.
    listed = {os.path.relpath(f["path"], new_tree): f for f in second["files"] if f["path"].startswith(str(new_tree))}
    assert hash_file(new_tree / "brand new.txt")[0] == listed["brand new.txt"]["sha256"]

    # Restore = copy back; the tree hash matches the fingerprint and the source.
    restored = tmp_path / "restored"
    subprocess.run(["rsync", "-a", f"{new_tree}/", f"{restored}/"], check=True)
    assert tree_hash(restored) == second["fingerprint"]["tree_sha256"] == tree_hash(src)

    # The full archive extracts to an equal tree.
    archive = Path(p2) / "uploads" / "uploads.tar.zst"
    assert second["full_archive"]["sha256"] == hash_file(archive)[0]
    extracted = tmp_path / "extracted"
    extracted.mkdir()
    decompress_to(archive, ["tar", "-C", str(extracted), "-xpf", "-"], expected_sha256=second["full_archive"]["sha256"])
    assert tree_hash(extracted) == second["fingerprint"]["tree_sha256"]


def test_tree_nightly_reads_only_what_changed_and_trusts_no_bad_record(tmp_path, monkeypatch):
    """A file rsync hard-linked to the previous set's takes that set's recorded sha256 (it is the same inode);
    only new or changed files are read. A record that does not fit the file (another size) is not trusted."""
    import ansible.module_utils.llmops_files as files

    src = make_tree(tmp_path / "src")
    root = tmp_path / "backup"
    p1 = new_partial(root, "2026-01-01T02:00:00+00:00")
    first = backup_tree(src, os.path.join(p1, "uploads"), backup_root=root)
    assert first["files_hashed"] == first["file_count"]
    set1 = finalize(root, p1, {"uploads": first})

    (src / "brand new.txt").write_text("new")
    (src / "plain.txt").write_text("changed in place, another size")
    read, synced = [], []
    real_hash, real_fsync = files.hash_file, os.fsync
    monkeypatch.setattr(files, "hash_file", lambda path, *a, **k: read.append(os.path.basename(path))
                        or real_hash(path, *a, **k))
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
                        or real_fsync(fd))
    p2 = new_partial(root, "2026-01-02T02:00:00+00:00")
    second = backup_tree(src, os.path.join(p2, "uploads"), backup_root=root)
    assert sorted(read) == ["brand new.txt", "plain.txt"]
    assert second["linked_from"] == os.path.basename(set1)
    # the new files' data is synced; a hard-linked file's was when the first set was made (its folder is synced)
    assert {"brand new.txt", "plain.txt", "uploads", "ünïcode"} <= set(synced)
    assert "deep file.bin" not in synced and "with space.csv" not in synced
    assert second["files_hashed"] == 2 and second["files_linked"] == second["file_count"] - 2
    # the fingerprint and every listed sha256 are those of a full read
    tree = Path(p2) / "uploads" / "uploads"
    assert second["fingerprint"]["tree_sha256"] == tree_hash(tree) == tree_hash(src)
    for entry in second["files"]:
        assert entry["sha256"] == real_hash(entry["path"])[0], entry["path"]
    set2 = finalize(root, p2, {"uploads": second})

    # the previous set's manifest says another size for one file: that file is read, not trusted
    import json

    manifest_path = Path(set2) / "backup_manifest.json"
    manifest = json.loads(manifest_path.read_text())
    victim = next(e for e in manifest["files"] if e["path"].endswith("deep file.bin"))
    victim["size"] += 1
    manifest_path.write_text(json.dumps(manifest))
    read.clear()
    p3 = new_partial(root, "2026-01-03T02:00:00+00:00")
    third = backup_tree(src, os.path.join(p3, "uploads"), backup_root=root)
    assert third["linked_from"] == os.path.basename(set2)
    assert read == ["deep file.bin"]
    assert third["fingerprint"]["tree_sha256"] == tree_hash(src)


def test_tree_check_mode_writes_nothing(tmp_path):
    src = make_tree(tmp_path / "src")
    root = tmp_path / "backup"
    p1 = new_partial(root, "2026-01-01T02:00:00+00:00")
    finalize(root, p1, {"uploads": backup_tree(src, os.path.join(p1, "uploads"), backup_root=root)})
    (src / "plain.txt").write_text("changed")
    dest = tmp_path / "check" / "uploads"
    result = backup_tree(src, dest, backup_root=root, full_archive=True, check_mode=True)
    assert not (tmp_path / "check").exists()
    assert result["linked_from"] == list_sets(root)[-1]["id"]
    assert [(c["path"], c["change"]) for c in result["would_copy"]] == [("plain.txt", "changed")]
    assert result["would_delete"] == []


def test_tree_through_ansible(tmp_path):
    src = make_tree(tmp_path / "src")
    root = tmp_path / "backup"
    p1 = new_partial(root, "2026-01-01T02:00:00+00:00")
    result = run_module("files_backup", {"mode": "tree", "src": str(src), "dest": os.path.join(p1, "uploads"),
                                         "backup_root": str(root), "full_archive": True})
    assert not result.get("failed"), result
    comp = result["component"]
    assert comp["status"] == "success" and comp["type"] == "files" and comp["backup_type"] == "full"
    assert comp["fingerprint"]["tree_sha256"] == tree_hash(src)
    assert comp["full_archive"]["file"] == "uploads.tar.zst"
    checked = run_module("files_backup", {"mode": "tree", "src": str(src), "dest": str(tmp_path / "nope"),
                                          "backup_root": str(root)}, check_mode=True)
    assert checked["changed"] and "would_copy" in checked["check"]
    assert not (tmp_path / "nope").exists()
    missing = run_module("files_backup", {"mode": "tree", "src": str(tmp_path / "absent"), "dest": str(tmp_path / "x")})
    assert missing["failed"] and "is not a folder" in missing["msg"]


# --------------------------------------------------------------------------------------------
# models mode


def make_models(root: Path) -> Path:
    for model, versions in {"llm": ["v1", "v2"], "embedding": ["v1"]}.items():
        for version in versions:
            folder = root / model / version
            folder.mkdir(parents=True)
            (folder / "weights.bin").write_bytes(os.urandom(8192))
            (folder / "config.json").write_text(f'{{"model": "{model}", "version": "{version}"}}')
            (folder / "config.json").chmod(0o644)
        os.symlink(versions[-1], root / model / "current")
    return root


def _store_dirs(root: Path, model: str) -> list[str]:
    store = root / "models" / model
    return sorted(p.name for p in store.iterdir() if p.is_dir() and not p.name.startswith("."))


def test_models_store_reuse_and_change(tmp_path):
    src = make_models(tmp_path / "models")
    root = tmp_path / "backup"
    p1 = new_partial(root, "2026-01-01T02:00:00+00:00")
    first = backup_models(src, os.path.join(p1, "models"), root)
    assert sorted(first["stored_new"]) == sorted(
        f"{m}/{v}-{tree_hash(src / m / v, modes=False)[:12]}" for m, v in
        [("llm", "v1"), ("llm", "v2"), ("embedding", "v1")])
    assert first["reused"] == [] and first["pruned"] == []
    assert first["models"]["llm"]["links"] == {"current": "v2"}
    stored = root / first["models"]["llm"]["versions"]["v2"]["store"]
    assert stat.S_IMODE(os.stat(stored).st_mode) == 0o700
    assert {stat.S_IMODE(os.stat(p).st_mode) for p in stored.iterdir()} == {0o600}
    assert tree_hash(stored, modes=False) == first["models"]["llm"]["versions"]["v2"]["sha256"]
    assert Path(first["files"][0]["path"]).name == "models_index.json"
    set1 = finalize(root, p1, {"models": first})

    p2 = new_partial(root, "2026-01-02T02:00:00+00:00")
    second = backup_models(src, os.path.join(p2, "models"), root)
    assert second["stored_new"] == [] and len(second["reused"]) == 3 and second["bytes_new"] == 0
    finalize(root, p2, {"models": second})

    (src / "llm" / "v2" / "weights.bin").write_bytes(os.urandom(8192))
    checked = backup_models(src, tmp_path / "check", root, check_mode=True)
    new_key = "v2-" + tree_hash(src / "llm" / "v2", modes=False)[:12]
    assert checked["stored_new"] == ["llm/" + new_key] and checked["changed"]
    assert new_key not in _store_dirs(root, "llm") and not (tmp_path / "check").exists()

    p3 = new_partial(root, "2026-01-03T02:00:00+00:00")
    third = backup_models(src, os.path.join(p3, "models"), root)
    assert third["stored_new"] == ["llm/" + new_key]
    assert third["models"]["llm"]["versions"]["v2"]["new"] is True
    assert new_key in _store_dirs(root, "llm")
    # The old v2 stays: set1 references it.
    old_key = os.path.basename(first["models"]["llm"]["versions"]["v2"]["store"])
    assert old_key in _store_dirs(root, "llm") and os.path.isdir(set1)


def test_models_keep_versions_prunes_oldest_unreferenced(tmp_path):
    src = tmp_path / "models"
    (src / "m" / "v").mkdir(parents=True)
    root = tmp_path / "backup"
    keys = []
    for run in range(4):
        (src / "m" / "v" / "w.bin").write_bytes(b"generation %d" % run)
        if run == 0:
            partial = new_partial(root, "2026-01-01T02:00:00+00:00")
            entry = backup_models(src, os.path.join(partial, "models"), root, keep_versions=2)
            finalize(root, partial, {"models": entry})  # this set keeps referencing generation 0
        else:
            entry = backup_models(src, tmp_path / f"run{run}", root, keep_versions=2)
        keys.append(os.path.basename(entry["models"]["m"]["versions"]["v"]["store"]))
    # Generation 1 is neither among the newest 2 nor referenced: pruned (on the 4th run).
    assert entry["pruned"] == ["m/" + keys[1]]
    assert _store_dirs(root, "m") == sorted([keys[0], keys[2], keys[3]])
    assert not (root / "models" / "m" / (keys[1] + ".json")).exists()


def test_models_through_ansible(tmp_path):
    src = tmp_path / "models"
    # a copy of the lab's seeded models (tests never touch the lab's own files); before the seed, its own
    if LAB_MODELS.is_dir() and any(LAB_MODELS.glob("*/*/*")):
        shutil.copytree(LAB_MODELS, src, symlinks=True)
    else:
        make_models(src)
    root = tmp_path / "backup"
    args = {"mode": "models", "src": str(src), "dest": str(tmp_path / "set" / "models"), "backup_root": str(root)}
    result = run_module("files_backup", args)
    assert not result.get("failed"), result
    assert result["component"]["stored_new"] and result["component"]["reused"] == [], result
    checked = run_module("files_backup", dict(args, dest=str(tmp_path / "set2" / "models")), check_mode=True)
    assert checked["changed"] is False and checked["check"]["stored_new"] == []
    assert not (tmp_path / "set2").exists()


# --------------------------------------------------------------------------------------------
# configs mode


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    return subprocess.run(["git", "-c", f"safe.directory={repo}", "-C", str(repo), *args], env=env, check=True,
                          capture_output=True, text=True).stdout


def make_configs(root: Path) -> tuple[Path, Path]:
    etc = root / "etc" / "llmops"
    etc.mkdir(parents=True)
    (etc / "app.yaml").write_text("model: llm\nport: 8000\n")
    (etc / "secret ü.env").write_text("TOKEN=s3cr3t\n")
    (etc / "secret ü.env").chmod(0o600)
    (etc / "conf.d").mkdir()
    (etc / "conf.d" / "10-log.yaml").write_text("level: info\n")
    single = root / "compose.yaml"
    single.write_text("services: {}\n")
    return etc, single


def test_configs_history(tmp_path):
    etc, single = make_configs(tmp_path / "src")
    root = tmp_path / "backup"
    repo = root / CONFIGS_REPO
    first = backup_configs([str(etc), str(single)], tmp_path / "s1" / "configs", root)
    assert first["changed"] and len(first["commit"]) == 40
    assert stat.S_IMODE(os.stat(repo).st_mode) == 0o700
    inside = str(etc).lstrip("/")
    # a secret is never committed, only reported by name (tests/unit/test_config_secrets.py tests the rules)
    assert f"{inside}/secret ü.env" not in first["config_files"]
    assert {"path": str(etc / "secret ü.env"), "reason": "name matches *.env"} in first["excluded"]
    assert str(single).lstrip("/") in first["config_files"]
    assert git(repo, "log", "-1", "--format=%an <%ae>").strip() == "llmops-backup <backup@localhost>"

    second = backup_configs([str(etc), str(single)], tmp_path / "s2" / "configs", root)
    assert not second["changed"] and second["commit"] == first["commit"]

    (etc / "app.yaml").write_text("model: llm\nport: 9000\n")
    (etc / "conf.d" / "10-log.yaml").unlink()
    checked = backup_configs([str(etc), str(single)], tmp_path / "s3" / "configs", root, check_mode=True)
    assert checked["changed"] and checked["head"] == first["commit"]
    assert f"{inside}/app.yaml" in checked["would_commit"]
    assert f"{inside}/conf.d/10-log.yaml" in checked["would_delete"]
    assert "port: 8000" in (repo / inside / "app.yaml").read_text() and not (tmp_path / "s3").exists()

    third = backup_configs([str(etc), str(single)], tmp_path / "s4" / "configs", root)
    assert third["changed"] and third["commit"] != first["commit"]
    assert f"{inside}/conf.d/10-log.yaml" not in third["config_files"]
    log = git(repo, "log", "--format=%H %P").split("\n")
    assert [line.split() for line in log if line] == [[third["commit"], first["commit"]], [first["commit"]]]
    # History is intact: the old version is still there.
    assert "port: 8000" in git(repo, "show", f"{first['commit']}:{inside}/app.yaml")
    assert "level: info" in git(repo, "show", f"{first['commit']}:{inside}/conf.d/10-log.yaml")
    assert git(repo, "status", "--porcelain") == ""

    # A path dropped from the list leaves the tip but stays in the history.
    fourth = backup_configs([str(etc)], tmp_path / "s5" / "configs", root)
    assert fourth["changed"] and str(single).lstrip("/") not in fourth["config_files"]
    assert "services" in git(repo, "show", f"{first['commit']}:{str(single).lstrip('/')}")


def test_configs_refuses_missing_path(tmp_path):
    from ansible.module_utils.llmops_files import FilesBackupError

    with pytest.raises(FilesBackupError, match="does not exist"):
        backup_configs([str(tmp_path / "absent")], tmp_path / "d", tmp_path / "root")
    assert not (tmp_path / "root").exists()


def test_configs_through_ansible(tmp_path):
    etc, single = make_configs(tmp_path / "src")
    root = tmp_path / "backup"
    args = {"mode": "configs", "paths": [str(etc), str(single)], "dest": str(tmp_path / "s1" / "configs"),
            "backup_root": str(root)}
    checked = run_module("files_backup", args, check_mode=True)
    assert checked["changed"], checked
    assert not root.exists()
    result = run_module("files_backup", args)
    assert not result.get("failed"), result
    comp = result["component"]
    assert comp["changed"] and comp["commit"] == git(root / CONFIGS_REPO, "rev-parse", "HEAD").strip()
    again = run_module("files_backup", dict(args, dest=str(tmp_path / "s2" / "configs")))
    assert again["component"]["changed"] is False and again["component"]["commit"] == comp["commit"]


# --------------------------------------------------------------------------------------------
# fingerprints of the copies, hostile names, untrusted manifests


HOSTILE = ["한국어 파일.txt", "emoji 🚀.bin", "it's \"q\"", "back`tick`", "back\\slash", "semi;colon", "tab\there",
           "new\nline", "-leading-dash", "\\#012 not an escape", "arrow -> x"]


def hostile_configs(root: Path) -> Path:
    etc = root / "설정 $(touch pwned) 'x'"
    (etc / "new\nline dir" / "empty dir").mkdir(parents=True)
    for i, name in enumerate(HOSTILE):
        (etc / name).write_bytes(name.encode() * (i + 1))
        (etc / name).chmod([0o600, 0o640, 0o644, 0o755][i % 4])
        (etc / "new\nline dir" / name).write_bytes(b"")
    (etc / ".gitignore").write_text("*\n")
    (etc / ".gitattributes").write_text("* text eol=crlf\n")
    (etc / "crlf.txt").write_bytes(b"a\r\nb\r\n")
    (etc / "lf.txt").write_bytes(b"a\nb\n")
    (etc / "new\nline dir").chmod(0o700)
    os.symlink("new\nline dir", etc / "-link")
    (etc / ".git").mkdir()  # a folder named .git is not kept (Git could not hold it)
    (etc / ".git" / "config").write_text("[core]\n\tfsmonitor = touch /tmp/pwned\n")
    return etc


def describe(root: Path, skip=(".git",)) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in skip]
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            st = os.lstat(full)
            out[str(full.relative_to(root))] = (
                stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode),
                os.readlink(full) if full.is_symlink() else full.read_bytes() if full.is_file() else None)
    return out


def test_configs_fingerprint_is_the_mirror_and_restore_puts_modes_back(tmp_path):
    from ansible.module_utils.llmops_backupset import load_manifest
    from ansible.module_utils.llmops_files import path_info
    from ansible.module_utils.llmops_files_restore import restore_configs

    etc = hostile_configs(tmp_path / "src")
    single = tmp_path / "src" / "-single ;$(id).yaml"
    single.write_text("a: 1\n")
    single.chmod(0o640)
    root = tmp_path / "backup"
    partial = new_partial(root, "2026-01-01T02:00:00+00:00")
    entry = backup_configs([str(etc), str(single)], os.path.join(partial, "configs"), root)
    repo = root / CONFIGS_REPO
    mirror = repo / str(etc).lstrip("/")
    assert entry["fingerprint"]["paths"][str(etc)] == path_info(str(mirror), exclude=(".git",))
    assert entry["fingerprint"]["paths"][str(etc)]["sha256"] == tree_hash(mirror)  # .git was never copied
    assert not (mirror / ".git").exists()
    inside = str(etc).lstrip("/")
    assert {f"{inside}/{n}" for n in HOSTILE + [".gitignore", "crlf.txt"]} <= set(entry["config_files"])
    assert git(repo, "show", f"{entry['commit']}:{inside}/lf.txt") == "a\nb\n"  # no eol conversion
    assert not (tmp_path / "pwned").exists()
    set_path = finalize(root, partial, {"configs": entry})

    before = {"etc": describe(etc), "single": describe(single.parent)[single.name]}
    dest_root = tmp_path / "restored"
    result = restore_configs(set_path, load_manifest(set_path)["components"]["configs"], str(root),
                             str(tmp_path / "staging"), ".pre", dest_root=str(dest_root))
    assert [r["checked_against"] for r in result["restored"]] == ["fingerprint", "fingerprint"]
    assert describe(dest_root / inside) == before["etc"]  # names, contents, modes, links, empty folders
    restored_single = dest_root / str(single).lstrip("/")
    assert describe(restored_single.parent)[single.name] == before["single"]


def test_models_fingerprint_is_the_copy(tmp_path, monkeypatch):
    """A version that changes while it is copied is stored under the tree hash of the copy, never the earlier read."""
    from ansible.module_utils import llmops_files

    src = make_models(tmp_path / "models")
    real = llmops_files.run_tool

    def rsync_after_a_write(argv, **kwargs):
        if argv[0] == "rsync" and str(src / "llm" / "v2") + "/" in argv:
            (src / "llm" / "v2" / "weights.bin").write_bytes(b"written during the copy")
        return real(argv, **kwargs)

    monkeypatch.setattr(llmops_files, "run_tool", rsync_after_a_write)
    root = tmp_path / "backup"
    entry = backup_models(src, tmp_path / "set" / "models", root)
    v2 = entry["models"]["llm"]["versions"]["v2"]
    assert tree_hash(root / v2["store"], modes=False) == v2["sha256"] == entry["fingerprint"]["llm"]["v2"]
    assert v2["store"].endswith(v2["sha256"][:12])
    assert (root / v2["store"] / "weights.bin").read_bytes() == b"written during the copy"
    assert any("changed while it was copied" in w for w in entry["warnings"])


def test_tree_fingerprint_is_the_copy_and_specials_are_not_copied(tmp_path):
    src = make_tree(tmp_path / "src")
    os.mkfifo(src / "a fifo")
    for name in HOSTILE:
        (src / "sub dir" / name).write_bytes(name.encode())
    root = tmp_path / "backup"
    partial = new_partial(root, "2026-01-01T02:00:00+00:00")
    entry = backup_tree(src, os.path.join(partial, "uploads"), backup_root=root)
    tree = Path(partial) / "uploads" / "uploads"
    assert entry["fingerprint"]["tree_sha256"] == tree_hash(tree)
    assert not (tree / "a fifo").exists()
    assert {n for n in HOSTILE} <= {p.name for p in (tree / "sub dir").iterdir()}
    checked = backup_tree(src, tmp_path / "x", backup_root=root, check_mode=True)
    assert checked["skipped"] == ["a fifo"]


def test_restore_refuses_untrusted_manifest_paths(tmp_path):
    from ansible.module_utils.llmops_files_restore import (
        FilesRestoreError,
        configs_source,
        models_plan,
        restore_configs,
        tree_source,
    )

    set_path = tmp_path / "set"
    (set_path / "uploads").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", set_path / "uploads" / "escape")
    for tree_dir in ["../outside", str(tmp_path / "outside"), "uploads/../../outside", "uploads/escape"]:
        with pytest.raises(FilesRestoreError):
            tree_source(str(set_path), {"tree_dir": tree_dir, "fingerprint": {"tree_sha256": "0" * 64}},
                        str(tmp_path / "st"))
    sha = "a" * 64
    bad_models = [
        {"../x": {"versions": {"v1": {"sha256": sha, "store": "models/../x/v1-" + sha[:12]}}}},
        {"m": {"versions": {"..": {"sha256": sha, "store": "models/m/..-" + sha[:12]}}}},
        {"m": {"versions": {"v1": {"sha256": sha, "store": "models/../../etc"}}}},
        {"m": {"versions": {}, "links": {"current": "../../etc"}}},
        {"m": {"versions": {}, "links": {"../current": "v1"}}},
    ]
    for models in bad_models:
        with pytest.raises(FilesRestoreError):
            models_plan(str(set_path), {"models": models}, str(tmp_path), str(tmp_path / "live"))
    root = tmp_path / "backup"
    backup_configs([str(make_configs(tmp_path / "src")[1])], tmp_path / "c", root)
    for commit in ["--output=/tmp/x", "HEAD --all", "-h"]:
        with pytest.raises(FilesRestoreError, match="is not a commit"):
            configs_source(str(set_path), {"commit": commit}, str(root))
    for path in ["relative/path", "/etc/../root", "/", "/a/.git/config"]:
        with pytest.raises(FilesRestoreError, match="not a plain absolute path"):
            restore_configs(str(set_path), {"commit": "HEAD", "paths": [path]}, str(root), str(tmp_path / "st"),
                            ".pre")
    # the manifest never chooses the repository Git runs in
    repo, _full, _ref = configs_source(str(set_path), {"commit": "HEAD", "repo": str(tmp_path / "elsewhere")},
                                       str(root))
    assert repo.path == str(root / CONFIGS_REPO)


# --------------------------------------------------------------------------------------------
# durability: what rsync copied is fsynced before the component returns (and the set is finalized)


def test_tree_and_model_copies_are_fsynced_before_they_are_returned(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    src = make_tree(tmp_path / "src")
    root = tmp_path / "backup"
    partial = new_partial(root, "2026-01-01T02:00:00+00:00")
    entry = backup_tree(src, os.path.join(partial, "uploads"), backup_root=root)
    tree = Path(partial) / "uploads" / "uploads"
    copied = [p for p in tree.rglob("*") if not p.is_symlink()]
    assert copied and entry["files_new"] > 0
    missing = [str(p) for p in [tree, *copied] if str(p) not in synced]
    assert not missing, f"not fsynced: {missing}"

    synced.clear()
    models = tmp_path / "models"
    (models / "llm" / "v1" / "sub").mkdir(parents=True)
    (models / "llm" / "v1" / "weights.bin").write_bytes(os.urandom(4096))
    (models / "llm" / "v1" / "sub" / "config.json").write_text("{}")
    result = backup_models(str(models), os.path.join(partial, "models"), str(root))
    stored = Path(root) / result["models"]["llm"]["versions"]["v1"]["store"]
    # synced in the temp folder, before its rename into the store: every file and folder under its temp name
    in_tmp = {p.split("/.tmp-", 1)[1].partition("/")[2] for p in synced if "/.tmp-" in p}
    expected = {str(p.relative_to(stored)) for p in stored.rglob("*")} | {""}
    assert len(expected) == 4 and expected <= in_tmp, (in_tmp, expected)
