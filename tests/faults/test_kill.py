"""Fault matrix, a backup run killed with SIGKILL (issue 13, item 1): a crash or the OOM killer, in the middle of a
component's stream and during the finalize step.

Each time: nothing is left that looks like a complete set (no new folder without a leading dot, ``latest``
unchanged), the owner record of the partial names a process that is gone, and the next run proceeds at once
(before this was fixed it refused for stale_after = 2 h), removes the dead partial, says so, and writes a set
that verifies.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from module_utils import llmops_backupset as bs
from tests.conftest import REPO, run_module
from tests.faults import faultkit as fk

BIG = 1024 ** 3  # a sparse GiB: rsync reads and writes every byte of it, finalize hashes it


@pytest.fixture(autouse=True)
def _drop_the_gib(tmp_path):
    """The GiB-sized sources and sets do not outlive the test (pytest keeps its last tmp folders)."""
    yield
    subprocess.run(["rm", "-rf", str(tmp_path / "uploads-src"), str(tmp_path / "backups")], check=False)


def uploads_source(tmp_path: Path, big: int = BIG) -> Path:
    src = tmp_path / "uploads-src"
    (src / "docs").mkdir(parents=True)
    (src / "docs" / "a.txt").write_text("a document\n")
    with open(src / "big.bin", "wb") as handle:
        handle.truncate(big)
    return src


def selection(tmp_path: Path, component: str) -> list[str]:
    extra = ["-e", f"components={component}"]
    if component == "mariadb":
        extra += ["-e", "backup_type=full"]
    if component == "uploads":
        extra += ["-e", f"app_uploads_path={uploads_source(tmp_path)}"]
    return extra


def assert_nothing_looks_complete(root: Path, previous: str) -> Path:
    """Only the previous set looks complete, ``latest`` still names it, one partial is left: returned."""
    assert fk.looks_complete(root) == [previous]
    shared = {"binlogs", "models", "configs.git-worktree", "recovery-records", "drills"}  # the layout's, not sets
    assert sorted(p.name for p in root.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")
                  and p.name not in shared) == [previous]
    assert [s["id"] for s in bs.list_sets(root)] == [previous]
    assert os.readlink(root / "latest") == previous
    left = fk.partials(root)
    assert len(left) == 1, left
    return left[0]


def assert_next_run_cleans_up(lab, tmp_path: Path, root: Path, killed: Path, previous: str, extra: list[str]):
    """The next run proceeds at once, removes the dead partial, says so, and its set verifies."""
    state = bs.assess_partial(str(killed), 7200)
    assert state["owner"] == "dead" and state["abandoned"] and "is gone" in state["why"], state
    started = time.monotonic()
    rc, out = fk.run_backup(root, tmp_path / "next.log", secrets.token_hex(8), *extra)
    assert rc == 0, out[-6000:]
    assert time.monotonic() - started < 600
    assert "removed the partial set(s) of runs that died" in out and str(killed) in out, out[-6000:]
    assert not killed.exists() and fk.partials(root) == []
    new = (root / "latest").resolve()
    assert new.name != previous and fk.manifest(new)["status"] == "success"
    check = fk.sha256sum_ok(new)
    assert check.returncode == 0, check.stdout + check.stderr
    verified = run_module("backup_set", {"command": "verify", "root": str(root)})
    assert not verified.get("failed"), verified.get("msg")
    assert verified["set_id"] == new.name and verified["verify"]["ok"] and verified["verify"]["checked"] > 1
    assert fk.looks_complete(root) == sorted([previous, new.name])
    assert bs.verify_set(root / previous)["ok"]


@pytest.mark.lab
@pytest.mark.parametrize("component", ["mariadb", "postgres", "redis", "uploads"])
def test_sigkill_while_a_component_streams(lab, tmp_path, component):
    root = tmp_path / "backups"
    previous = fk.old_set(root)
    extra = selection(tmp_path, component)
    token = secrets.token_hex(8)
    log = tmp_path / "killed.log"
    proc = fk.start_backup(root, log, token, *extra)
    try:
        seen = fk.wait_for(lambda: fk.in_flight(root, component), 300, f"{component}'s artefact to be streamed",
                           proc=proc, log=log)
        if component in ("mariadb", "uploads"):  # the lab's other stores dump in a blink: seen in flight is enough
            path, size = max(seen.items(), key=lambda item: item[1])
            fk.wait_for(lambda: fk.in_flight(root, component).get(path, -1) > size, 60, f"{path} to grow",
                        proc=proc, log=log)
    finally:
        fk.kill_run(proc, token)
    assert proc.returncode == -signal.SIGKILL
    killed = assert_nothing_looks_complete(root, previous)
    assert not (killed / bs.MANIFEST).exists() and not (killed / bs.SUMS).exists()
    record = bs.read_json(killed / bs.OWNER)
    assert record["pid"] == proc.pid and record["pid_cmd"] == "ansible-playbook"
    assert_next_run_cleans_up(lab, tmp_path, root, killed, previous, extra)


@pytest.mark.lab
def test_a_component_job_that_outlives_its_killed_run_keeps_the_partial(lab, tmp_path):
    """ansible daemonises the component jobs: SIGKILL on ansible-playbook's process group alone leaves them
    writing. While they do, the partial is not removed (its owner is dead, but processes still use it); once
    they end, the next run removes it at once."""
    root = tmp_path / "backups"
    previous = fk.old_set(root)
    src = uploads_source(tmp_path)
    extra = ["-e", "components=uploads", "-e", f"app_uploads_path={src}"]
    token = secrets.token_hex(8)
    log = tmp_path / "killed.log"
    proc = fk.start_backup(root, log, token, *extra)
    try:
        seen = fk.wait_for(lambda: fk.in_flight(root, "uploads"), 300, "the uploads copy", proc=proc, log=log)
        path, size = max(seen.items(), key=lambda item: item[1])
        fk.wait_for(lambda: fk.in_flight(root, "uploads").get(path, -1) > size, 60, "the copy to grow", proc=proc,
                    log=log)
        fk.kill_run(proc, token, whole=False)
        killed = assert_nothing_looks_complete(root, previous)
        state = bs.assess_partial(str(killed), 7200)
        assert state["owner"] == "dead" and state["users"] and state["active"] and not state["abandoned"], state
        assert "still use the folder" in state["why"]
        assert bs.cleanup_partials(root, 0) == [] and killed.exists()
        fk.wait_for(lambda: not fk.run_pids(token), 300, "the orphaned component job to end", interval=0.5)
    finally:
        fk.kill_run(proc, token)
    os.truncate(src / "big.bin", 4096)  # the next run need not copy the GiB again
    assert_next_run_cleans_up(lab, tmp_path, root, killed, previous, extra)


@pytest.mark.lab
def test_sigkill_during_finalize(lab, tmp_path):
    """Killed while `backup_set command=finalize` hashes the artefacts (a GiB of uploads): the partial keeps its
    owner record, nothing looks complete, the next run removes it at once."""
    root = tmp_path / "backups"
    previous = fk.old_set(root)
    extra = selection(tmp_path, "uploads")
    token = secrets.token_hex(8)
    log = tmp_path / "killed.log"
    proc = fk.start_backup(root, log, token, *extra)

    def finalize_hashing():
        for pid in fk.run_pids(token):
            if "AnsiballZ_backup_set" in fk.cmdline(pid) and any(
                    ".partial/uploads/" in f and f.endswith("big.bin") for f in fk.open_files(pid)):
                return pid
        return None

    try:
        fk.wait_for(finalize_hashing, 600, "finalize to hash the artefacts", interval=0.02, proc=proc, log=log)
    finally:
        fk.kill_run(proc, token)
    killed = assert_nothing_looks_complete(root, previous)
    assert (killed / bs.OWNER).exists() and not (killed / bs.SUMS).exists()
    assert (killed / bs.COMPONENTS_DIR / "uploads.json").exists()  # recorded: finalize had begun
    assert_next_run_cleans_up(lab, tmp_path, root, killed, previous, extra)


# --------------------------------------------------------------------------------------------
# the finalize step itself, killed at each of its points (no lab: the library as backup_set runs it)

FINALIZE = r"""
import os, sys, time
sys.path.insert(0, sys.argv[4])
from module_utils import llmops_backupset as bs
root, point, ready = sys.argv[1], sys.argv[2], sys.argv[3]


