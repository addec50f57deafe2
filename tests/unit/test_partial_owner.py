"""Who owns a .partial folder, and when the next run may remove it (module_utils/llmops_backupset.py:
run_owner, partial_owner, partial_users, assess_partial, cleanup_partials; backup_set command=begin/cleanup).

The owner of a run is its ansible-playbook process, recorded with its start time (field 22 of
/proc/<pid>/stat): a run killed with SIGKILL leaves a partial whose owner is provably gone, and the next
run removes it at once instead of refusing for stale_after seconds.
"""

from __future__ import annotations

import base64
import datetime
import errno
import json
import os
import shlex
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest

from module_utils import llmops_backupset as bs
from tests.conftest import run_module

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"), ANSIBLE_NOCOLOR="1",
           PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
NOW = datetime.datetime.now(datetime.UTC)


def sleeper():
    return subprocess.Popen(["sleep", "300"])


def owned_partial(root, record, when=NOW, name="llmops"):
    """A partial whose owner record is ``record`` (merged over what begin_set writes)."""
    partial = bs.begin_set(root, name, when, owner=record)
    return partial


def gone_pid():
    """A pid that was just used by a process that has ended, with that process's start time."""
    child = sleeper()
    start = bs.process_start_time(child.pid)
    child.kill()
    child.wait()
    return child.pid, start


def test_process_start_time_is_field_22_and_zombies_count_as_gone():
    child = sleeper()
    try:
        start = bs.process_start_time(child.pid)
        fields = open(f"/proc/{child.pid}/stat").read().rsplit(")", 1)[1].split()
        assert start == int(fields[19]) and start > 0
        assert bs.process_start_time(child.pid) == start  # stable
        os.kill(child.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while bs._proc_stat(child.pid)[0] != b"Z" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert bs._proc_stat(child.pid)[0] == b"Z"  # not reaped yet: a zombie
        assert bs.process_start_time(child.pid) is None
    finally:
        child.kill()
        child.wait()
    assert bs.process_start_time(child.pid) is None
    assert bs.process_start_time(os.getpid()) is not None


def chain(*names):
    """Processes whose argv[0] are ``names`` (bash under ``exec -a``), each the parent of the next; the last one
    starts Python, which calls run_owner(). Returns their pids (outside in) and run_owner's answer."""
    code = (f"import json, sys; sys.path.insert(0, {REPO!r}); from module_utils import llmops_backupset as bs; "
            "print(json.dumps(bs.run_owner()))")
    inner = f"echo $$; ({shlex.join([sys.executable, '-c', code])}); true"  # '; true': bash must not exec it
    for name in reversed(names[1:]):
        inner = f"echo $$; (exec -a {shlex.quote(name)} bash -c {shlex.quote(inner)}); true"
    top = f"exec -a {shlex.quote(names[0])} bash -c {shlex.quote(inner)}"
    lines = subprocess.run(["bash", "-c", top], capture_output=True, text=True, timeout=60,
                           check=True).stdout.splitlines()
    assert len(lines) == len(names) + 1, lines
    return [int(pid) for pid in lines[:-1]], json.loads(lines[-1])


def test_run_owner_is_the_main_ansible_playbook_above_the_module():
    # ansible-playbook (main) > ansible-playbook (its worker, a fork: same command line) > sh > the module
    pids, owner = chain("ansible-playbook", "ansible-playbook", "sh")
    assert owner["pid"] == pids[0] and owner["pid_cmd"] == "ansible-playbook" and isinstance(owner["pid_start"], int)
    # only the contiguous chain counts: a module of an outer run that started another ansible-playbook
    pids, owner = chain("ansible-playbook", "python3", "ansible-playbook", "ansible-playbook", "sh")
    assert owner["pid"] == pids[2]
    # no ansible-playbook above (a remote connection, the ad-hoc ansible command, pytest): not determined
    assert chain("ansible", "sh")[1] is None
    assert bs.run_owner() is None


def test_begin_records_host_boot_module_and_run_owner(tmp_path):
    partial = bs.begin_set(tmp_path, "llmops", NOW)
    record = bs.read_json(os.path.join(partial, bs.OWNER))
    assert record["host"] == socket.gethostname() and record["boot_id"] == bs.boot_id()
    assert record["module_pid"] == os.getpid()
    assert record["pid"] is None and record["pid_start"] is None  # pytest runs under no ansible-playbook
    assert bs.partial_owner(partial)[0] == "unknown"


@pytest.mark.parametrize("case", ["alive", "gone", "reused", "rebooted", "other-host", "not-recorded", "old-format",
                                  "no-record"])
def test_partial_owner_states(tmp_path, case):
    me = {"pid": os.getpid(), "pid_start": bs.process_start_time(os.getpid()), "pid_cmd": "ansible-playbook"}
    pid, start = gone_pid()
    records = {
        "alive": (me, "alive", "is running"),
        "gone": ({"pid": pid, "pid_start": start, "pid_cmd": "ansible-playbook"}, "dead", "is gone"),
        "reused": (dict(me, pid_start=me["pid_start"] - 1), "dead", "another process now"),
        "rebooted": (dict(me, boot_id="00000000-dead-beef-0000-000000000000"), "dead", "restarted"),
        "other-host": (dict(me, host="elsewhere.example"), "unknown", "host elsewhere.example"),
        "not-recorded": ({"pid": None, "pid_start": None}, "unknown", "names no run process"),
        # written before this change: pid was the module's own short-lived pid, no start time
        "old-format": ({"pid": pid, "pid_start": None, "ppid": os.getppid()}, "unknown", "names no run process"),
        "no-record": (None, "unknown", "cannot be read"),
    }
    record, state, why = records[case]
    partial = owned_partial(tmp_path, record or {})
    if record is None:
        os.unlink(os.path.join(partial, bs.OWNER))
    got = bs.partial_owner(partial)
    assert got[0] == state and why in got[1], got
    verdict = bs.assess_partial(partial, 7200, NOW)
    assert verdict["owner"] == state
    # active: owner alive, or unknown and young; dead owners are abandoned at once, whatever their age
    assert verdict["active"] == (state == "alive" or state == "unknown")
    assert verdict["abandoned"] == (state == "dead")
    # three hours after now (not after NOW, the time this module was imported: a long session runs it much later)
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=3)
    assert bs.assess_partial(partial, 7200, later)["abandoned"] == (state != "alive")


