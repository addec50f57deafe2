"""The off-site copy's S3 back end against `moto_server` on a local port.

moto_server (PyPI moto[server], pinned in requirements.txt) is an S3 *wire-protocol emulator*, not a real object
store: it proves that restic's S3 back end, the role's `offsite_env` (the access keys from a vars file, as
production takes them from the vault) and the module's sync, restore and check work over the S3 protocol. It does
not prove durability, nor object lock: the ransomware (append-only) proof is the REST test
(tests/integration/test_offsite_restic.py, `rclone serve restic --append-only`). No real S3-compatible server
(MinIO, Ceph RGW, Garage) is installable here (see ../shared/notes/lab-facts.md).

Proven: the bucket made with boto3, `playbooks/offsite.yml` with `offsite_repository=s3:http://127.0.0.1:PORT/
<bucket>/llmops` initialises the repository and sends the sets (made by the real backup modules); the objects are
in the bucket; `restic restore` of a snapshot equals the local set byte for byte; `offsite_operation=check` runs
`restic check --read-data-subset` and records its success in the metrics; neither the repository password nor the
secret key is in the -vvv output or any /proc/*/cmdline.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import time
from pathlib import Path

import boto3
import pytest
import yaml

from tests.cmdlines import CmdlineSampler
from tests.conftest import VENV_BIN, make_set, run_playbook
from tests.integration.test_offsite_restic import free_port, tree_hashes

pytestmark = pytest.mark.slow

PASSWORD = "offsite-s3-" + secrets.token_hex(12)
ACCESS_KEY = "LLMOPSTEST" + secrets.token_hex(5).upper()
SECRET_KEY = "s3-secret-" + secrets.token_hex(16)
BUCKET = "llmops-offsite"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto_server on a free local port, with the bucket created."""
    moto = VENV_BIN / "moto_server"
    assert moto.exists(), "moto_server missing from .venv: run make bootstrap (requirements.txt pins moto[server])"
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=out)
    try:
        for _ in range(150):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert proc.poll() is None, f"moto_server exited: {log.read_text()[-2000:]}"
                time.sleep(0.1)
        else:
            raise AssertionError(f"moto_server did not listen on {port}: {log.read_text()[-2000:]}")
        client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                              aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)
        client.create_bucket(Bucket=BUCKET)
        yield {"endpoint": f"http://127.0.0.1:{port}", "client": client,
               "repository": f"s3:http://127.0.0.1:{port}/{BUCKET}/llmops"}
    finally:
        proc.terminate()
        proc.wait(10)


def offsite(tmp_path: Path, root: Path, s3: dict, *args: str, **settings) -> subprocess.CompletedProcess:
    """playbooks/offsite.yml with a 0600 vars file; the password and the keys come from the environment (as
    production's come from the vault), never from -e on the command line."""
    varsfile = tmp_path / "offsite-vars.yml"
    doc = {"offsite_enabled": True, "offsite_repository": s3["repository"], "offsite_init": True,
           "offsite_password": "{{ lookup('env', 'LLMOPS_TEST_OFFSITE_PW') }}",
           "offsite_env": {"AWS_ACCESS_KEY_ID": "{{ lookup('env', 'LLMOPS_TEST_S3_ACCESS') }}",
                           "AWS_SECRET_ACCESS_KEY": "{{ lookup('env', 'LLMOPS_TEST_S3_SECRET') }}"},
           "offsite_retries": 1, "offsite_backoff_s": 1,
           "backup_root": str(root), "backup_metrics_dir": str(root.parent / "metrics"), **settings}
    varsfile.write_text(yaml.safe_dump(doc))
    varsfile.chmod(0o600)
    os.environ.update(LLMOPS_TEST_OFFSITE_PW=PASSWORD, LLMOPS_TEST_S3_ACCESS=ACCESS_KEY,
                      LLMOPS_TEST_S3_SECRET=SECRET_KEY)
    return run_playbook("offsite.yml", "-e", f"@{varsfile}", *args, check=False)


