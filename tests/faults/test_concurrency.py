"""Fault matrix, runs that overlap on one backup root (issue 13, item 6): two backups, a backup during a restore, a
restore during a backup, retention during a restore - each with real ansible-playbook processes.

One host-wide rule, with the owner identity of the backup's partial sets (the outermost ansible-playbook, its
start time, the boot): the second run exits at once saying what runs and what to do; the first one is caught in
the middle (SIGSTOP: alive, doing nothing) for as long as the check takes, then finishes, and what it wrote
verifies. A dry-run restore takes nothing but reports what is in progress; retention keeps the sets a live
restore reads; a record whose run died is removed and the next run proceeds.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from pathlib import Path

import pytest

from module_utils import llmops_backupset as bs
from module_utils.llmops_layout import layout_path
from tests.faults import faultkit as fk

pytestmark = pytest.mark.lab


@pytest.fixture(autouse=True)
def _drop_the_gib(tmp_path):
    yield
    subprocess.run(["rm", "-rf", str(tmp_path / "src"), str(tmp_path / "backups")], check=False)


def source(tmp_path: Path, big: int = 0) -> Path:
    """An uploads tree; ``big``: a sparse file of that size, so that the backup streams for a while."""
    src = tmp_path / "src"
    (src / "docs").mkdir(parents=True, exist_ok=True)
    (src / "docs" / "a.txt").write_text("a document\n")
    if big:
        with open(src / "big.bin", "wb") as handle:
            handle.truncate(big)
    return src


def backup_args(root: Path, src: Path) -> list[str]:
    return ["-e", f"backup_root={root}", "-e", f"backup_metrics_dir={root.parent / 'metrics'}", "-e",
            "components=uploads", "-e", f"app_uploads_path={src}"]


def restore_args(root: Path, target: Path, set_id: str, *extra: str) -> list[str]:
    return ["-e", f"backup_root={root}", "-e", "components=uploads", "-e", f"app_uploads_path={target}",
            "-e", f"backup_id={set_id}", *extra]


def one_set(tmp_path: Path, root: Path, src: Path, name: str) -> str:
    rc, out = fk.run_playbook("backup.yml", tmp_path / f"{name}.log", secrets.token_hex(8), *backup_args(root, src))
    assert rc == 0, out[-5000:]
    return os.readlink(root / "latest")


def target_with_data(tmp_path: Path) -> Path:
    target = tmp_path / "live-uploads"
    (target / "docs").mkdir(parents=True)
    (target / "docs" / "live.txt").write_text("what the application holds now\n")
    return target


def assert_set_verifies(root: Path, set_id: str) -> None:
    assert fk.manifest(root / set_id)["status"] == "success"
    check = fk.sha256sum_ok(root / set_id)
    assert check.returncode == 0, check.stdout + check.stderr
    assert bs.verify_set(root / set_id, allow_unauthenticated=True)["ok"]


class Paused:
    """A run started, caught once ``ready(root)`` is true, and paused (SIGSTOP) until the block ends; then
    resumed and waited for (``rc``, ``out``)."""

    def __init__(self, tmp_path: Path, playbook: str, ready, what: str, *extra: str):
        self.token = secrets.token_hex(8)
        self.log = tmp_path / f"first-{playbook}.log"
        self.proc = fk.start_playbook(playbook, self.log, self.token, *extra)
        self.ready, self.what = ready, what
        self.rc = self.out = None

    def __enter__(self):
        try:
            fk.wait_for(self.ready, 300, self.what, proc=self.proc, log=self.log)
            fk.pause_run(self.proc)
            assert self.ready(), f"the first run got past {self.what} before it was paused"
        except BaseException:
            fk.kill_run(self.proc, self.token)
            raise
        return self

    def __exit__(self, *exc):
        fk.resume_run(self.proc)
        try:
            self.rc = self.proc.wait(timeout=600)
        finally:
            if self.proc.poll() is None:
                fk.kill_run(self.proc, self.token)
        self.out = self.log.read_text(errors="replace")
        return False


def test_two_backups_at_once(tmp_path):
    """The second backup exits at once naming the first one's partial and what to do; the first finishes and its
    set verifies and restores in a dry run."""
    root = tmp_path / "backups"
    src = source(tmp_path, big=512 * 1024 ** 2)
    with Paused(tmp_path, "backup.yml", lambda: fk.partials(root), "the first backup's partial",
                *backup_args(root, src)) as first:
        partial = fk.partials(root)[0]
        rc, out = fk.run_playbook("backup.yml", tmp_path / "second.log", secrets.token_hex(8), *backup_args(root, src))
        assert rc != 0, out[-5000:]
        assert "another backup run looks active" in out and str(partial) in out and "Wait for it to end" in out
        assert fk.partials(root) == [partial]  # the second left nothing behind
    assert first.rc == 0, first.out[-5000:]
    set_id = os.readlink(root / "latest")
    assert fk.looks_complete(root) == [set_id] and fk.partials(root) == []
    assert_set_verifies(root, set_id)
    rc, out = fk.run_playbook("restore.yml", tmp_path / "dry.log", secrets.token_hex(8),
                              *restore_args(root, tmp_path / "nowhere", set_id, "-e", "dry_run=true"))
    assert rc == 0, out[-5000:]


def test_a_backup_during_a_restore(tmp_path):
    """While a restore runs, a backup exits at once naming the restore and what to do, and leaves no partial;
    the restore finishes, releases its record, and the next backup proceeds."""
    root = tmp_path / "backups"
    src = source(tmp_path)
    set_id = one_set(tmp_path, root, src, "seed")
    target = target_with_data(tmp_path)
    lock = Path(layout_path(str(root), "restore_owner"))
    with Paused(tmp_path, "restore.yml", lock.exists, "the restore's record",
                *restore_args(root, target, set_id, "-e", "confirm=yes")):
        record = json.loads(lock.read_text())
        assert record["sets"] == [set_id] and record["components"] == ["uploads"]
        assert record["pid_cmd"] == "ansible-playbook" and record["kind"] == "restore"
        rc, out = fk.run_playbook("backup.yml", tmp_path / "during.log", secrets.token_hex(8),
                                  *backup_args(root, src))
        assert rc != 0, out[-5000:]
        assert f"a restore of {set_id} (components uploads" in out and "is running on this host" in out
        assert "wait for the restore to end, then run the backup again" in out
        assert fk.partials(root) == [] and os.readlink(root / "latest") == set_id
    assert not lock.exists()
    assert fk.tree_digest(target) == fk.tree_digest(src)
    rc, out = fk.run_playbook("backup.yml", tmp_path / "after.log", secrets.token_hex(8), *backup_args(root, src))
    assert rc == 0, out[-5000:]
    assert os.readlink(root / "latest") != set_id


def test_a_restore_during_a_backup(tmp_path):
    """While a backup runs, a real restore exits before touching anything, naming the backup and what to do;
    a dry run proceeds, takes nothing and reports the backup; after the backup, the restore runs."""
    root = tmp_path / "backups"
    src = source(tmp_path)
    set_id = one_set(tmp_path, root, src, "seed")
    (src / "big.bin").write_bytes(b"")
    os.truncate(src / "big.bin", 512 * 1024 ** 2)
    target = target_with_data(tmp_path)
    before = fk.tree_digest(target)
    lock = Path(layout_path(str(root), "restore_owner"))
    with Paused(tmp_path, "backup.yml", lambda: fk.partials(root), "the backup's partial",
                *backup_args(root, src)) as first:
        partial = fk.partials(root)[0]
        rc, out = fk.run_playbook("restore.yml", tmp_path / "real.log", secrets.token_hex(8),
                                  *restore_args(root, target, set_id, "-e", "confirm=yes"))
        assert rc != 0, out[-5000:]
        assert "cannot start: a backup run is in progress" in out and str(partial) in out
        assert "wait for the backup to end" in out and "then run the restore again" in out
        assert fk.tree_digest(target) == before and not lock.exists()
        rc, out = fk.run_playbook("restore.yml", tmp_path / "dry.log", secrets.token_hex(8),
                                  *restore_args(root, target, set_id, "-e", "dry_run=true"))
        assert rc == 0, out[-5000:]
        assert "in progress on" in out and str(partial) in out and "a real restore refuses to start" in out
        assert not lock.exists() and fk.tree_digest(target) == before
    assert first.rc == 0, first.out[-5000:]
    assert_set_verifies(root, os.readlink(root / "latest"))
    rc, out = fk.run_playbook("restore.yml", tmp_path / "after.log", secrets.token_hex(8),
                              *restore_args(root, target, set_id, "-e", "confirm=yes"))
    assert rc == 0, out[-5000:]
    assert not lock.exists() and (target / "docs" / "a.txt").exists() and not (target / "big.bin").exists()


def test_retention_during_a_restore_keeps_the_set_being_restored(tmp_path):
    """Retention that would delete the set being restored keeps it while the restore runs, and says why; the
    restore finishes from it; the next clean-up deletes it."""
    root = tmp_path / "backups"
    src = source(tmp_path)
    older = one_set(tmp_path, root, src, "older")
    newer = one_set(tmp_path, root, src, "newer")
    assert older != newer
    policy = json.dumps({"backup_root": str(root), "backup_retention": {
        "daily_days": 0, "weekly": 0, "monthly": 0, "mariadb_incremental_days": 0, "binlog_days": 14}})
    target = target_with_data(tmp_path)
    lock = Path(layout_path(str(root), "restore_owner"))
    with Paused(tmp_path, "restore.yml", lock.exists, "the restore's record",
                *restore_args(root, target, older, "-e", "confirm=yes")) as restore:
        rc, out = fk.run_playbook("cleanup.yml", tmp_path / "cleanup.log", secrets.token_hex(8), "-e", policy)
        assert rc == 0, out[-5000:]
        assert f"kept {older}, which a restore in progress reads" in out
        assert (root / older / bs.MANIFEST).exists() and fk.looks_complete(root) == [older, newer]
    assert restore.rc == 0, restore.out[-5000:]
    assert fk.tree_digest(target) == fk.tree_digest(src)
    assert_set_verifies(root, older)
    rc, out = fk.run_playbook("cleanup.yml", tmp_path / "cleanup-after.log", secrets.token_hex(8), "-e", policy)
    assert rc == 0, out[-5000:]
    assert fk.looks_complete(root) == [newer]


def test_a_restore_that_died_does_not_block_the_next_run(tmp_path):
    """A restore killed (SIGKILL) while it holds its record: the next backup sees that its owner is gone,
    removes the record, says so and proceeds."""
    root = tmp_path / "backups"
    src = source(tmp_path)
    set_id = one_set(tmp_path, root, src, "seed")
    lock = Path(layout_path(str(root), "restore_owner"))
    token = secrets.token_hex(8)
    proc = fk.start_playbook("restore.yml", tmp_path / "killed.log", token,
                             *restore_args(root, target_with_data(tmp_path), set_id, "-e", "confirm=yes"))
    try:
        fk.wait_for(lock.exists, 300, "the restore's record", proc=proc, log=tmp_path / "killed.log")
    finally:
        fk.kill_run(proc, token)
    assert lock.exists()
    state = bs.assess_restore(str(root))
    assert state["owner"] == "dead" and not state["active"], state
    rc, out = fk.run_playbook("backup.yml", tmp_path / "next.log", secrets.token_hex(8), *backup_args(root, src))
    assert rc == 0, out[-5000:]
    assert "removed the record of a restore that died" in out and str(lock) in out
    assert not lock.exists() and os.readlink(root / "latest") != set_id