def test_a_process_still_working_in_the_partial_keeps_it_active(tmp_path):
    pid, start = gone_pid()
    partial = owned_partial(tmp_path, {"pid": pid, "pid_start": start, "pid_cmd": "ansible-playbook"})
    artefact = os.path.join(partial, "postgres.dump.zst.tmp-1")
    # an async component job that outlived its killed run still writes its artefact
    writer = subprocess.Popen([sys.executable, "-c", "import sys, time; f = open(sys.argv[1], 'wb'); "
                               "f.write(b'x'); f.flush(); print('ready', flush=True); time.sleep(300)", artefact],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "ready"
        verdict = bs.assess_partial(partial, 7200, NOW + datetime.timedelta(days=2))
        assert verdict["owner"] == "dead" and verdict["active"] and not verdict["abandoned"]
        assert len(verdict["users"]) == 1 and verdict["users"][0].startswith(f"{writer.pid} (")
        assert "still use the folder" in verdict["why"]
        assert bs.cleanup_partials(tmp_path, 0) == [] and os.path.isdir(partial)
    finally:
        writer.kill()
        writer.wait()
    assert bs.assess_partial(partial, 7200, NOW)["abandoned"]
    assert bs.cleanup_partials(tmp_path, 7200) == [partial] and not os.path.exists(partial)


def test_cleanup_removes_dead_owners_at_once_and_never_a_live_run(tmp_path):
    me = {"pid": os.getpid(), "pid_start": bs.process_start_time(os.getpid()), "pid_cmd": "ansible-playbook"}
    pid, start = gone_pid()
    alive = owned_partial(tmp_path, me, NOW - datetime.timedelta(days=3), name="alive")
    dead = owned_partial(tmp_path, {"pid": pid, "pid_start": start}, NOW, name="dead")
    young = owned_partial(tmp_path, {"host": "elsewhere"}, NOW, name="young")
    old = owned_partial(tmp_path, {"host": "elsewhere"}, NOW - datetime.timedelta(days=3), name="old")
    assert bs.cleanup_partials(tmp_path, 7200, NOW, dry_run=True) == sorted([dead, old])
    assert all(os.path.isdir(p) for p in (alive, dead, young, old))
    assert bs.cleanup_partials(tmp_path, 7200, NOW) == sorted([dead, old])
    assert bs.list_partials(tmp_path) == sorted([alive, young])


def test_begin_set_leaves_no_partial_when_its_owner_record_cannot_be_written(tmp_path, monkeypatch):
    def full(path, obj):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(bs, "write_json", full)
    with pytest.raises(OSError) as info:
        bs.begin_set(tmp_path, "llmops", NOW)
    assert bs.is_no_space(info.value)
    assert bs.list_partials(tmp_path) == []  # an empty partial without owner would block the next run for 2 h


def test_no_space_is_recognised_on_the_backup_volume_only(tmp_path):
    root = str(tmp_path)
    assert bs.is_no_space(OSError(errno.ENOSPC, "No space left on device"))
    assert bs.is_no_space(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert not bs.is_no_space(OSError(errno.EIO, "Input/output error"))
    wrapped = bs.BackupSetError("writing failed")
    wrapped.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    assert bs.is_no_space(wrapped)
    ours = f'rsync: [receiver] write failed on "{root}/.llmops_20260101_000000.partial/uploads/x": No space left ' \
           'on device (28)'
    assert bs.no_space_on(ours, root)
    assert bs.no_space_on(f"writing {root}/.p/x.tmp-1 failed: [Errno 28] No space left on device", root)
    assert bs.no_space_on(OSError(errno.ENOSPC, "No space left on device", f"{root}/x"), root)
    # a data store whose own disk is full is not the backup volume
    assert not bs.no_space_on('could not write to file "base/pgsql_tmp/pgsql_tmp1.0": No space left on device', root)
    assert not bs.no_space_on(f"pg_dump failed on {root}/x: permission denied", root)
    assert not bs.no_space_on(OSError(errno.ENOSPC, "No space left on device", "/var/lib/other"), root)


def test_storage_full_names_the_root_and_what_the_next_run_needs(tmp_path, monkeypatch):
    root = tmp_path / "backups"
    partial = bs.begin_set(root, "prev", NOW - datetime.timedelta(days=1))
    os.unlink(os.path.join(partial, bs.OWNER))
    with open(os.path.join(partial, "data.bin"), "wb") as handle:
        handle.write(b"d" * 5000)
    bs.write_manifest(partial, {"status": "success", "ended": bs.isoformat(NOW), "components": {}})
    prev = os.path.basename(bs.finalize_set(partial, root, "success"))
    full = bs.storage_full(root, "llmops_x", "rsync: write failed: No space left on device (28)\nrsync error: x", 1234)
    free = full["free_bytes"]
    assert full["root"] == str(root) and full["written_bytes"] == 1234
    assert full["cause"] == "rsync: write failed: No space left on device (28)"
    # this disk has far more free than the previous set took: the run did not fit, so it needs more than that
    assert full["needed_bytes"] >= free and prev in full["needed_from"]
    assert full["more_than"] and "needs more than" in full["msg"] and "the data grew" in full["msg"]
    for text in (str(root), "Free space on", "llmops_x", "was removed", "run the backup again", "the next run needs"):
        assert text in full["msg"]
    # less free than the previous set took: about its size, and how much more to free
    usage = bs.shutil.disk_usage(root)
    monkeypatch.setattr(bs.shutil, "disk_usage", lambda path: usage._replace(free=1000))
    full = bs.storage_full(root, "llmops_x", OSError(errno.ENOSPC, "No space left on device"), 0)
    assert full["needed_bytes"] == 5000 and not full["more_than"] and full["free_bytes"] == 1000
    assert f"needs about 4.9 KiB (the size of the previous set {prev}): free at least 3.9 KiB more" in full["msg"]
    assert "No space left on device" in full["cause"]


# --------------------------------------------------------------------------------------------
# through the module, as backup.yml runs it


def playbook(tmp_path, name, tasks):
    """Run ``tasks`` on localhost in an ansible-playbook of its own; return {register name: result}."""
    out = tmp_path / f"{name}.json"
    names = [t["register"] for t in tasks]
    tasks = tasks + [{"name": "dump", "ansible.builtin.copy": {
        "dest": str(out), "content": "{{ {" + ", ".join(f"'{n}': {n}" for n in names) + "} | to_json }}"}}]
    book = tmp_path / f"{name}.yml"
    book.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False, "tasks": tasks}]))
    proc = subprocess.Popen(["ansible-playbook", "-i", "localhost,", "-c", "local", "-e",
                             f"ansible_python_interpreter={sys.executable}", str(book)],
                            cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stdout[-4000:] + stderr[-2000:]
    return json.loads(out.read_text()), proc.pid


def task(register, args, fail=False):
    item = {"name": register, "backup_set": args, "register": register}
    if fail:
        item["ignore_errors"] = True
    return item


def test_a_run_that_died_is_cleaned_up_by_the_next_begin(tmp_path):
    root = str(tmp_path / "backups")
    # run 1 opens a set, checks that a second begin is refused while it lives, then ends without finalizing
    first, pid = playbook(tmp_path, "first", [
        task("opened", {"command": "begin", "root": root}),
        task("refused", {"command": "begin", "root": root, "name": "other"}, fail=True),
        {"name": "owner", "register": "owner", "ansible.builtin.slurp": {"src": "{{ opened.path }}/.owner.json"}},
    ])
    record = json.loads(base64.b64decode(first["owner"]["content"]))
    # the owner is the ansible-playbook process of the run (its main process), not the module's short life
    assert record["pid"] == pid and record["pid_cmd"] == "ansible-playbook" and record["module_pid"] != pid
    assert isinstance(record["pid_start"], int) and record["boot_id"] == bs.boot_id()
    assert first["refused"]["failed"] and "is running on this host" in first["refused"]["msg"]
    assert f"pid {record['pid']}" in first["refused"]["msg"]
    partial = first["opened"]["path"]
    assert os.path.isdir(partial) and bs.partial_owner(partial)[0] == "dead"  # that ansible-playbook has ended

    time.sleep(1.1)  # set ids have a one-second resolution
    second, _ = playbook(tmp_path, "second", [
        task("dry", {"command": "begin", "root": root}) | {"check_mode": True},
        task("opened", {"command": "begin", "root": root}),
    ])
    assert second["dry"]["would_remove_partials"] == [partial] and second["dry"]["removed_partials"] == []
    assert second["opened"]["removed_partials"] == [partial] and not os.path.exists(partial)
    assert "removed the partial set(s) of runs that died" in second["opened"]["msg"]
    assert "is gone" in second["opened"]["msg"]
    assert bs.list_partials(root) == [second["opened"]["path"]]

    # command=cleanup removes a dead owner's partial whatever stale_after says
    cleaned, _ = playbook(tmp_path, "third", [
        task("dry", {"command": "cleanup", "root": root, "stale_after": 10 ** 9, "dry_run": True}),
        task("cleaned", {"command": "cleanup", "root": root, "stale_after": 10 ** 9}),
    ])
    assert cleaned["dry"]["would_delete"] == [second["opened"]["path"]] and cleaned["dry"]["deleted"] == []
    assert cleaned["cleaned"]["deleted"] == [second["opened"]["path"]] and bs.list_partials(root) == []


# --------------------------------------------------------------------------------------------
# one host-wide rule between backups, restores and retention (take_restore_lock, begin_set, retention)


def restore_record(root, pid, start, kind="restore", sets=("llmops_20260101_000000",)):
    """A restore record as take_restore_lock writes it, for the run ``pid`` started at ``start``."""
    record = {"kind": kind, "host": socket.gethostname(), "boot_id": bs.boot_id(), "module_pid": pid,
              "started": bs.isoformat(NOW), "sets": list(sets), "components": ["uploads"], "pid": pid,
              "pid_start": start, "pid_cmd": "ansible-playbook"}
    os.makedirs(root, exist_ok=True)
    with open(bs.restore_owner_path(root), "w", encoding="utf-8") as handle:
        json.dump(record, handle)
    return record


def test_a_live_restore_refuses_a_backup_and_a_dead_one_does_not(tmp_path):
    root = str(tmp_path / "backups")
    live = sleeper()
    try:
        restore_record(root, live.pid, bs.process_start_time(live.pid))
        state = bs.assess_restore(root)
        assert state["owner"] == "alive" and state["active"] and state["blocks_backups"] and not state["mine"]
        with pytest.raises(bs.RestoreInProgress, match="wait for the restore to end, then run the backup again"):
            bs.begin_set(root, "llmops", NOW)
        assert bs.list_partials(root) == []  # the partial begin made is gone again
        assert bs.restore_sets_in_use(root) == ["llmops_20260101_000000"]
        # a drill reads the sets (retention keeps them) but does not stop backups
        restore_record(root, live.pid, bs.process_start_time(live.pid), kind="drill")
        assert not bs.assess_restore(root)["blocks_backups"] and bs.restore_sets_in_use(root)
        bs.remove_partial(bs.begin_set(root, "llmops", NOW))
    finally:
        live.kill()
        live.wait()
    pid, start = gone_pid()
    restore_record(root, pid, start)
    state = bs.assess_restore(root)
    assert state["owner"] == "dead" and not state["active"] and "is gone" in state["why"]
    assert bs.restore_sets_in_use(root) == []
    assert os.path.isdir(bs.begin_set(root, "llmops", NOW))


def test_take_restore_lock_refuses_while_a_backup_runs_and_replaces_a_dead_record(tmp_path):
    root = str(tmp_path / "backups")
    live = sleeper()
    try:
        partial = owned_partial(root, {"pid": live.pid, "pid_start": bs.process_start_time(live.pid)})
        with pytest.raises(bs.BackupSetError, match="a backup run is in progress .*then run the restore again"):
            bs.take_restore_lock(root, ["s"], ["uploads"])
        assert not os.path.exists(bs.restore_owner_path(root))
        # a drill does not wait for backups
        taken = bs.take_restore_lock(root, ["s"], ["uploads"], kind="drill")
        assert taken["record"]["kind"] == "drill"
        os.unlink(taken["path"])
        bs.remove_partial(partial)
        # another live restore holds the record
        restore_record(root, live.pid, bs.process_start_time(live.pid))
        with pytest.raises(bs.BackupSetError, match="another restore is in progress"):
            bs.take_restore_lock(root, ["s"], ["uploads"])
        assert bs.release_restore_lock(root).startswith("kept")  # not this run's: never removed
    finally:
        live.kill()
        live.wait()
    pid, start = gone_pid()
    restore_record(root, pid, start)
    taken = bs.take_restore_lock(root, ["a", "b"], ["mariadb"])
    assert "is gone" in taken["replaced"] and taken["record"]["sets"] == ["a", "b"]
    assert bs.read_restore_owner(root)["components"] == ["mariadb"]
    # a record without a run process (taken here, outside ansible-playbook) counts as active while young
    state = bs.assess_restore(root)
    assert state["owner"] == "unknown" and state["active"]
    assert not bs.assess_restore(root, now=datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=3))["active"]
    os.unlink(taken["path"])
    assert bs.release_restore_lock(root) == "no restore record"


