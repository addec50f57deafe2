"""Tests of module_utils/llmops_backupset.py: layout, SHA256SUMS, finalize, latest, verify, lock."""

from __future__ import annotations

import datetime
import os
import stat
import subprocess
import sys

import pytest

from module_utils import llmops_backupset as bs

T0 = datetime.datetime(2026, 1, 31, 2, 0, 0, tzinfo=datetime.UTC)


def make_set(root, now, status="success", name="llmops", files=None):
    partial = bs.begin_set(root, name, now)
    os.unlink(os.path.join(partial, bs.OWNER))
    os.rmdir(os.path.join(partial, bs.COMPONENTS_DIR))
    for rel, data in (files or {"mariadb/full.mbstream.zst": b"m" * 1000, "postgres/app.dump.zst": b"p"}).items():
        full = os.path.join(partial, rel)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as handle:
            handle.write(data)
    manifest = {"id": os.path.basename(partial)[1:-8], "status": status, "started": bs.isoformat(now),
                "ended": bs.isoformat(now), "components": {"mariadb": {"status": status, "backup_type": "full"}}}
    bs.write_manifest(partial, manifest)
    return bs.finalize_set(partial, root, status)


def test_begin_layout_and_modes(tmp_path):
    root = tmp_path / "backups"
    partial = bs.begin_set(root, "llmops", T0)
    assert os.path.basename(partial) == ".llmops_20260131_020000.partial"
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(partial).st_mode) == 0o700
    assert bs.new_set_id(T0) == "20260131_020000"
    assert bs.new_set_id(datetime.datetime(2026, 1, 31, 11, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=9)))) \
        == "20260131_020000"
    with pytest.raises(bs.BackupSetError):
        bs.begin_set(root, "llmops", T0)
    with pytest.raises(bs.BackupSetError):
        bs.begin_set(root, "../evil", T0)


