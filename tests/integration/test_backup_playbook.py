"""playbooks/backup.yml end to end on the lab: one set with every component, checksummed and
atomically in place, metrics, audit line; selection; a failing component marks the set failed and
never becomes latest; check mode writes nothing."""

from __future__ import annotations

import http.server
import json
import os
import re
import subprocess
import threading

import pytest

from tests.conftest import run_playbook

pytestmark = pytest.mark.lab
ALL = {"mariadb", "postgres", "redis", "qdrant", "search", "uploads", "models", "configs"}


def backup(root, *extra: str, check: bool = True):
    return run_playbook("backup.yml", "-e", f"backup_root={root}", "-e", f"backup_metrics_dir={root}/metrics",
                        *extra, check=check)


def manifest(path) -> dict:
    return json.loads((path / "backup_manifest.json").read_text())


def test_a_full_run_backs_up_every_component_into_one_verified_set(lab, tmp_path):
    root = tmp_path / "backups"
    proc = backup(root, "-e", "backup_type=full")
    latest = root / "latest"
    assert latest.is_symlink()
    set_dir = latest.resolve()
    doc = manifest(set_dir)
    assert doc["status"] == "success" and set(doc["components"]) == ALL
    assert all(c["status"] == "success" for c in doc["components"].values())
    assert doc["components"]["mariadb"]["backup_type"] == "full"
    subprocess.run(["sha256sum", "-c", "--strict", "--quiet", "SHA256SUMS"], cwd=set_dir, check=True)
    assert not list(root.glob(".*.partial"))
    assert oct(set_dir.stat().st_mode & 0o777) == "0o700"
    # progress was reported and the summary printed
    assert "component" in proc.stdout and "verified" in proc.stdout
    metrics = (root / "metrics" / "llmops_backup.prom").read_text()
    for name in ALL:
        assert f'llmops_backup_last_run_success{{component="{name}"}} 1.0' in metrics
    assert "llmops_backup_storage_free_bytes" in metrics
    audit = json.loads((root / "audit.log").read_text().splitlines()[-1])
    assert audit["action"] == "backup" and audit["result"] == "success" and audit["set"] == set_dir.name

    # the first set holds no earlier set's files: every byte it holds is new
    uploads = doc["components"]["uploads"]
    assert uploads["new_bytes"] == sum(f["size"] for f in uploads["files"]) > 0

    # an incremental MariaDB run builds on it; the uploads tree hard-links what did not change
    proc = backup(root, "-e", "components=mariadb,uploads")
    newest = (root / "latest").resolve()
    assert newest != set_dir
    doc = manifest(newest)
    assert doc["components"]["mariadb"]["parent"] == set_dir.name
    # the summary reports the bytes the set added beside its logical size, as the volume shows them
    uploads = doc["components"]["uploads"]
    logical = sum(f["size"] for f in uploads["files"])
    single = sum(f["size"] for f in uploads["files"] if os.stat(newest / f["path"]).st_nlink == 1)
    assert uploads["new_bytes"] == single < logical
    assert doc["components"]["mariadb"]["new_bytes"] == sum(f["size"] for f in doc["components"]["mariadb"]["files"])
    assert re.search(r"component +type +size +new +duration +verified +status", proc.stdout)
    metrics = (root / "metrics" / "llmops_backup.prom").read_text()
    assert f'llmops_backup_new_bytes{{component="uploads"}} {float(single)}' in metrics


class Hook(http.server.BaseHTTPRequestHandler):
    """A Slack / Discord style webhook receiver that keeps what it was sent."""

    received: list = []

    def do_POST(self):  # noqa: N802 - http.server's name
        self.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_failing_component_fails_the_set_and_it_never_becomes_latest(lab, tmp_path):
    root = tmp_path / "backups"
    backup(root, "-e", "components=postgres")
    good = (root / "latest").resolve()
    server = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{server.server_address[1]}/hook"
    try:
        proc = backup(root, "-e", "components=postgres,redis", "-e", "redis_password=wrong-password-123",
                      "-e", f"alert_webhook_url={hook}", check=False)
    finally:
        server.shutdown()
    critical = [m for m in Hook.received if m["text"].startswith("CRITICAL")]
    assert critical and "FAILED" in critical[0]["text"] and critical[0]["content"] == critical[0]["text"]
    assert not any("wrong-password-123" in m["text"] for m in Hook.received)
    assert proc.returncode != 0
    assert (root / "latest").resolve() == good
    failed = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("llmops_") and p != good]
    assert len(failed) == 1
    doc = manifest(failed[0])
    assert doc["status"] == "failed"
    assert doc["components"]["postgres"]["status"] == "success" and doc["components"]["redis"]["status"] == "failed"
    assert "ALERT" in proc.stdout and "FAILED" in proc.stdout
    assert "wrong-password-123" not in proc.stdout


def test_selection_is_checked_and_check_mode_writes_nothing(lab, tmp_path):
    root = tmp_path / "backups"
    bad = backup(root, "-e", "components=mariadb,nosuch", check=False)
    assert bad.returncode != 0 and "nosuch" in bad.stdout
    checked = backup(root, "--check", check=False)
    assert checked.returncode == 0, checked.stdout[-3000:]
    assert not root.exists() or not [p for p in os.listdir(root) if not p.startswith(".")]
