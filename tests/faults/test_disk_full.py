"""Fault matrix, the backup volume fills (issue 13, item 2): a small tmpfs mounted as the backup root, full
during a run or before it begins.

The run fails with a message naming the lack of space, the volume and what to do next (how much to free);
its partial set is removed (an artefact cut short by a full disk cannot be trusted, and it holds the space
the next run needs); the older sets are intact and ``latest`` still names the newest good one; the
``llmops_backup_storage_full`` metric and a Critical alert are emitted. Once space is freed, the next run
succeeds and the metric goes back to 0.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from module_utils import llmops_backupset as bs
from tests.faults import faultkit as fk

NEXT_STEP = ("ran out of space", "was removed", "Free space on", "the next run needs", "run the backup again")


@pytest.fixture()
def volume(tmp_path):
    """A 24 MiB tmpfs as the backup root, unmounted at the end."""
    path = tmp_path / "volume"
    fk.mount_tmpfs(path, "24m")
    yield path
    fk.umount(path)


def metric(text: str, name: str) -> float:
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")]
    assert len(values) == 1, f"{name} not in the metrics:\n{text}"
    return values[0]


def assert_message_says_what_to_do(text: str, root) -> None:
    for words in NEXT_STEP:
        assert words in text, f"{words!r} missing from: {text[-3000:]}"
    assert str(root) in text

def backup_on_full_volume(root: Path, tmp_path: Path, extra: list[str], metrics: Path) -> tuple[int, str, list]:
    """A backup run into ``root`` with alerts sent to a webhook of the test: ``(returncode, output, alerts)``."""
    hook = fk.Webhook()
    try:
        rc, out = fk.run_backup(root, tmp_path / "full.log", secrets.token_hex(8), *extra, "-e",
                                f"alert_webhook_url={hook.url}", metrics=metrics)
    finally:
        hook.close()
    return rc, out, hook.received


def assert_storage_full_reported(metrics: Path, alerts: list, root: Path) -> None:
    """The storage-full metric with the bytes needed, the failed-run metric and one Critical alert naming ``root``."""
    prom = (metrics / "llmops_backup.prom").read_text()
    assert metric(prom, "llmops_backup_storage_full") == 1.0
    assert metric(prom, "llmops_backup_storage_needed_bytes") > 0
    assert metric(prom, "llmops_backup_set_last_run_success") == 0.0
    critical = [m["text"] for m in alerts if m["text"].startswith("CRITICAL") and "is FULL" in m["text"]]
    assert len(critical) == 1 and str(root) in critical[0] and "run the backup again" in critical[0], alerts


@pytest.mark.lab
@pytest.mark.parametrize("component", ["uploads", "mariadb", "mariadb-staging"])
def test_the_backup_volume_fills_during_a_run(lab, tmp_path, volume, component):
    root = volume
    metrics = tmp_path / "metrics"
    src = tmp_path / "uploads-src"
    (src / "docs").mkdir(parents=True)
    (src / "docs" / "a.txt").write_text("a document\n")
    base = ["-e", f"app_uploads_path={src}"]
    # the older set: a real uploads backup that fits
    rc, out = fk.run_backup(root, tmp_path / "first.log", secrets.token_hex(8), "-e", "components=uploads", *base,
                            metrics=metrics)
    assert rc == 0, out[-5000:]
    older = os.readlink(root / "latest")
    if component == "uploads":
        with open(src / "big.bin", "wb") as handle:  # more than the volume holds
            handle.truncate(40 * 1024 * 1024)
        extra = ["-e", "components=uploads", *base]
    elif component == "mariadb":  # the MariaDB stream (about 1 MiB compressed) into a volume with less than that left
        with open(root / "other-data.bin", "wb") as handle:
            handle.write(b"\0" * (bs.shutil.disk_usage(root).free - 256 * 1024))
        extra = ["-e", "components=mariadb", "-e", "backup_type=full", *base]
    else:  # the stream fits, unpacking it in the staging folder (mbstream: "Error writing file './...'") does not
        subprocess.run(["mount", "-o", "remount,size=8m", str(root)], check=True)
        extra = ["-e", "components=mariadb", "-e", "backup_type=full", *base]
    rc, out, alerts = backup_on_full_volume(root, tmp_path, extra, metrics)
    assert rc != 0, out[-5000:]
    assert "No space left on device" in out
    failure = [line for line in out.splitlines() if "FAILED" in line and "ran out of space" in line]
    assert failure, out[-6000:]
    assert_message_says_what_to_do(failure[-1], root)
    if component == "mariadb-staging":  # recognised as the backup volume being full, naming the staging folder
        assert "mbstream" in failure[-1] and f"{root}/.staging/mariadb-fingerprint-" in failure[-1], failure[-1]
    # the partial is gone, the older set intact and still latest
    assert fk.partials(root) == []
    assert fk.looks_complete(root) == [older] and os.readlink(root / "latest") == older
    assert fk.sha256sum_ok(root / older).returncode == 0 and bs.verify_set(root / older)["ok"]
    # metric, state, audit line and the Critical alert
    assert_storage_full_reported(metrics, alerts, root)
    state = json.loads((root / ".backup_state.json").read_text())
    assert state["storage_full"]["root"] == str(root) and state["last_successful_set"]["id"] == older
    audit = json.loads((root / "audit.log").read_text().splitlines()[-1])
    assert audit["result"] == "failed" and audit["set"] == state["storage_full"]["set_id"]
    assert "ALERT: backup storage" in out

    # space freed (uploads: the big file is gone again; MariaDB: the volume grown, as its backup also unpacks the
    # uncompressed database on it to check it): the next run succeeds and the metric goes back to 0
    if component == "uploads":
        (src / "big.bin").unlink()
    else:
        if component == "mariadb":
            (root / "other-data.bin").unlink()
        subprocess.run(["mount", "-o", "remount,size=600m", str(root)], check=True)
    rc, out = fk.run_backup(root, tmp_path / "after.log", secrets.token_hex(8), *extra, metrics=metrics)
    assert rc == 0, out[-5000:]
    assert os.readlink(root / "latest") != older
    prom = (metrics / "llmops_backup.prom").read_text()
    assert metric(prom, "llmops_backup_storage_full") == 0.0


FILL = r"""
import errno, sys
with open(sys.argv[1], "wb") as handle:
    try:
        while True:
            handle.write(b"\0" * 65536)
            handle.flush()
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
"""


def test_finalize_that_hits_a_full_volume_removes_its_partial(tmp_path, volume):
    """The components fit, then the volume fills (another writer) before finalize writes the manifest and
    SHA256SUMS: finalize removes the partial and says what to free; the older set stays intact and latest."""
    root = volume
    older = fk.old_set(root)
    out = tmp_path / "result.json"
    tasks = [
        {"name": "begun", "register": "begun", "backup_set": {"command": "begin", "root": str(root)}},
        {"name": "artefact", "ansible.builtin.command": {
            "argv": ["dd", "if=/dev/urandom", "of={{ begun.path }}/app.bin", "bs=1M", "count=4"]}},
        {"name": "component", "register": "component", "backup_set": {
            "command": "component", "root": str(root), "path": "{{ begun.path }}", "component": "app",
            "data": {"status": "success", "files": [{"path": "app.bin"}]}}},
        {"name": "fill", "ansible.builtin.command": {"argv": [sys.executable, "-c", FILL, f"{root}/filler.bin"]}},
        {"name": "final", "register": "final", "backup_set": {
            "command": "finalize", "root": str(root), "path": "{{ begun.path }}", "expected_components": ["app"]}},
        {"name": "dump", "ansible.builtin.copy": {"dest": str(out), "content": "{{ {'begun': begun, 'final': final}"
                                                                               " | to_json }}"}},
    ]
    book = tmp_path / "play.yml"
    book.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False, "tasks": tasks}]))
    env = fk.ansible_env()
    proc = subprocess.run([str(fk.VENV_BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", "-e",
                           f"ansible_python_interpreter={sys.executable}", str(book)], cwd=fk.REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    result = json.loads(out.read_text())
    final = result["final"]
    assert final["status"] == "failed" and final["removed"] and not final["latest"]
    assert final["storage_full"]["root"] == str(root) and final["storage_full"]["written_bytes"] >= 4 * 1024 ** 2
    assert_message_says_what_to_do(final["problems"][0], root)
    assert not os.path.exists(result["begun"]["path"]) and fk.partials(root) == []
    assert fk.looks_complete(root) == [older] and os.readlink(root / "latest") == older
    assert bs.verify_set(root / older)["ok"]


@pytest.mark.lab
def test_a_run_that_begins_on_a_full_volume_reports_it_like_a_fill_during_the_run(lab, tmp_path, volume):
    """The volume is already full when the run begins (begin cannot write the partial's owner record): the run
    fails saying what to free, no partial is left, the older set stays latest, and the storage-full metric
    (with the bytes needed), the Critical alert and the failed-run metric are emitted as for a fill during
    the run; the state file, which the full volume cannot take either, is named in a warning."""
    root = volume
    metrics = tmp_path / "metrics"
    src = tmp_path / "uploads-src"
    (src / "docs").mkdir(parents=True)
    (src / "docs" / "a.txt").write_text("a document\n" * 4096)
    extra = ["-e", "components=uploads", "-e", f"app_uploads_path={src}"]
    rc, out = fk.run_backup(root, tmp_path / "first.log", secrets.token_hex(8), *extra, metrics=metrics)
    assert rc == 0, out[-5000:]
    older = os.readlink(root / "latest")
    subprocess.run([sys.executable, "-c", FILL, f"{root}/filler.bin"], check=True)
    assert bs.shutil.disk_usage(root).free == 0
    rc, out, alerts = backup_on_full_volume(root, tmp_path, extra, metrics)
    assert rc != 0, out[-5000:]
    failure = [line for line in out.splitlines() if "FAILED" in line and "cannot open backup set" in line]
    assert failure, out[-6000:]
    assert_message_says_what_to_do(failure[-1], root)
    assert "the backup state file could not be written (the backup volume is full)" in out
    assert fk.partials(root) == [] and fk.looks_complete(root) == [older] and os.readlink(root / "latest") == older
    assert_storage_full_reported(metrics, alerts, root)
    # space freed: the next run succeeds and the metric goes back to 0
    (root / "filler.bin").unlink()
    rc, out = fk.run_backup(root, tmp_path / "after.log", secrets.token_hex(8), *extra, metrics=metrics)
    assert rc == 0, out[-5000:]
    assert os.readlink(root / "latest") != older
    assert metric((metrics / "llmops_backup.prom").read_text(), "llmops_backup_storage_full") == 0.0
