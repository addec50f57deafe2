"""The off-site copy against real restic: an append-only REST server (`rclone serve restic --append-only`) on a
local port, and a plain local repository for prune and check. No lab needed (restic and rclone only)."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import socket
import subprocess
import time

import pytest
from ansible.module_utils import llmops_backupset as bs

from tests.cmdlines import CmdlineSampler
from tests.conftest import run_module

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def tools():
    """restic and rclone come with `make bootstrap` (scripts/bootstrap.sh): missing, the test fails."""
    missing = [tool for tool in ("restic", "rclone") if not shutil.which(tool)]
    assert not missing, f"{missing} not installed: run make bootstrap (apt-get install restic rclone)"

PASSWORD = "offsite-Secret-" + os.urandom(6).hex()
T0 = datetime.datetime.now(datetime.UTC).replace(microsecond=0) - datetime.timedelta(days=2)


def make_set(root, now, name="llmops", files=None, components=None):
    partial = bs.begin_set(root, name, now)
    os.unlink(os.path.join(partial, bs.OWNER))
    os.rmdir(os.path.join(partial, bs.COMPONENTS_DIR))
    for rel, data in (files or {}).items():
        full = os.path.join(partial, rel)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as handle:
            handle.write(data)
    manifest = {"id": os.path.basename(partial)[1:-8], "name": name, "status": "success",
                "started": bs.isoformat(now), "ended": bs.isoformat(now),
                "components": components or {"mariadb": {"status": "success", "backup_type": "full"}}}
    bs.write_manifest(partial, manifest)
    return bs.finalize_set(partial, root, "success")


def tree_hashes(path):
    out = {}
    for base, _, files in os.walk(path):
        for name in files:
            full = os.path.join(base, name)
            out[os.path.relpath(full, path)] = hashlib.sha256(open(full, "rb").read()).hexdigest()
    return out


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def backups(tmp_path):
    root = tmp_path / "backups"
    full = make_set(root, T0, files={"mariadb/full.mbstream.zst": os.urandom(300_000),
                                     "postgres/app.dump": b"p" * 5000})
    inc = make_set(root, T0 + datetime.timedelta(hours=6), files={"mariadb/inc.mbstream.zst": os.urandom(20_000)},
                   components={"mariadb": {"status": "success", "backup_type": "incremental",
                                           "parent": os.path.basename(full)}})
    uploads = make_set(root, T0 + datetime.timedelta(hours=7), name="uploads", files={"uploads/a.pdf": b"doc" * 999})
    os.makedirs(root / "binlogs")
    (root / "binlogs" / "mysql-bin.000001").write_bytes(os.urandom(4000))
    bs.begin_set(root, "llmops", T0 + datetime.timedelta(hours=8))  # a run in progress: never sent
    return root, [full, inc, uploads]


@pytest.fixture
def append_only(tmp_path):
    """`rclone serve restic --append-only` on a random local port."""
    port = free_port()
    store = tmp_path / "offsite-store"
    store.mkdir()
    proc = subprocess.Popen(["rclone", "serve", "restic", "--append-only", "--addr", f"127.0.0.1:{port}", str(store)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    yield f"rest:http://127.0.0.1:{port}/llmops"
    proc.terminate()
    proc.wait(10)


def restic(repo, tmp_path, *args, cwd=None):
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD)
    pw.chmod(0o600)
    env = dict(os.environ, RESTIC_REPOSITORY=repo, RESTIC_PASSWORD_FILE=str(pw), RESTIC_CACHE_DIR=str(tmp_path / "c"))
    return subprocess.run(["restic", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def sync(root, repo, monkeypatch, **extra):
    monkeypatch.setenv("LLMOPS_TEST_OFFSITE_PW", PASSWORD)
    args = {"root": str(root), "repository": repo, "password": "{{ lookup('env', 'LLMOPS_TEST_OFFSITE_PW') }}",
            "init": True, "retries": 1, "backoff": 0.5, "limit_upload_kib": 100000,
            "metrics_path": str(root / "llmops_offsite.prom"), **extra}
    return run_module("offsite_sync", args)


def test_sync_to_append_only_server_restores_and_cannot_be_deleted(backups, append_only, tmp_path, monkeypatch):
    root, sets = backups
    old = make_set(root, T0 - datetime.timedelta(days=90), files={"mariadb/old.zst": b"old" * 1000})
    sets = [old, *sets]
    sampler = CmdlineSampler(PASSWORD)
    sampler.start()
    t0 = time.monotonic()
    first = sync(root, append_only, monkeypatch)
    elapsed = time.monotonic() - t0
    sampler.stop()
    assert not first.get("failed"), first
    assert first["changed"] and sorted(first["sets_sent"]) == sorted(os.path.basename(s) for s in sets)
    assert first["extras_sent"] == ["binlogs"] and first["bytes_added"] > 300_000
    assert first["lag_s"] == 0
    assert PASSWORD not in json.dumps(first)
    assert sampler.samples > 3 and sampler.hits == [], sampler.hits[:3]
    prom = (root / "llmops_offsite.prom").read_text()
    assert "llmops_offsite_last_run_success 1.0" in prom and "llmops_offsite_lag_seconds 0.0" in prom
    print(f"first sync {elapsed:.1f} s, {first['bytes_added']} bytes added")

    snaps = json.loads(restic(append_only, tmp_path, "snapshots", "--json").stdout)
    by_set = {t.split("=", 1)[1]: s for s in snaps for t in s["tags"] if t.startswith("set=")}
    assert sorted(by_set) == sorted(os.path.basename(s) for s in sets)
    inc = by_set[os.path.basename(sets[2])]
    assert "type=incremental" in inc["tags"] and f"parent={os.path.basename(sets[1])}" in inc["tags"]
    assert "kind=uploads" in by_set[os.path.basename(sets[3])]["tags"]

    target = tmp_path / "restored"
    done = restic(append_only, tmp_path, "restore", by_set[os.path.basename(sets[1])]["id"], "--target", str(target))
    assert done.returncode == 0, done.stderr
    restored_root = target / os.path.relpath(sets[1], "/") if (target / os.path.relpath(sets[1], "/")).exists() \
        else target
    assert tree_hashes(restored_root) == tree_hashes(sets[1])
    assert subprocess.run(["sha256sum", "-c", "--strict", "SHA256SUMS"], cwd=restored_root).returncode == 0

    second = sync(root, append_only, monkeypatch)
    assert not second.get("failed") and second["sets_sent"] == [] and not second["changed"], second

    # the server's own credentials cannot delete: the module's prune (told to keep nothing) is refused with the
    # server's 403, and every snapshot stays, in a repository that still checks. One refused delete is enough here:
    # restic 0.14 retries a 403 for about 45 s.
    before = json.loads(restic(append_only, tmp_path, "snapshots", "--json").stdout)
    monkeypatch.setenv("LLMOPS_TEST_OFFSITE_PW", PASSWORD)
    refused = run_module("offsite_sync", {"operation": "prune", "root": str(root), "repository": append_only,
                                          "password": "{{ lookup('env', 'LLMOPS_TEST_OFFSITE_PW') }}",
                                          "policy": {"daily_days": 0, "weekly": 0, "monthly": 0,
                                                     "incremental_days": 0}})
    assert refused.get("failed") and "403" in refused["msg"] and PASSWORD not in json.dumps(refused), refused
    after = json.loads(restic(append_only, tmp_path, "snapshots", "--json").stdout)
    assert len(before) > len(sets) and sorted(snap["id"] for snap in after) == sorted(snap["id"] for snap in before)
    assert restic(append_only, tmp_path, "check").returncode == 0


def test_prune_and_check_on_a_trusted_repository(backups, tmp_path, monkeypatch):
    root, sets = backups
    repo = str(tmp_path / "repo")
    old = make_set(root, T0 - datetime.timedelta(days=60), files={"mariadb/old.zst": b"old" * 1000})
    first = sync(root, repo, monkeypatch)
    assert not first.get("failed") and os.path.basename(old) in first["sets_sent"], first
    dry = run_module("offsite_sync", {"operation": "prune", "root": str(root), "repository": repo,
                                      "password": "{{ lookup('env', 'LLMOPS_TEST_OFFSITE_PW') }}",
                                      "policy": {"daily_days": 30, "weekly": 0, "monthly": 0}}, check_mode=True)
    assert dry["forget_sets"] == [os.path.basename(old)] and dry["changed"], dry
    assert len(json.loads(restic(repo, tmp_path, "snapshots", "--json").stdout)) == 5  # nothing done in check mode
    done = run_module("offsite_sync", {"operation": "prune", "root": str(root), "repository": repo,
                                       "password": "{{ lookup('env', 'LLMOPS_TEST_OFFSITE_PW') }}",
                                       "policy": {"daily_days": 30, "weekly": 0, "monthly": 0}})
    assert not done.get("failed") and done["forget_sets"] == [os.path.basename(old)], done
    tags = [t for s in json.loads(restic(repo, tmp_path, "snapshots", "--json").stdout) for t in s["tags"]]
    assert f"set={os.path.basename(old)}" not in tags
    assert f"set={os.path.basename(sets[0])}" in tags  # the full a kept incremental needs
    checked = run_module("offsite_sync", {"operation": "check", "root": str(root), "repository": repo,
                                          "password": "{{ lookup('env', 'LLMOPS_TEST_OFFSITE_PW') }}",
                                          "check_subset_pct": 100})
    assert not checked.get("failed"), checked
    assert "llmops_offsite_check_last_success 1.0" in (root / "llmops_offsite.prom").read_text() or \
        json.load(open(root / ".offsite_state.json"))["check"]["last_status"] == "success"


def test_wrong_password_fails_and_is_recorded(backups, tmp_path, monkeypatch):
    root, _ = backups
    repo = str(tmp_path / "repo")
    assert not sync(root, repo, monkeypatch).get("failed")
    monkeypatch.setenv("LLMOPS_TEST_OFFSITE_PW", "not-the-password")
    args = {"root": str(root), "repository": repo, "password": "{{ lookup('env', 'LLMOPS_TEST_OFFSITE_PW') }}",
            "metrics_path": str(root / "llmops_offsite.prom")}
    bad = run_module("offsite_sync", args)
    assert bad.get("failed") and "password" in bad["msg"]
    prom = (root / "llmops_offsite.prom").read_text()
    assert "llmops_offsite_last_run_success 0.0" in prom
    assert "llmops_offsite_last_success_timestamp_seconds 0.0" not in prom  # the earlier success is remembered
