"""Fault matrix, Qdrant snapshots a killed backup left (issue 13, item 1): a backup killed while Qdrant held its
snapshot leaves that snapshot on the server (a full copy of the collection on Qdrant's disk).

qdrant_backup records every server-side snapshot it creates in the backup root's ledger (LAYOUT
``qdrant_snapshots``) with its own process until it deletes it; the next run deletes the snapshots whose
process is gone, and only those: Qdrant names snapshots itself, so an operator's snapshot or one of a run still
going (its process alive) looks the same and is kept.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess

import pytest
from ansible.module_utils.llmops_backupset import boot_id, process_start_time
from ansible.module_utils.llmops_layout import layout_path
from ansible.module_utils.llmops_qdrant import QdrantClient, QdrantError

from tests.conftest import run_module


def owner(pid: int, start: int) -> dict:
    return {"host": socket.gethostname(), "boot_id": boot_id(), "pid": pid, "pid_start": start,
            "pid_cmd": "qdrant_backup"}


@pytest.mark.lab
def test_the_next_run_deletes_only_the_snapshots_a_dead_run_left(lab, tmp_path):
    """The snapshot a killed run recorded is deleted by the next run and said so; the operator's snapshot and
    the one a live process recorded stay on the server; the ledger keeps only the live one."""
    url = f"http://127.0.0.1:{lab.ports['qdrant']}"
    client = QdrantClient(url, api_key=lab.secret("qdrant_api_key"), timeout=60)
    name = f"t_left_{secrets.token_hex(4)}"
    client.create_collection(name, 4, "Cosine")
    try:
        client.upsert_points(name, [{"id": i, "vector": [0.1 * i, 0.2, 0.3, 0.4], "payload": {"n": i}}
                                    for i in range(1, 20)])
        left = client.create_snapshot(name)["name"]          # the killed run's
        operators = client.create_snapshot(name)["name"]     # an operator's own, never recorded
        running = client.create_snapshot(name)["name"]       # a run still going (this test's process)
        gone = subprocess.Popen(["true"])
        gone.wait()                                          # a process that was, and is no more
        root = tmp_path / "backups"
        root.mkdir(mode=0o700)
        ledger = layout_path(str(root), "qdrant_snapshots")
        entries = [dict(owner(gone.pid, 1), url=url, collection=name, name=left, created="2026-01-01T00:00:00Z"),
                   dict(owner(os.getpid(), process_start_time(os.getpid())), url=url, collection=name,
                        name=running, created="2026-01-01T00:00:00Z")]
        with open(ledger, "w", encoding="utf-8") as handle:
            json.dump({"format": "llmops-qdrant-snapshots/1", "snapshots": entries}, handle)
        result = run_module("qdrant_backup", {"dest": str(root / "qdrant"), "url": url,
                                              "api_key": "{{ qdrant_api_key }}", "collections": [name],
                                              "backup_root": str(root)})
        assert not result.get("failed"), result
        component = result["component"]
        assert component["stale_snapshots_deleted"] == [f"{name}/{left}"]
        assert any(left in w and "a backup which died had left" in w for w in component["warnings"])
        on_server = {s["name"] for s in client.list_snapshots(name)}
        assert left not in on_server and {operators, running} <= on_server, on_server
        assert component["collections"][name]["server_snapshot_deleted"]
        assert component["collections"][name]["snapshot"] not in on_server  # its own deleted as it went
        kept = json.load(open(ledger, encoding="utf-8"))["snapshots"]
        assert [e["name"] for e in kept] == [running]
    finally:
        try:
            client.delete_collection(name)
        except QdrantError:
            pass
