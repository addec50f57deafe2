"""Archived MariaDB binary logs: deleted after the retention, never while a remaining set needs them."""

from __future__ import annotations

import datetime
import os

from ansible.module_utils import llmops_backupset as bs
from ansible.module_utils.llmops_mariadb import prune_binlogs

NOW = datetime.datetime(2026, 11, 23, 3, 0, tzinfo=datetime.UTC)


def archived(archive, name, age_days):
    path = archive / f"{name}.zst"
    path.write_bytes(b"x")
    (archive / f"{name}.zst.sha256").write_text("0  x\n")
    stamp = (NOW - datetime.timedelta(days=age_days)).timestamp()
    os.utime(path, (stamp, stamp))


def a_set(root, when, binlog_file):
    partial = bs.begin_set(root, "llmops", when)
    os.unlink(os.path.join(partial, bs.OWNER))
    os.rmdir(os.path.join(partial, bs.COMPONENTS_DIR))
    bs.write_manifest(partial, {"id": os.path.basename(partial)[1:-8], "status": "success",
                                "started": bs.isoformat(when), "ended": bs.isoformat(when),
                                "components": {"mariadb": {"status": "success", "binlog": {"file": binlog_file,
                                                                                          "position": 4}}}})
    bs.finalize_set(partial, str(root), "success")


def test_old_logs_go_unless_a_set_needs_them(tmp_path):
    root, archive = tmp_path / "backups", tmp_path / "backups" / "binlogs"
    archive.mkdir(parents=True)
    for number, age in [(1, 40), (2, 30), (3, 20), (4, 16), (5, 10), (6, 1)]:
        archived(archive, f"mysql-bin.{number:06d}", age)
    a_set(root, NOW - datetime.timedelta(days=18), "mysql-bin.000004")  # a kept set needs 4 onwards
    dry = prune_binlogs(str(root), str(archive), 14, now=NOW, dry_run=True)
    assert dry["deleted"] == ["mysql-bin.000001", "mysql-bin.000002", "mysql-bin.000003"]
    assert dry["oldest_needed"] == "mysql-bin.000004" and (archive / "mysql-bin.000001.zst").exists()
    done = prune_binlogs(str(root), str(archive), 14, now=NOW)
    assert done["deleted"] == dry["deleted"]
    assert sorted(p.name for p in archive.iterdir() if p.suffix == ".zst") == [
        f"mysql-bin.{n:06d}.zst" for n in (4, 5, 6)]
    assert not (archive / "mysql-bin.000001.zst.sha256").exists()


def test_without_sets_only_age_counts(tmp_path):
    archive = tmp_path / "binlogs"
    archive.mkdir()
    archived(archive, "mysql-bin.000001", 20)
    archived(archive, "mysql-bin.000002", 2)
    assert prune_binlogs(str(tmp_path), str(archive), 14, now=NOW)["deleted"] == ["mysql-bin.000001"]
