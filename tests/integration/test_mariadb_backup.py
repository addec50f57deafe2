"""MariaDB backups against the lab's real server: full and incremental mariadb-backup streams that
restore with the bare tools (mbstream -x, --prepare, a server started on the result) to data whose
fingerprint equals the source's and the manifest's, and archived binary logs that mariadb-binlog reads."""

from __future__ import annotations

import json
import secrets
import subprocess
import time

import pytest
from ansible.module_utils.llmops_exec import ExecTarget
from ansible.module_utils.llmops_mariadb import SCRATCH_SOCKET, fingerprint, scratch_server

from tests.conftest import make_set, run_module

pytestmark = pytest.mark.lab
IMAGE = "llmops-lab/mariadb:10.11"


def in_tools(host_dir, script):
    """Run a shell script with the image's tools, host_dir mounted at /restore (no secrets involved)."""
    proc = subprocess.run(["docker", "run", "--rm", "-v", f"{host_dir}:/restore", "--entrypoint", "sh", IMAGE,
                           "-c", script], capture_output=True, text=True, errors="replace")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout




@pytest.fixture()
def own_db(lab):
    db = f"t_mb_{secrets.token_hex(4)}"
    lab.mariadb(f"CREATE DATABASE {db} CHARACTER SET utf8mb4")
    lab.mariadb("CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(100), b BLOB) ENGINE=InnoDB; INSERT INTO t "
                "SELECT seq, CONCAT('값 ', seq), UNHEX(SHA2(seq, 256)) FROM seq_1_to_1000;", db)
    yield db
    lab.mariadb(f"DROP DATABASE IF EXISTS {db}")


def backup_into_set(root, backup_type):
    final = make_set(root, {"mariadb": ("mariadb_backup", {"backup_type": backup_type, "backup_root": str(root)})},
                     "mb")
    return final["results"]["mariadb"], final


def test_full_and_incremental_restore_with_bare_tools_to_equal_data(lab, own_db, tmp_path):
    root = tmp_path / "backups"
    source = ExecTarget(lab.containers["mariadb"])
    full, full_set = backup_into_set(root, "full")
    entry = full["component"]
    assert entry["backup_type"] == "full" and int(entry["to_lsn"]) > 0
    assert entry["binlog"]["file"].startswith("mysql-bin.") and entry["binlog"]["position"] > 0
    assert entry["fingerprint"][own_db]["tables"]["t"]["rows"] == 1000
    assert entry["fingerprint"]["llmops_app"]["triggers"] == 1 and entry["fingerprint"]["llmops_app"]["routines"] == 2
    # the set checks with the bare tool
    subprocess.run(["sha256sum", "-c", "--strict", "SHA256SUMS"], cwd=full_set["path"], check=True, capture_output=True)

    time.sleep(1.1)  # set ids have a one-second resolution
    lab.mariadb("INSERT INTO t SELECT seq, 'incremental', NULL FROM seq_1001_to_1500; "
                "UPDATE t SET v = 'changed ✓' WHERE id <= 10;", own_db)
    incr, incr_set = backup_into_set(root, "auto")
    ientry = incr["component"]
    assert ientry["backup_type"] == "incremental"
    assert ientry["parent"] == full_set["set_id"] and ientry["chain"] == [full_set["set_id"]]
    assert ientry["from_lsn"] == entry["to_lsn"]
    # only changed pages (the lab's data is too small to compare the compressed sizes)
    assert ientry["bytes_raw"] < entry["bytes_raw"]
    expected = fingerprint(source, {"user": "root"})
    assert ientry["fingerprint"] == expected

    # restore: mbstream -x, prepare the full, apply the incremental, start a server on it
    work = tmp_path / "restore"
    work.mkdir()
    full_file = f"{full_set['path']}/mariadb/mariadb.mbstream.zst"
    incr_file = f"{incr_set['path']}/mariadb/mariadb.mbstream.zst"
    subprocess.run(["cp", full_file, str(work / "full.zst")], check=True)
    subprocess.run(["cp", incr_file, str(work / "incr.zst")], check=True)
    in_tools(work, "set -e; mkdir /restore/full /restore/incr; "
                   "zstd -dc /restore/full.zst | mbstream -x -C /restore/full; "
                   "zstd -dc /restore/incr.zst | mbstream -x -C /restore/incr; "
                   "mariadb-backup --prepare --target-dir=/restore/full 2>&1 | tail -1; "
                   "mariadb-backup --prepare --target-dir=/restore/full --incremental-dir=/restore/incr 2>&1 | tail -1")
    # a throw-away server of the same image on the prepared datadir (no network, no grants)
    with scratch_server(IMAGE, str(work / "full")) as restored:
        assert fingerprint(restored, {"user": "root", "socket": SCRATCH_SOCKET}) == ientry["fingerprint"]
        rows = restored.text(["mariadb", "--default-character-set=utf8mb4", f"--socket={SCRATCH_SOCKET}", "-N", "-e",
                              f"SELECT v FROM {own_db}.t WHERE id IN (1, 1500) ORDER BY id"])
        assert rows.splitlines() == ["changed ✓", "incremental"]