def test_a_remote_run_knows_its_restore_record_by_its_run_id(tmp_path):
    """Through a remote connection (SSH, docker) no ansible-playbook process of the run is on the host: the record
    names none, so only the run's token tells its own record from another run's."""
    root = str(tmp_path / "backups")
    taken = bs.take_restore_lock(root, ["s"], ["uploads"], run_id="run-a")
    assert taken["record"]["pid"] is None and taken["record"]["run_id"] == "run-a"
    with pytest.raises(bs.BackupSetError, match="another restore is in progress"):
        bs.take_restore_lock(root, ["s"], ["uploads"], run_id="run-b")
    assert bs.release_restore_lock(root).startswith("kept")            # no token: not provably this run's
    assert bs.release_restore_lock(root, run_id="run-b").startswith("kept")
    again = bs.take_restore_lock(root, ["s", "t"], ["uploads"], run_id="run-a")  # the same run takes it again
    assert again["record"]["sets"] == ["s", "t"] and again["replaced"] is None
    assert bs.release_restore_lock(root, run_id="run-a").startswith("removed")
    assert not os.path.lexists(bs.restore_owner_path(root))


def test_retention_keeps_the_sets_a_live_restore_reads(tmp_path):
    root = str(tmp_path / "backups")
    old = []
    for days in (90, 60):
        partial = bs.begin_set(root, "llmops", NOW - datetime.timedelta(days=days))
        os.unlink(os.path.join(partial, bs.OWNER))
        os.rmdir(os.path.join(partial, bs.COMPONENTS_DIR))
        bs.write_manifest(partial, {"status": "success", "started": bs.isoformat(NOW), "ended": bs.isoformat(
            NOW - datetime.timedelta(days=days)), "components": {}})
        old.append(os.path.basename(bs.finalize_set(partial, root, "success")))
    live = sleeper()
    try:
        restore_record(root, live.pid, bs.process_start_time(live.pid), sets=[old[0]])
        policy = {"daily_days": 0, "weekly": 0, "monthly": 0}
        kept, _ = playbook(tmp_path, "retention", [task("kept", {"command": "retention", "root": root,
                                                                 "policy": policy})])
        assert kept["kept"]["in_use_by_restore"] == [old[0]] and kept["kept"]["deleted"] == []
        assert old[0] in kept["kept"]["keep"] and any("a restore in progress reads" in w
                                                      for w in kept["kept"]["warnings"])
        assert os.path.isdir(os.path.join(root, old[0]))
    finally:
        live.kill()
        live.wait()
    gone, _ = playbook(tmp_path, "retention-after", [task("gone", {"command": "retention", "root": root,
                                                                   "policy": {"daily_days": 0, "weekly": 0,
                                                                              "monthly": 0}})])
    assert gone["gone"]["deleted"] == [old[0]] and not os.path.exists(os.path.join(root, old[0]))