def stop():
    open(ready, "w").close()
    time.sleep(300)


me = {"pid": os.getpid(), "pid_start": bs.process_start_time(os.getpid()), "pid_cmd": "ansible-playbook"}
partial = bs.begin_set(root, "llmops", owner=me)
os.makedirs(os.path.join(partial, "uploads"))
with open(os.path.join(partial, "uploads", "a.txt"), "w") as handle:
    handle.write("a")
with open(os.path.join(partial, "uploads", "big.bin"), "wb") as handle:
    handle.truncate(64 * 1024 * 1024)
with open(os.path.join(partial, bs.COMPONENTS_DIR, "uploads.json"), "w") as handle:
    handle.write('{"status": "success"}')
hash_file, sums_problems = bs.hash_file, bs.sums_problems
if point == "hashing":
    bs.hash_file = lambda path, *a, **k: stop() if path.endswith("big.bin") else hash_file(path, *a, **k)
if point == "checked":  # SHA256SUMS read back and found right: the last step before the bookkeeping goes
    bs.sums_problems = lambda *a, **k: (sums_problems(*a, **k), stop())[0]
if point == "renamed":
    bs.update_latest = lambda *a, **k: stop()
# what backup_set command=finalize does
files = bs.hash_set_files(partial)
bs.write_manifest(partial, {"status": "success", "components": {"uploads": {"status": "success"}}}, files=files)
if point == "written":
    stop()
bs.finalize_set(partial, root, "success")
stop()
"""


@pytest.mark.parametrize("point", ["hashing", "written", "checked", "renamed"])
def test_sigkill_at_each_point_of_finalize(tmp_path, point):
    root = tmp_path / "backups"
    previous = fk.old_set(root)
    ready = tmp_path / "ready"
    child = subprocess.Popen([sys.executable, "-c", FINALIZE, str(root), point, str(ready), str(REPO)])
    try:
        fk.wait_for(ready.exists, 60, f"finalize to reach {point}", proc=child)
    finally:
        child.kill()
        child.wait()
    if point == "renamed":
        # past the rename the set is complete and was checked before it; only latest still names the previous
        new = [s for s in bs.list_sets(root) if s["id"] != previous]
        assert len(new) == 1 and new[0]["complete"] and new[0]["status"] == "success"
        assert bs.verify_set(new[0]["path"])["ok"] and not os.path.exists(os.path.join(new[0]["path"], bs.OWNER))
        assert os.readlink(root / "latest") == previous and fk.partials(root) == []
        return
    killed = assert_nothing_looks_complete(root, previous)
    assert (killed / bs.OWNER).exists()
    assert (killed / bs.SUMS).exists() == (point != "hashing")  # a checked SHA256SUMS inside a .partial is no set
    state = bs.assess_partial(str(killed), 7200)
    assert state["owner"] == "dead" and state["abandoned"], state
    assert bs.cleanup_partials(root, 7200) == [str(killed)] and fk.partials(root) == []
    assert [s["id"] for s in bs.list_sets(root)] == [previous] and bs.verify_set(root / previous)["ok"]