def test_binlogs_are_archived_checksummed_and_readable(lab, own_db, tmp_path):
    root = tmp_path / "backups"
    lab.mariadb(f"INSERT INTO {own_db}.t VALUES (424242, 'in the binlog', NULL)")
    result = run_module("mariadb_backup", {"backup_type": "binlog", "backup_root": str(root)})
    assert not result.get("failed"), result.get("msg")
    assert result["binlog"]["row_format"] is True
    archived = result["binlog"]["archived"]
    assert archived and all(a["name"] in result["binlog"]["closed"] for a in archived)
    for item in archived:
        subprocess.run(["sha256sum", "-c", item["name"] + ".zst.sha256"], cwd=root / "binlogs", check=True,
                       capture_output=True)
    # the newest archived log holds our row as a ROW event
    newest = archived[-1]["name"]
    subprocess.run(["cp", str(root / "binlogs" / f"{newest}.zst"), str(tmp_path / "log.zst")], check=True)
    decoded = in_tools(tmp_path, "zstd -dc /restore/log.zst > /restore/log && mariadb-binlog -v /restore/log")
    assert "424242" in decoded and "Write_rows" in decoded
    again = run_module("mariadb_backup", {"backup_type": "binlog", "backup_root": str(root)})
    assert {a["name"] for a in again["binlog"]["archived"]}.isdisjoint({a["name"] for a in archived})


def test_a_backup_archives_the_binary_logs_up_to_its_own_position_or_warns(lab, own_db, tmp_path):
    """archive_binlogs (backup.yml): the logs are archived once the stream has ended, beside the artefact's check;
    the backup's own position is in a closed, archived log, so the set can be rolled forward at once. An archive
    that cannot be written warns and leaves the backup complete."""
    root = tmp_path / "backups"
    final = make_set(root, {"mariadb": ("mariadb_backup", {"backup_type": "full", "backup_root": str(root),
                                                           "archive_binlogs": True})}, "mb")
    result = final["results"]["mariadb"]
    position = result["component"]["binlog"]["file"]
    assert "error" not in result["binlog"] and position in result["binlog"]["closed"]
    archived = {a["name"] for a in result["binlog"]["archived"]}
    assert position in archived and (root / "binlogs" / f"{position}.zst").is_file()
    subprocess.run(["sha256sum", "-c", f"{position}.zst.sha256"], cwd=root / "binlogs", check=True, capture_output=True)

    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "binlogs").write_text("a file where the archive folder should be")
    final = make_set(blocked, {"mariadb": ("mariadb_backup", {"backup_type": "full", "backup_root": str(blocked),
                                                              "archive_binlogs": True})}, "mb")
    result = final["results"]["mariadb"]
    assert final["status"] == "success" and result["component"]["status"] == "success"
    assert result["binlog"]["error"] and any("binary logs were not archived" in w for w in result["warnings"])


def test_check_mode_writes_nothing_and_errors_are_actionable(lab, tmp_path):
    dest = tmp_path / "set" / "mariadb"
    result = run_module("mariadb_backup", {"backup_type": "auto", "dest": str(dest), "backup_root": str(tmp_path)},
                        check_mode=True)
    assert result["changed"] is True and result["backup_type"] == "full" and not dest.exists()
    bad = run_module("mariadb_backup", {"backup_type": "incremental", "dest": str(dest), "backup_root": str(tmp_path)})
    assert bad["failed"] and "needs a base" in bad["msg"] and not dest.exists()
    missing = run_module("mariadb_backup", {"backup_type": "full", "dest": str(dest), "backup_root": str(tmp_path),
                                            "container": "no-such-container"})
    assert missing["failed"] and "no-such-container" in missing["msg"]
    assert not list(tmp_path.rglob("*.zst*"))


def test_password_never_shows_in_the_result(lab, tmp_path):
    result = run_module("mariadb_backup", {"backup_type": "full", "dest": str(tmp_path / "m"),
                                           "backup_root": str(tmp_path),
                                           "login_password": "{{ mariadb_root_password }}"})
    assert not result.get("failed"), result.get("msg")
    assert lab.secret("mariadb_root_password") not in json.dumps(result)
