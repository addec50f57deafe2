"""Fault matrix, a broken MariaDB incremental chain (issue 13, item 4): a missing or damaged incremental refuses the
restore, naming the set and the file; with `-e mariadb_chain_partial=true` the restore brings MariaDB back to the
last complete point of the chain only, and says so.

One chain in the test's own backup root: a full and two incrementals of a database of the test's own, each step
adding 100 rows of its own. Each case damages a copy of that root: (a) the last incremental's artefact is missing,
(b) the middle incremental has one flipped byte. A real partial restore swaps the lab server's datadir, as
tests/integration/test_restore_mariadb.py does: the server comes back with the data of the chain's last complete
point (the other databases as they were minutes before), the test's database is dropped afterwards.
"""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import make_set, run_playbook

pytestmark = pytest.mark.lab

ARTEFACT = "mariadb/mariadb.mbstream.zst"
# case -> (which set of the chain is damaged, how, the set the partial restore stops at, rows it brings back)
CASES = {
    "last_incremental_missing": (2, "missing", 1, 200),
    "middle_incremental_flipped": (1, "flip", 0, 100),
}


def started_at(container: str) -> str:
    return subprocess.run(["docker", "inspect", "-f", "{{.State.StartedAt}}", container], capture_output=True,
                          text=True, check=True).stdout.strip()


@pytest.fixture(scope="module")
def chain(lab, tmp_path_factory):
    """A full and two incrementals, 100 distinct rows more at each step: ``(root, [set ids], database)``."""
    db = f"t_chain_{secrets.token_hex(4)}"
    root = tmp_path_factory.mktemp("chain") / "backups"
    lab.mariadb(f"CREATE DATABASE {db}")
    try:
        lab.mariadb("CREATE TABLE t (id INT PRIMARY KEY, step VARCHAR(20)) ENGINE=InnoDB", db)
        ids = []
        for step, kind in enumerate(["full", "incremental", "incremental"]):
            lab.mariadb(f"INSERT INTO t SELECT seq, 'step {step}' FROM seq_{step * 100 + 1}_to_{step * 100 + 100}", db)
            made = make_set(root, {"mariadb": ("mariadb_backup", {"backup_type": kind, "backup_root": str(root)})},
                            name="chain")
            ids.append(made["set_id"])
            assert made["manifest"]["components"]["mariadb"].get("chain", []) == ids[:-1], made["manifest"]
        yield root, ids, db
    finally:
        lab.mariadb(f"DROP DATABASE IF EXISTS {db}")


def damaged_copy(chain, tmp_path: Path, case: str) -> tuple[Path, str, str]:
    """A copy of the chain's root with the case's damage: ``(root, damaged set id, damaged file)``."""
    root, ids, _db = chain
    index, how, _stop, _rows = CASES[case]
    copy = tmp_path / "backups"
    shutil.copytree(root, copy, symlinks=True)
    path = copy / ids[index] / ARTEFACT
    if how == "missing":
        path.unlink()
    else:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
    return copy, ids[index], ARTEFACT


def restore(root: Path, *extra: str):
    return run_playbook("restore.yml", "-e", f"backup_root={root}", "-e", "components=mariadb",
                        "-e", "restore_keep_safety_copy=false", *extra, check=False)


def rows(lab, db: str) -> list[list[str]]:
    return lab.mariadb("SELECT MIN(id), MAX(id), COUNT(*), COUNT(DISTINCT step) FROM t", db)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_a_broken_chain_is_refused_naming_the_set_and_the_file(lab, chain, tmp_path, case):
    """Dry run and real restore refuse, naming the damaged set and its file; MariaDB is not stopped."""
    root, set_id, rel = damaged_copy(chain, tmp_path, case)
    word = "missing" if CASES[case][1] == "missing" else "checksum mismatch"
    before = started_at(lab.containers["mariadb"])
    for extra in (["-e", "dry_run=true"], ["-e", "confirm=yes"]):
        proc = restore(root, *extra)
        assert proc.returncode != 0, proc.stdout[-3000:]
        assert "cannot go ahead" in proc.stdout, proc.stdout[-3000:]
        assert re.search(rf"set {set_id} fails verification: [^\n]*{word} {re.escape(rel)}", proc.stdout), \
            proc.stdout[-3000:]
        assert "MariaDB | stop the service" not in proc.stdout
    assert started_at(lab.containers["mariadb"]) == before
    assert rows(lab, chain[2]) == [["1", "300", "300", "3"]]


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_mariadb_chain_partial_restores_exactly_the_last_complete_point(lab, chain, tmp_path, case):
    """With mariadb_chain_partial=true the restore brings back exactly the rows up to the last complete set, says so
    in the plan, the summary and the recovery record, and replays no binary log."""
    _root, ids, db = chain
    root, set_id, _rel = damaged_copy(chain, tmp_path, case)
    stop, count = ids[CASES[case][2]], CASES[case][3]
    dry = restore(root, "-e", "dry_run=true", "-e", "mariadb_chain_partial=true")
    assert dry.returncode == 0, dry.stdout[-4000:]
    assert f"MARIADB IS RESTORED ONLY TO {stop}" in dry.stdout, dry.stdout[-4000:]
    # a point in time cannot be combined with it: the binary logs continue from the set asked for, over the gap
    timed = restore(root, "-e", "dry_run=true", "-e", "mariadb_chain_partial=true",
                    "-e", "target_time=2099-01-01T00:00:00Z")
    assert timed.returncode != 0 and "cannot be combined with target_time" in timed.stdout, timed.stdout[-3000:]
    proc = restore(root, "-e", "confirm=yes", "-e", "mariadb_chain_partial=true")
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert rows(lab, db) == [["1", str(count), str(count), str(count // 100)]]
    assert re.search(r"MariaDB \| replay the binary logs[^\n]*\n\s*skipping:", proc.stdout), proc.stdout[-4000:]
    assert f"mariadb ONLY TO {stop} (partial chain, not {ids[-1]})" in proc.stdout, proc.stdout[-4000:]
    record = next((root / "recovery-records").glob("*.md")).read_text()
    assert "MariaDB restored ONLY to the last complete point of its chain**: " + stop in record, record
    assert f"NOT to {ids[-1]}" in record and set_id in record and "-e mariadb_chain_partial=true" in record
    assert f"PARTIAL CHAIN: restored to {stop}" in record, record