def test_the_release_appends_the_audit_line_and_releases_even_when_the_line_cannot_be_written(tmp_path):
    """The restore role's audit line is written by the release of its record, with the backups' writer."""
    root = tmp_path / "backups"
    audit = {"who": "ops", "action": "restore", "set": "s", "components": ["uploads"], "result": "success"}
    bs.take_restore_lock(str(root), ["s"], ["uploads"], run_id="run-a")
    result = run_module("restore_plan", {"backup_root": str(root), "lock": "release", "run_id": "run-a",
                                         "audit": audit})
    assert not result.get("failed") and result["audit_error"] is None, result
    assert result["lock"].startswith("removed") and not os.path.lexists(bs.restore_owner_path(str(root)))
    log = root / "audit.log"
    line = json.loads(log.read_text())
    assert {k: line[k] for k in audit} == audit and line["time"].endswith("Z")
    assert stat.S_IMODE(log.stat().st_mode) == 0o600

    # a log that cannot be written: the record is released all the same, and the caller is told why
    log.unlink()
    log.mkdir()
    bs.take_restore_lock(str(root), ["s"], ["uploads"], run_id="run-b")
    result = run_module("restore_plan", {"backup_root": str(root), "lock": "release", "run_id": "run-b",
                                         "audit": audit})
    assert "Is a directory" in result["audit_error"], result
    assert result["lock"].startswith("removed") and not os.path.lexists(bs.restore_owner_path(str(root)))
