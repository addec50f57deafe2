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
    assert r["cleaned"]["would_delete"] == [] and not r["cleaned"]["changed"]


def test_adhoc_list_in_check_mode(tmp_path):
    """The plain `ansible localhost -m backup_set` form works too."""
    argv = ["ansible", "localhost", "-i", "localhost,", "-c", "local", "-e",
            f"ansible_python_interpreter={sys.executable}", "-m", "backup_set",
            "-a", json.dumps({"command": "list", "root": str(tmp_path)})] + ["--check"]
    proc = subprocess.run(argv, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout.split("=>", 1)[1])["sets"] == []