def restic(s3: dict, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    pw = tmp_path / "restic-pw"
    pw.write_text(PASSWORD)
    pw.chmod(0o600)
    env = dict(os.environ, RESTIC_REPOSITORY=s3["repository"], RESTIC_PASSWORD_FILE=str(pw),
               RESTIC_CACHE_DIR=str(tmp_path / "restic-cache"), AWS_ACCESS_KEY_ID=ACCESS_KEY,
               AWS_SECRET_ACCESS_KEY=SECRET_KEY)
    return subprocess.run(["restic", *args], env=env, capture_output=True, text=True, timeout=300)


def test_sync_restore_and_check_over_s3(s3, tmp_path):
    src = tmp_path / "uploads"
    src.mkdir()
    for i in range(3):
        (src / f"upload{i}.bin").write_bytes(os.urandom(300_000))
    root = tmp_path / "backups"
    made = make_set(root, {"uploads": ("files_backup", {"mode": "tree", "src": str(src), "backup_root": str(root),
                                                          "component": "uploads"})}, name="uploads")
    (root / "binlogs").mkdir()
    (root / "binlogs" / "mysql-bin.000001").write_bytes(os.urandom(5000))

    sampler = CmdlineSampler([PASSWORD, SECRET_KEY])
    sampler.start()
    started = time.monotonic()
    sync = offsite(tmp_path, root, s3, "-vvv")
    elapsed = time.monotonic() - started
    sampler.stop()
    assert sync.returncode == 0, sync.stdout[-5000:] + sync.stderr[-2000:]
    output = sync.stdout + sync.stderr
    assert PASSWORD not in output and SECRET_KEY not in output, "a secret is in the -vvv output"
    assert sampler.hits == [] and sampler.samples > 3
    state = json.loads((root / ".offsite_state.json").read_text())["sync"]
    assert state["last_status"] == "success" and state["sets_sent"] == 1 and state["bytes_added"] > 900_000, state
    print(f"S3 (moto_server): sync {elapsed:.1f} s, {state['bytes_added']} bytes added")

    # restic's objects are in the bucket, under the repository's prefix
    keys = [o["Key"] for page in s3["client"].get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="llmops/")
            for o in page.get("Contents", [])]
    assert "llmops/config" in keys and any(k.startswith("llmops/data/") for k in keys), keys[:20]

    snaps = json.loads(restic(s3, tmp_path, "snapshots", "--json").stdout)
    by_set = {t.split("=", 1)[1]: s for s in snaps for t in s["tags"] if t.startswith("set=")}
    assert list(by_set) == [made["set_id"]]
    assert any("extra=binlogs" in s["tags"] for s in snaps)
    target = tmp_path / "restored"
    done = restic(s3, tmp_path, "restore", by_set[made["set_id"]]["id"], "--target", str(target))
    assert done.returncode == 0, done.stderr
    local = Path(made["path"])
    restored = target / os.path.relpath(local, "/") if (target / os.path.relpath(local, "/")).exists() else target
    assert tree_hashes(restored) == tree_hashes(local) and len(tree_hashes(local)) >= 4

    checked = offsite(tmp_path, root, s3, "-e", "offsite_operation=check", offsite_check_subset_pct=100)
    assert checked.returncode == 0, checked.stdout[-5000:]
    assert "check of 2 snapshot(s) passed (read 100 % of the data)" in " ".join(checked.stdout.split())
    prom = (root.parent / "metrics" / "llmops_offsite.prom").read_text()
    assert "llmops_offsite_check_last_success 1.0" in prom and "llmops_offsite_last_run_success 1.0" in prom

    # a damaged pack is found by the check (read-data-subset reads it back), and the failure is recorded
    data = sorted(k for k in keys if k.startswith("llmops/data/"))
    body = s3["client"].get_object(Bucket=BUCKET, Key=data[0])["Body"].read()
    s3["client"].put_object(Bucket=BUCKET, Key=data[0], Body=body[:-64] + bytes(64))
    damaged = offsite(tmp_path, root, s3, "-e", "offsite_operation=check", offsite_check_subset_pct=100,
                      offsite_retries=0)
    assert damaged.returncode != 0 and "restic check failed" in damaged.stdout, damaged.stdout[-3000:]
    assert "llmops_offsite_check_last_success 0.0" in (root.parent / "metrics" / "llmops_offsite.prom").read_text()
