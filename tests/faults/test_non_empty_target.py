"""Fault matrix, a restore onto a target that holds data (issue 13, item 11): without the explicit switch
(``-e confirm=yes``).

``playbooks/restore.yml`` verifies and plans, then refuses before anything is stopped, moved or written, and
says how to go ahead; for each store the live data's fingerprint and its container's start time are the same
after as before, and no restore record, staging folder or recovery record is left. (The restore modules have no
switch of their own: each step that replaces data - ``swap``, ``load`` - first moves the live data aside as a
safety copy that ``rollback`` puts back, so no module overwrites a target without a way back; the switch is the
playbook's.)
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from pathlib import Path

import pytest
from ansible.module_utils.llmops_exec import ExecTarget
from ansible.module_utils.llmops_mariadb import fingerprint as mariadb_fingerprint
from ansible.module_utils.llmops_postgres import fingerprint as pg_fingerprint
from ansible.module_utils.llmops_qdrant import QdrantClient
from ansible.module_utils.llmops_qdrant_backup import fingerprint_collection
from ansible.module_utils.llmops_redis import fingerprint as redis_fingerprint

from module_utils.llmops_layout import layout_path
from tests.conftest import REPO
from tests.faults import faultkit as fk

pytestmark = pytest.mark.lab

STORES = ["mariadb", "postgres", "redis", "qdrant", "uploads", "models", "configs"]
LAB_DATA = REPO / ".state" / "lab"
FOLDERS = {"uploads": LAB_DATA / "data" / "appdb" / "uploads", "models": LAB_DATA / "data" / "ai" / "models",
           "configs": LAB_DATA / "etc" / "llmops"}


def started_at(container: str) -> str:
    return subprocess.run(["docker", "inspect", "-f", "{{.State.StartedAt}}", container], capture_output=True,
                          text=True, check=True).stdout.strip()


def live(lab, store: str):
    """The fingerprint of what ``store`` holds now (the seeded data), with its container's start time."""
    if store in FOLDERS:
        return fk.tree_digest(FOLDERS[store])
    container = lab.containers[store]
    if store == "mariadb":
        data = mariadb_fingerprint(ExecTarget(container), {"user": "root"}, databases=["llmops_app"])
    elif store == "postgres":
        data = pg_fingerprint(ExecTarget(container, "postgres"), ["rag", "analytics"])
    elif store == "redis":
        data = redis_fingerprint(ExecTarget(container), {}, lab.secret("redis_password"))
    else:
        client = QdrantClient(f"http://127.0.0.1:{lab.ports['qdrant']}", api_key=lab.secret("qdrant_api_key"))
        data = {name: fingerprint_collection(client, name) for name in ("documents", "faq")}
    return json.dumps(data, sort_keys=True, default=str), started_at(container)


@pytest.fixture(scope="module")
def backup_set(lab, tmp_path_factory):
    """One set of every store (the lab's live data, backed up into a root of this test's own)."""
    root = tmp_path_factory.mktemp("non-empty") / "backups"
    rc, out = fk.run_playbook("backup.yml", root.parent / "backup.log", secrets.token_hex(8), "-e",
                              f"backup_root={root}", "-e", f"backup_metrics_dir={root.parent / 'metrics'}", "-e",
                              "components=" + ",".join(STORES), "-e", "backup_type=full")
    assert rc == 0, out[-5000:]
    yield root
    subprocess.run(["rm", "-rf", str(root.parent)], check=False)


@pytest.mark.parametrize("store", STORES)
def test_a_restore_without_confirm_is_refused_and_changes_nothing(lab, backup_set, tmp_path, store):
    """Refused after the plan, saying how to go ahead; the store's data and its container are untouched, and no
    restore record, staging folder or recovery record is left."""
    root = backup_set
    before = live(lab, store)
    rc, out = fk.run_playbook("restore.yml", tmp_path / "restore.log", secrets.token_hex(8), "-e",
                              f"backup_root={root}", "-e", f"components={store}")
    assert rc != 0, out[-5000:]
    assert f"Refusing to restore: this replaces live data ({store})" in out, out[-5000:]
    assert "run again with -e confirm=yes" in out and "-e dry_run=true" in out
    assert live(lab, store) == before
    assert not os.path.lexists(layout_path(str(root), "restore_owner"))
    assert not os.path.lexists(layout_path(str(root), "restore_staging"))
    assert not list(Path(layout_path(str(root), "recovery_records")).glob("*"))  # no restore was recorded