def test_sha256sum_accepts_set_and_latest(tmp_path):
    path = make_set(tmp_path, T0)
    assert os.path.basename(path) == "llmops_20260131_020000"
    check = subprocess.run(["sha256sum", "-c", "--strict", "SHA256SUMS"], cwd=path, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    listed = [line.split("  ", 1)[1] for line in open(os.path.join(path, "SHA256SUMS")).read().splitlines()]
    assert listed == sorted(listed) == ["backup_manifest.json", "mariadb/full.mbstream.zst", "postgres/app.dump.zst"]
    assert stat.S_IMODE(os.stat(os.path.join(path, "backup_manifest.json")).st_mode) == 0o600
    assert os.readlink(tmp_path / "latest") == "llmops_20260131_020000"
    manifest = bs.load_manifest(path)
    assert manifest["schema_version"] == 1 and manifest["totals"] == {"files": 2, "bytes": 1001}
    assert bs.verify_set(path)["ok"]
    sets = bs.list_sets(tmp_path)
    assert [s["id"] for s in sets] == ["llmops_20260131_020000"] and sets[0]["complete"] and sets[0]["latest"]


def test_abandoned_partial_is_not_listed_and_latest_unchanged(tmp_path):
    make_set(tmp_path, T0)
    partial = bs.begin_set(tmp_path, "llmops", T0 + datetime.timedelta(hours=6))
    (open(os.path.join(partial, "half.zst"), "wb")).write(b"x")
    assert [s["id"] for s in bs.list_sets(tmp_path)] == ["llmops_20260131_020000"]
    assert os.readlink(tmp_path / "latest") == "llmops_20260131_020000"
    assert bs.list_partials(tmp_path) == [partial]
    later = T0 + datetime.timedelta(hours=11)
    assert bs.cleanup_partials(tmp_path, 4 * 3600, now=later, dry_run=True) == [partial]
    assert bs.cleanup_partials(tmp_path, 4 * 3600, now=T0 + datetime.timedelta(hours=7)) == []
    assert bs.cleanup_partials(tmp_path, 4 * 3600, now=later) == [partial]
    assert not os.path.exists(partial)


def test_failed_set_never_latest(tmp_path):
    make_set(tmp_path, T0)
    failed = make_set(tmp_path, T0 + datetime.timedelta(days=1), status="failed")
    assert os.readlink(tmp_path / "latest") == "llmops_20260131_020000"
    assert bs.load_manifest(failed)["status"] == "failed"
    assert [s["id"] for s in bs.list_sets(tmp_path, complete_only=True)] == ["llmops_20260131_020000"]
    assert [s["status"] for s in bs.list_sets(tmp_path)] == ["success", "failed"]
    assert bs.resolve_set(tmp_path) == str(tmp_path / "llmops_20260131_020000")


def test_finalize_refuses_status_mismatch_and_missing_sums(tmp_path):
    partial = bs.begin_set(tmp_path, "llmops", T0)
    with pytest.raises(bs.BackupSetError):
        bs.finalize_set(partial, tmp_path, "success")
    bs.write_manifest(partial, {"status": "failed"})
    with pytest.raises(bs.BackupSetError, match="says status"):
        bs.finalize_set(partial, tmp_path, "success")


def test_folders_without_manifest_are_ignored(tmp_path):
    (tmp_path / "llmops_20250101_000000").mkdir()
    (tmp_path / "llmops_20250102_000000").mkdir()
    (tmp_path / "llmops_20250102_000000" / "backup_manifest.json").write_text("{not json")
    assert bs.list_sets(tmp_path) == []


def test_verify_detects_flip_missing_extra(tmp_path):
    path = make_set(tmp_path, T0)
    target = os.path.join(path, "mariadb/full.mbstream.zst")
    data = bytearray(open(target, "rb").read())
    data[10] ^= 0x01
    open(target, "wb").write(bytes(data))
    result = bs.verify_set(path)
    assert not result["ok"] and result["mismatched"] == ["mariadb/full.mbstream.zst"]
    os.unlink(os.path.join(path, "postgres/app.dump.zst"))
    open(os.path.join(path, "stray.txt"), "w").write("?")
    result = bs.verify_set(path)
    assert result["missing"] == ["postgres/app.dump.zst"] and result["extra"] == ["stray.txt"]
    os.unlink(os.path.join(path, "SHA256SUMS"))
    assert bs.verify_set(path)["errors"]
    assert not bs.verify_set(tmp_path / "nope")["ok"]


def test_verify_detects_manifest_tampering(tmp_path):
    path = make_set(tmp_path, T0)
    mpath = os.path.join(path, "backup_manifest.json")
    text = open(mpath).read().replace('"success"', '"succes2"', 1)
    open(mpath, "w").write(text)
    assert bs.verify_set(path)["mismatched"] == ["backup_manifest.json"]


def test_lock_excludes_second_holder(tmp_path):
    with bs.SetLock(tmp_path) as lock:
        assert open(lock.path).read().strip() == str(os.getpid())
        code = "import sys; from module_utils import llmops_backupset as b; b.SetLock(sys.argv[1]).acquire()"
        other = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                               cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
        assert other.returncode != 0
        assert f"another backup run holds {tmp_path}/.lock (pid {os.getpid()})" in other.stderr
    with bs.SetLock(tmp_path):
        pass
    held = subprocess.run(["flock", "-n", str(tmp_path / ".lock"), "true"])
    assert held.returncode == 0


def test_symbolic_links_are_recorded_by_target_and_verified(tmp_path):
    root = tmp_path / "backups"
    partial = bs.begin_set(root, "llmops", T0)
    os.unlink(os.path.join(partial, bs.OWNER))
    os.rmdir(os.path.join(partial, bs.COMPONENTS_DIR))
    os.makedirs(os.path.join(partial, "uploads", "docs"))
    with open(os.path.join(partial, "uploads", "docs", "a.txt"), "wb") as handle:
        handle.write(b"a")
    os.symlink("docs/a.txt", os.path.join(partial, "uploads", "link-to-a"))
    os.symlink("missing-target", os.path.join(partial, "uploads", "dangling"))
    os.symlink("docs", os.path.join(partial, "uploads", "docs-link"))
    manifest = {"id": "llmops_20260131_020000", "status": "success", "components": {}}
    bs.write_manifest(partial, manifest)
    path = bs.finalize_set(partial, str(root), "success")
    check = subprocess.run(["sha256sum", "-c", "--strict", "SHA256SUMS"], cwd=path, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert {link["path"]: link["target"] for link in bs.load_manifest(path)["links"]} == {
        "uploads/dangling": "missing-target", "uploads/docs-link": "docs", "uploads/link-to-a": "docs/a.txt"}
    assert bs.verify_set(path)["ok"]
    os.unlink(os.path.join(path, "uploads", "link-to-a"))
    os.symlink("elsewhere", os.path.join(path, "uploads", "link-to-a"))
    result = bs.verify_set(path)
    assert not result["ok"] and result["mismatched"] == ["uploads/link-to-a"]


@pytest.mark.parametrize(("expected", "actual", "only", "problems"), [
    ({"db": {"tables": {"t": {"rows": 1}}}}, {"db": {"tables": {"t": {"rows": 1}}}}, False, []),
    ({"db": {"tables": {"t": {"rows": 1}}}}, {"db": {"tables": {"t": {"rows": 2}}}}, False,
     ["db.tables.t.rows: 2, expected 1"]),
    ({"db": {"views": 1}}, {}, False, ['db: missing, expected {"views": 1}']),
    ({}, {"extra": {}}, False, ["extra: not in the backup"]),
    ({"db": {"views": 1}}, {"db": {"views": 1}, "other": {}}, True, []),
    ({"0": {"keys": 3}}, {"0": {"keys": 2}}, False, ["0.keys: 2, expected 3"]),
])
def test_diff_fingerprints(expected, actual, only, problems):
    assert bs.diff_fingerprints(expected, actual, only_expected=only) == problems
