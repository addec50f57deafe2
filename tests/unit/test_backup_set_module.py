"""Runs the real backup_set module through Ansible (one playbook, to keep ansible start-ups few)."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys

from module_utils import llmops_backupset as bs

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"), ANSIBLE_NOCOLOR="1",
           PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))


def old_set(root, days_ago):
    when = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=days_ago)
    partial = bs.begin_set(root, "llmops", when)
    os.unlink(os.path.join(partial, bs.OWNER))
    os.rmdir(os.path.join(partial, bs.COMPONENTS_DIR))
    with open(os.path.join(partial, "data.zst"), "wb") as handle:
        handle.write(b"old")
    bs.write_manifest(partial, {"status": "success", "ended": bs.isoformat(when), "components": {}})
    return os.path.basename(bs.finalize_set(partial, root, "success"))


def step(name, args, check=False, fail=False):
    task = {"name": name, "backup_set": args, "register": name}
    if check:
        task["check_mode"] = True
    if fail:
        task["ignore_errors"] = True
    return task


def run_playbook(tmp_path, tasks):
    """Run ``tasks`` on localhost; return {register name: result}."""
    out = tmp_path / "results.json"
    names = [t["register"] for t in tasks if "register" in t]
    tasks = tasks + [{"name": "dump", "ansible.builtin.copy": {
        "dest": str(out), "content": "{{ {" + ", ".join(f"'{n}': {n}" for n in names) + "} | to_json }}"}}]
    book = tmp_path / "play.yml"
    book.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False, "tasks": tasks}]))
    proc = subprocess.run(["ansible-playbook", "-i", "localhost,", "-c", "local", "-e",
                           f"ansible_python_interpreter={sys.executable}", str(book)],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    return json.loads(out.read_text())


def test_lifecycle(tmp_path):
    root = str(tmp_path / "backups")
    ancient = old_set(root, 100)
    artefact = "{{ begun.path }}/redis/dump.rdb.zst"
    policy = {"weekly": 0, "monthly": 0}
    r = run_playbook(tmp_path, [
        step("dry", {"command": "begin", "root": root}, check=True),
        step("dry_component", {"command": "component", "root": root, "path": "{{ dry.path }}", "component": "redis",
                               "data": {"status": "success"}}, check=True),
        step("begun", {"command": "begin", "root": root, "name": "llmops"}),
        step("refused", {"command": "begin", "root": root, "name": "other"}, fail=True),
        {"name": "artefact", "register": "art",
         "ansible.builtin.shell": f"mkdir -p {{{{ begun.path }}}}/redis && printf redis-bytes > {artefact} && "
                                  f"sha256sum {artefact}"},
        step("component", {"command": "component", "root": root, "path": "{{ begun.path }}", "component": "redis",
                           "data": {"type": "redis", "status": "success",
                                    "files": [{"path": artefact, "sha256": "{{ art.stdout.split()[0] }}",
                                               "size": 11}]}}),
        step("final", {"command": "finalize", "root": root, "path": "{{ begun.path }}",
                       "expected_components": ["redis"]}),
        {"name": "sums", "ansible.builtin.command": {"cmd": "sha256sum -c SHA256SUMS", "chdir": "{{ final.path }}"},
         "register": "sums"},
        step("verified", {"command": "verify", "root": root}),
        step("tested_dry", {"command": "verified", "root": root, "path": "{{ final.path }}", "method": "restore",
                            "result": "passed", "components": {"redis": "passed"}, "by": "drill"}, check=True),
        {"name": "no_record", "ansible.builtin.stat": {"path": "{{ final.path }}/verification.json"},
         "register": "no_record"},
        step("tested", {"command": "verified", "root": root, "path": "{{ final.set_id }}", "method": "restore",
                        "result": "passed", "components": {"redis": "passed"}, "by": "drill",
                        "details": "report.json"}),
        step("checked", {"command": "verified", "root": root, "path": "{{ final.path }}", "method": "checksums",
                         "result": "passed"}),
        {"name": "record_sums", "ansible.builtin.command": {"cmd": "sha256sum -c --strict verification.json.sha256",
                                                           "chdir": "{{ final.path }}"}, "register": "record_sums"},
        step("reverified", {"command": "verify", "root": root}),
        step("listed", {"command": "list", "root": root}),
        step("planned", {"command": "retention", "root": root, "policy": policy}, check=True),
        {"name": "still_there", "ansible.builtin.stat": {"path": f"{root}/{ancient}"},
         "register": "still_there"},
        step("done", {"command": "retention", "root": root, "policy": policy}),
        {"name": "flip", "ansible.builtin.shell": "printf '!' >> {{ final.path }}/redis/dump.rdb.zst"},
        step("broken", {"command": "verify", "root": root, "path": "{{ final.path }}"}, fail=True),
        step("badpolicy", {"command": "retention", "root": root, "policy": {"timezone": "Mars/Base"}}, fail=True),
    ])
    assert r["dry"]["changed"] and not os.path.exists(r["dry"]["path"])
    assert r["dry_component"]["changed"]
    begun = r["begun"]
    assert os.path.basename(begun["path"]) == f".{begun['set_id']}.partial"
    assert r["refused"]["failed"] and "another backup run looks active" in r["refused"]["msg"]
    final = r["final"]
    assert final["status"] == "success" and final["latest"] and final["problems"] == []
    assert os.readlink(os.path.join(root, "latest")) == begun["set_id"]
    assert final["manifest"]["components"]["redis"]["files"] == [
        {"path": "redis/dump.rdb.zst", "sha256": r["art"]["stdout"].split()[0], "size": 11}]
    assert r["sums"]["rc"] == 0
    assert r["verified"]["verify"]["ok"] and r["verified"]["set_id"] == begun["set_id"]
    dry = r["tested_dry"]
    assert dry["changed"] and dry["record"]["method"] == "restore" and dry["verification"]["restore_tested"]
    assert not r["no_record"]["stat"]["exists"]
    tested = r["tested"]
    assert tested["changed"] and tested["set_id"] == begun["set_id"] and tested["verification"]["restore_tested"]
    assert tested["record"] == {"time": tested["record"]["time"], "method": "restore", "result": "passed",
                                "components": {"redis": "passed"}, "by": "drill", "details": "report.json"}
    assert r["checked"]["record"]["by"]  # defaults to <user>@<host>
    assert "@" in r["checked"]["record"]["by"] and r["checked"]["verification"]["last_method"] == "checksums"
    assert r["record_sums"]["rc"] == 0
    assert r["reverified"]["verify"]["ok"]  # the records are not part of the checksummed set
    assert bs.read_verification(final["path"])["records"][0] == tested["record"]
    newest = r["listed"]["sets"][-1]["verification"]
    assert newest["restore_tested"] and newest["restore_tested_time"] == tested["record"]["time"]
    assert newest["last_method"] == "checksums" and newest["error"] is None
    assert r["listed"]["restore_tested"] == {"id": begun["set_id"], "time": tested["record"]["time"]}
    assert [s["id"] for s in r["listed"]["sets"]] == [ancient, begun["set_id"]]
    assert r["listed"]["latest"] == begun["set_id"]
    assert r["planned"]["delete"] == [ancient] and r["planned"]["deleted"] == [] and r["planned"]["changed"]
    assert r["still_there"]["stat"]["exists"]
    assert r["done"]["deleted"] == [ancient] and not os.path.exists(os.path.join(root, ancient))
    assert begun["set_id"] in r["done"]["keep"]
    assert r["broken"]["failed"] and "failed verification" in r["broken"]["msg"]
    assert r["broken"]["verify"]["mismatched"] == ["redis/dump.rdb.zst"]
    assert r["badpolicy"]["failed"] and "unknown timezone" in r["badpolicy"]["msg"]


def test_failed_component_and_bad_input(tmp_path):
    root = str(tmp_path / "backups")
    r = run_playbook(tmp_path, [
        step("begun", {"command": "begin", "root": root}),
        step("bad", {"command": "component", "root": root, "path": "{{ begun.path }}", "component": "pg",
                     "data": {"status": "maybe"}}, fail=True),
        step("outside", {"command": "component", "root": root, "path": "{{ begun.path }}", "component": "pg",
                         "data": {"status": "success", "files": [{"path": "/etc/passwd"}]}}, fail=True),
        step("pg", {"command": "component", "root": root, "path": "{{ begun.path }}", "component": "pg",
                    "data": {"status": "failed", "error": "pg_dump exited with code 1"}}),
        step("final", {"command": "finalize", "root": root, "path": "{{ begun.path }}",
                       "expected_components": ["pg", "redis"]}),
        step("nothing", {"command": "verify", "root": root}, fail=True),
        step("no_method", {"command": "verified", "root": root, "path": "{{ final.path }}", "result": "passed"},
             fail=True),
        step("bad_method", {"command": "verified", "root": root, "path": "{{ final.path }}", "method": "eyeball",
                            "result": "passed"}, fail=True),
        step("bad_components", {"command": "verified", "root": root, "path": "{{ final.path }}",
                                "method": "restore", "result": "failed", "components": {"pg": ["x"]}}, fail=True),
        step("not_a_set", {"command": "verified", "root": root, "path": "{{ begun.path }}", "method": "restore",
                           "result": "failed"}, fail=True),
        step("failed_test", {"command": "verified", "root": root, "path": "{{ final.path }}", "method": "restore",
                             "result": "failed", "components": {"pg": "failed"}, "details": "pg_restore failed"}),
        step("cleaned", {"command": "cleanup", "root": root, "stale_after": 0}),
    ])
    assert r["bad"]["failed"] and "data.status" in r["bad"]["msg"]
    assert r["outside"]["failed"] and "not inside the set" in r["outside"]["msg"]
    final = r["final"]
    assert final["status"] == "failed" and not final["latest"]
    assert "component redis was expected but not recorded" in final["problems"]
    assert "component pg: pg_dump exited with code 1" in final["problems"]
    assert not os.path.lexists(os.path.join(root, "latest"))
    assert os.path.isdir(final["path"]) and bs.list_sets(root, complete_only=True) == []
    assert r["nothing"]["failed"] and "no 'latest' set" in r["nothing"]["msg"]
    assert r["no_method"]["failed"] and "command=verified needs method" in r["no_method"]["msg"]
    assert r["bad_method"]["failed"] and "value of method must be one of" in r["bad_method"]["msg"]
    assert r["bad_components"]["failed"] and "components must map" in r["bad_components"]["msg"]
    assert r["not_a_set"]["failed"] and "not a finalized backup set" in r["not_a_set"]["msg"]
    assert r["failed_test"]["changed"] and not r["failed_test"]["verification"]["restore_tested"]
    assert r["failed_test"]["verification"]["last_result"] == "failed"
    assert r["cleaned"]["would_delete"] == [] and not r["cleaned"]["changed"]


def test_adhoc_list_in_check_mode(tmp_path):
    """The plain `ansible localhost -m backup_set` form works too."""
    argv = ["ansible", "localhost", "-i", "localhost,", "-c", "local", "-e",
            f"ansible_python_interpreter={sys.executable}", "-m", "backup_set",
            "-a", json.dumps({"command": "list", "root": str(tmp_path)})] + ["--check"]
    proc = subprocess.run(argv, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout.split("=>", 1)[1])["sets"] == []


def test_hostile_file_names_through_the_module(tmp_path):
    """Names with newlines, backslashes, CR, Korean, emoji and bytes that are not UTF-8: finalize succeeds,
    `sha256sum -c` accepts the set, and the results Ansible gets back are valid UTF-8."""
    root = str(tmp_path / "backups")
    maker = ("import os, sys; p = os.fsencode(sys.argv[1]) + b'/uploads'; os.makedirs(p + b'/d\\n\\xff'); "
             "open(p + b'/d\\n\\xff/x\\\\y\\r', 'wb').write(b'1'); "
             "open(p + '/한국어 😀 $(x)'.encode(), 'wb').close()")
    r = run_playbook(tmp_path, [
        step("begun", {"command": "begin", "root": root}),
        {"name": "files", "ansible.builtin.command": {"argv": [sys.executable, "-c", maker, "{{ begun.path }}"]}},
        step("component", {"command": "component", "root": root, "path": "{{ begun.path }}", "component": "uploads",
                           "data": {"status": "success"}}),
        step("final", {"command": "finalize", "root": root, "path": "{{ begun.path }}"}),
        {"name": "sums", "register": "sums", "ansible.builtin.command": {
            "cmd": "sha256sum -c --strict --quiet SHA256SUMS", "chdir": "{{ final.path }}"}},
        step("verified", {"command": "verify", "root": root}),
        step("listed", {"command": "list", "root": root}),
    ])
    assert r["final"]["status"] == "success" and r["final"]["problems"] == [], r["final"]["problems"]
    assert [f["path"] for f in r["final"]["manifest"]["files"]] == ["uploads/d\n\\xff/x\\y\r", "uploads/한국어 😀 $(x)"]
    assert r["sums"]["rc"] == 0 and r["verified"]["verify"]["ok"]
    assert bs.load_manifest(r["final"]["path"])["files"][0]["path"] == "uploads/d\n\udcff/x\\y\r"
    assert r["listed"]["latest"] == r["begun"]["set_id"]


def test_a_full_backup_volume_removes_the_partial_and_says_what_to_free(tmp_path):
    """A component that failed with ENOSPC on a file of the backup root, or a run stopped by it (the rescue's
    finalize with status=failed and the error), removes the partial instead of finalizing it; a store whose own
    disk is full is not the backup volume, and a failure that is not about space keeps the failed set."""
    root = str(tmp_path / "backups")
    previous = old_set(root, 1)
    enospc = ("writing {{ full.path }}/postgres/app.dump.zst.tmp-1 failed: [Errno 28] No space left on device")
    r = run_playbook(tmp_path, [
        step("full", {"command": "begin", "root": root}),
        {"name": "artefact", "register": "art", "ansible.builtin.shell":
            "mkdir -p {{ full.path }}/redis && head -c 5000 /dev/zero > {{ full.path }}/redis/dump.rdb.zst"},
        step("redis", {"command": "component", "root": root, "path": "{{ full.path }}", "component": "redis",
                       "data": {"status": "success", "files": [{"path": "redis/dump.rdb.zst"}]}}),
        step("pg", {"command": "component", "root": root, "path": "{{ full.path }}", "component": "postgres",
                    "data": {"status": "failed", "error": enospc}}),
        step("final", {"command": "finalize", "root": root, "path": "{{ full.path }}",
                       "expected_components": ["redis", "postgres"]}),
        {"name": "wait", "ansible.builtin.pause": {"seconds": 1}},
        step("stopped", {"command": "begin", "root": root}),
        step("rescued", {"command": "finalize", "root": root, "path": "{{ stopped.path }}", "status": "failed",
                         "error": "component failed on " + root + ": [Errno 28] No space left on device: '"
                                  + root + "/x.json'"}),
        {"name": "wait2", "ansible.builtin.pause": {"seconds": 1}},
        step("store", {"command": "begin", "root": root}),
        step("store_pg", {"command": "component", "root": root, "path": "{{ store.path }}", "component": "postgres",
                          "data": {"status": "failed", "error": 'pg_dump: error: could not write to file '
                                   '"base/pgsql_tmp/pgsql_tmp1.0": No space left on device'}}),
        step("store_final", {"command": "finalize", "root": root, "path": "{{ store.path }}"}),
    ])
    final = r["final"]
    assert final["status"] == "failed" and final["removed"] and not final["latest"]
    assert not os.path.exists(r["full"]["path"]) and bs.list_partials(root) == []
    full = final["storage_full"]
    assert full["root"] == root and full["set_id"] == r["full"]["set_id"] and full["written_bytes"] >= 5000
    assert "No space left on device" in full["cause"]
    message = final["problems"][0]
    for text in ("ran out of space", "was removed", f"Free space on {root}", "the next run needs",
                 "run the backup again"):
        assert text in message, message
    # the manifest handed to the report says so, and no component counts as backed up
    assert final["manifest"]["storage_full"] == full and final["manifest"]["removed"]
    assert {c["status"] for c in final["manifest"]["components"].values()} == {"failed"}
    assert "removed with the partial set" in final["manifest"]["components"]["redis"]["error"]
    rescued = r["rescued"]
    assert rescued["removed"] and rescued["storage_full"] and not os.path.exists(r["stopped"]["path"])
    assert any("finalize was called with status=failed: component failed" in p for p in rescued["problems"])
    # another disk than the backup volume: an ordinary failed set, kept for inspection
    store = r["store_final"]
    assert store["status"] == "failed" and not store["removed"] and store["storage_full"] is None
    assert os.path.isdir(store["path"]) and "pgsql_tmp" in " ".join(store["problems"])
    assert os.readlink(os.path.join(root, "latest")) == previous
    assert bs.verify_set(os.path.join(root, previous))["ok"]


def test_a_finalize_that_cannot_complete_removes_its_partial(tmp_path):
    """An error that stops finalize before the rename (here a FIFO among the artefacts: a set holds regular
    files only) removes the partial, and the run is reported failed with the cause, not left to block."""
    root = str(tmp_path / "backups")
    r = run_playbook(tmp_path, [
        step("begun", {"command": "begin", "root": root}),
        {"name": "fifo", "ansible.builtin.command": "mkfifo {{ begun.path }}/odd.fifo"},
        step("rec", {"command": "component", "root": root, "path": "{{ begun.path }}", "component": "x",
                     "data": {"status": "success"}}),
        step("final", {"command": "finalize", "root": root, "path": "{{ begun.path }}"}),
    ])
    final = r["final"]
    assert final["status"] == "failed" and final["removed"] and final["storage_full"] is None
    assert final["problems"][0].startswith("finalize could not complete (")
    assert "odd.fifo is not a regular file" in final["problems"][0] and "run the backup again" in final["problems"][0]
    assert not os.path.exists(r["begun"]["path"]) and os.listdir(root) == []


def test_finalize_records_the_backup_modules_results_in_the_same_call(tmp_path):
    """backup.yml records every component and finalizes in one module call (`results`): a result's `component`
    entry, or for a failed result (or one with no entry) a failed component carrying its message."""
    root = str(tmp_path / "backups")
    artefact = "{{ begun.path }}/redis/dump.rdb.zst"
    r = run_playbook(tmp_path, [
        step("begun", {"command": "begin", "root": root}),
        {"name": "artefact", "register": "art",
         "ansible.builtin.shell": f"mkdir -p {{{{ begun.path }}}}/redis && printf rdb > {artefact} && "
                                  f"sha256sum {artefact}"},
        step("final", {"command": "finalize", "root": root, "path": "{{ begun.path }}", "brief": True,
                       "expected_components": ["redis", "postgres"], "results": {
                           "redis": {"changed": True, "component": {
                               "type": "redis", "status": "success",
                               "files": [{"path": artefact, "sha256": "{{ art.stdout.split()[0] }}", "size": 3}]}},
                           "postgres": {"failed": True, "msg": "pg_dump: connection refused"}}}),
    ])
    final = r["final"]
    comps = bs.load_manifest(final["path"])["components"]
    assert comps["redis"]["status"] == "success"
    assert comps["redis"]["files"] == [{"path": "redis/dump.rdb.zst", "sha256": r["art"]["stdout"].split()[0],
                                        "size": 3}]
    # brief: the result carries no per-file list, only what a report needs
    assert "files" not in final["manifest"] and final["manifest"]["totals"]["files"] == 1
    assert final["manifest"]["components"]["redis"]["files_count"] == 1
    assert final["manifest"]["components"]["redis"]["files_bytes"] == 3
    assert "files" not in final["manifest"]["components"]["redis"]
    comps = final["manifest"]["components"]
    assert comps["postgres"]["status"] == "failed" and comps["postgres"]["error"] == "pg_dump: connection refused"
    assert final["status"] == "failed" and not final["latest"]
    assert any("postgres" in p and "connection refused" in p for p in final["problems"])


def test_finalize_counts_the_bytes_a_set_added_beside_its_logical_size(tmp_path):
    """new_bytes: a file hard-linked to the earlier set's (an unchanged upload) is part of the logical size, not of
    the bytes the set added to the volume; the summary shows both."""
    from module_utils import llmops_report as report

    root = str(tmp_path / "backups")

    def uploads(files, linked_from=None):
        comp = {"type": "uploads", "status": "success", "files": [{"path": f} for f in files]}
        if linked_from:
            comp["linked_from"] = linked_from
        return {"changed": True, "component": comp}

    r = run_playbook(tmp_path, [
        step("one", {"command": "begin", "root": root, "name": "first"}),
        {"name": "old",
         "ansible.builtin.shell": "mkdir {{ one.path }}/uploads && printf 12345 > {{ one.path }}/uploads/a"},
        step("one_final", {"command": "finalize", "root": root, "path": "{{ one.path }}", "brief": True,
                           "results": {"uploads": uploads(["uploads/a"])}}),
        step("two", {"command": "begin", "root": root, "name": "second"}),
        {"name": "new", "ansible.builtin.shell": "mkdir {{ two.path }}/uploads && printf 67 > {{ two.path }}/uploads/b"
                                                " && ln {{ one_final.path }}/uploads/a {{ two.path }}/uploads/a"},
        step("two_final", {"command": "finalize", "root": root, "path": "{{ two.path }}", "brief": True,
                           "results": {"uploads": uploads(["uploads/a", "uploads/b"], "{{ one_final.set_id }}")}}),
    ])
    first, second = r["one_final"]["manifest"], r["two_final"]["manifest"]
    assert r["two_final"]["status"] == "success"
    assert first["components"]["uploads"]["new_bytes"] == 5
    assert second["components"]["uploads"]["files_bytes"] == 7 and second["components"]["uploads"]["new_bytes"] == 2
    assert bs.load_manifest(r["two_final"]["path"])["components"]["uploads"]["new_bytes"] == 2
    (row,) = report.summary_rows(second)
    assert (row["bytes"], row["new_bytes"]) == (7, 2)
    header, _, line = report.table([row])
    assert header.split() == ["component", "type", "size", "new", "duration", "verified", "status"]
    assert line.split()[2:6] == [report.human_bytes(7).split()[0], report.human_bytes(7).split()[1],
                                 report.human_bytes(2).split()[0], report.human_bytes(2).split()[1]]
    # a set finalized before new_bytes was recorded shows no figure rather than a guess
    assert report.summary_rows({"components": {"redis": {"status": "success", "files_bytes": 3}}})[0]["new"] == "-"
