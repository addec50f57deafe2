"""playbooks/restore.yml for MariaDB on the live lab: verify first, refuse without confirm=yes,
restore a damaged server to data equal to the backup, stop at a point in time between two
transactions, and catch a corrupted artefact before anything is stopped."""

from __future__ import annotations

import datetime
import json
import secrets
import subprocess
import time

import pytest
from ansible.module_utils.llmops_exec import ExecTarget
from ansible.module_utils.llmops_mariadb import fingerprint

from tests.conftest import make_set, run_module, run_playbook

pytestmark = pytest.mark.lab


def started_at(container: str) -> str:
    return subprocess.run(["docker", "inspect", "-f", "{{.State.StartedAt}}", container], capture_output=True,
                          text=True, check=True).stdout.strip()


def backup_set_with_mariadb(root) -> dict:
    return make_set(root, {"mariadb": ("mariadb_backup", {"backup_type": "full", "backup_root": str(root)})})


def restore(root, *extra: str, check: bool = False):
    return run_playbook("restore.yml", "-e", f"backup_root={root}", "-e", "components=mariadb", *extra, check=check)


@pytest.fixture()
def own_db(lab):
    db = f"t_rt_{secrets.token_hex(4)}"
    lab.mariadb(f"CREATE DATABASE {db}")
    lab.mariadb("CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(50)) ENGINE=InnoDB; "
                "INSERT INTO t SELECT seq, CONCAT('row ', seq) FROM seq_1_to_200;", db)
    yield db
    lab.mariadb(f"DROP DATABASE IF EXISTS {db}")


def test_refused_and_dry_run_restores_change_nothing(lab, own_db, tmp_path):
    root = tmp_path / "backups"
    backup_set_with_mariadb(root)
    before = started_at(lab.containers["mariadb"])
    lab.mariadb("DELETE FROM t WHERE id > 100", own_db)
    dry = restore(root, "-e", "dry_run=true")
    assert "services that stop: mariadb" in dry.stdout and "unpack and prepare" in dry.stdout
    refused = restore(root)
    assert refused.returncode != 0 and "Refusing to restore" in refused.stdout
    assert started_at(lab.containers["mariadb"]) == before
    assert lab.mariadb("SELECT COUNT(*) FROM t", own_db) == [["100"]]


def test_restore_brings_a_damaged_server_back_to_the_backup(lab, own_db, tmp_path):
    root = tmp_path / "backups"
    source = ExecTarget(lab.containers["mariadb"])
    original = fingerprint(source, {"user": "root"})
    final = backup_set_with_mariadb(root)
    assert final["manifest"]["components"]["mariadb"]["fingerprint"] == original
    # damage: rows gone, a table dropped, a row changed
    lab.mariadb("DELETE FROM documents WHERE id <= 500; UPDATE users SET name = 'damaged' WHERE id = 1;", "llmops_app")
    lab.mariadb("DROP TABLE t", own_db)
    assert fingerprint(source, {"user": "root"}) != original
    proc = restore(root, "-e", "confirm=yes", "-e", "incident='test damage'")
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert fingerprint(source, {"user": "root"}) == original
    assert lab.mariadb("SELECT name FROM users WHERE id = 1", "llmops_app") == [["사용자 1 — Ünïcödé ✓"]]
    # the safety copy, the audit line and the recovery record exist
    assert list((lab.stack_root.parent / "data" / "appdb").glob("mariadb.pre-restore-*"))
    audit = [json.loads(line) for line in (root / "audit.log").read_text().splitlines()]
    assert audit[-1]["action"] == "restore" and audit[-1]["result"] == "success"
    record = next((root / "recovery-records").glob("*.md")).read_text()
    assert final["set_id"] in record and "SUCCESS" in record and "test damage" in record


def test_point_in_time_restore_stops_between_two_transactions(lab, own_db, tmp_path):
    root = tmp_path / "backups"
    backup_set_with_mariadb(root)
    lab.mariadb("INSERT INTO t VALUES (1001, 'before the target')", own_db)
    time.sleep(2)
    target = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    time.sleep(2)
    lab.mariadb("INSERT INTO t VALUES (1002, 'after the target')", own_db)
    archived = run_module("mariadb_backup", {"backup_type": "binlog", "backup_root": str(root)})
    assert not archived.get("failed"), archived.get("msg")
    proc = restore(root, "-e", f"target_time={target:%Y-%m-%dT%H:%M:%SZ}", "-e", "confirm=yes")
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert lab.mariadb("SELECT id FROM t WHERE id > 1000 ORDER BY id", own_db) == [["1001"]]
    assert lab.mariadb("SELECT COUNT(*) FROM t", own_db) == [["201"]]
    # the server's binlog numbering restarted: the old timeline's archive was moved aside, not mixed
    assert not (root / "binlogs").exists() and len(list(root.glob("binlogs.pre-restore-*"))) == 1


def test_a_corrupted_artefact_is_caught_before_anything_stops(lab, own_db, tmp_path):
    root = tmp_path / "backups"
    final = backup_set_with_mariadb(root)
    artefact = next((root / final["set_id"] / "mariadb").glob("*.zst"))
    data = bytearray(artefact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    artefact.write_bytes(bytes(data))
    before = started_at(lab.containers["mariadb"])
    dry = restore(root, "-e", "dry_run=true")
    assert dry.returncode != 0 and "fails verification" in dry.stdout
    real = restore(root, "-e", "confirm=yes")
    assert real.returncode != 0 and "fails verification" in real.stdout
    assert started_at(lab.containers["mariadb"]) == before
    assert lab.mariadb("SELECT COUNT(*) FROM t", own_db) == [["200"]]
