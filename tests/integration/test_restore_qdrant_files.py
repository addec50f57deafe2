"""playbooks/restore.yml for Qdrant, the uploads, the models and the configuration on the live lab.

Qdrant tests use collections of their own (``t_rq_<random>``, backed up alone, dropped at the end).
File tests back up COPIES of the lab's uploads, models and config in ``tmp_path`` and point
``app_uploads_path``/``models_path``/``app_config_paths`` at them, so the lab's folders are untouched.
"""

from __future__ import annotations

import json
import os
import random
import re
import secrets
import shutil
import uuid
from pathlib import Path

import pytest
from ansible.module_utils.llmops_backupset import restore_owner_path
from ansible.module_utils.llmops_files import tree_hash
from ansible.module_utils.llmops_qdrant import QdrantClient, QdrantError

from tests.conftest import LAB_STATE, make_set, run_module, run_playbook

pytestmark = pytest.mark.lab

DIM = 8


def restore(root, components: str, extra_vars: dict | None = None, *args: str):
    extra = ["-e", json.dumps(extra_vars)] if extra_vars else []
    return run_playbook("restore.yml", "-e", f"backup_root={root}", "-e", f"components={components}",
                        "-e", "confirm=yes", *extra, *args, check=False)


# ------------------------------------------------------------------------------------------ qdrant


@pytest.fixture
def qdrant(lab):
    return QdrantClient(f"http://127.0.0.1:{lab.ports['qdrant']}", api_key=lab.secret("qdrant_api_key"), timeout=60)


@pytest.fixture
def collection(qdrant):
    """A fresh collection of 300 points (integer and UUID ids, unicode payloads); dropped afterwards."""
    name = f"t_rq_{secrets.token_hex(4)}"
    rng = random.Random(name)
    qdrant.create_collection(name, DIM, "Cosine")
    points = [{"id": i + 1 if i % 4 else str(uuid.UUID(int=rng.getrandbits(128))),
               "vector": [rng.uniform(-1, 1) for _ in range(DIM)],
               "payload": {"text": f"Grüße 日本語 #{i}", "n": i, "nested": {"k": [1, None]}}} for i in range(300)]
    qdrant.upsert_points(name, points)
    yield name
    try:
        qdrant.delete_collection(name)
    except QdrantError:
        pass


def all_points(client, name):
    return {json.dumps(p["id"]): (p["payload"], p["vector"]) for p in client.scroll_all(name)}


def same_points(actual, expected):
    """Equal ids and payloads, vectors to 1e-9 (the stand-in normalises Cosine vectors again when it loads a
    snapshot, which may change the last bit)."""
    return actual.keys() == expected.keys() and all(
        actual[k][0] == expected[k][0] and actual[k][1] == pytest.approx(expected[k][1], abs=1e-9) for k in expected)


def qdrant_set(lab, root, name):
    return make_set(root, {"qdrant": ("qdrant_backup", {"url": f"http://127.0.0.1:{lab.ports['qdrant']}",
                                                        "api_key": "{{ qdrant_api_key }}", "collections": [name]})})


def test_qdrant_restore_brings_damaged_points_back(lab, qdrant, collection, tmp_path):
    root = tmp_path / "backups"
    original = all_points(qdrant, collection)
    qdrant_set(lab, root, collection)
    # damage (the stand-in cannot delete points): the collection dropped and recreated with half of its points,
    # one payload overwritten and a point that was not in the backup
    kept = [{"id": json.loads(pid), "vector": vec, "payload": payload}
            for pid, (payload, vec) in list(original.items())[::2]]
    qdrant.delete_collection(collection)
    qdrant.create_collection(collection, DIM, "Cosine")
    qdrant.upsert_points(collection, kept[1:] + [dict(kept[0], payload={"text": "damaged"}),
                                                  {"id": 99999, "vector": [0.5] * DIM, "payload": {}}])
    assert all_points(qdrant, collection) != original
    proc = restore(root, "qdrant")
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert same_points(all_points(qdrant, collection), original)
    record = next((root / "recovery-records").glob("*.md")).read_text()
    assert f"qdrant ({collection})" in record
    # the safety snapshot of the damaged collection was kept
    assert list((root / ".restore" / "qdrant").glob(f"pre-restore-*/{collection}.snapshot"))


def test_a_corrupted_snapshot_is_caught_before_anything_changes(lab, qdrant, collection, tmp_path):
    root = tmp_path / "backups"
    final = qdrant_set(lab, root, collection)
    snapshot = root / final["set_id"] / "qdrant" / f"{collection}.snapshot"
    data = bytearray(snapshot.read_bytes())
    data[len(data) // 2] ^= 0xFF
    snapshot.write_bytes(bytes(data))
    qdrant.upsert_points(collection, [{"id": 99999, "vector": [0.5] * DIM, "payload": {"text": "after the backup"}}])
    damaged = all_points(qdrant, collection)
    proc = restore(root, "qdrant")
    assert proc.returncode != 0 and "fails verification" in proc.stdout
    assert all_points(qdrant, collection) == damaged
    # the module itself checks the file again right before uploading (the plan is not its only guard)
    direct = run_module("qdrant_restore", {"step": "load", "set_path": str(root / final["set_id"]),
                                           "staging": str(tmp_path / "staging"),
                                           "url": f"http://127.0.0.1:{lab.ports['qdrant']}",
                                           "api_key": "{{ qdrant_api_key }}"})
    assert direct.get("failed") and "nothing was uploaded" in direct["msg"]
    assert all_points(qdrant, collection) == damaged


# ------------------------------------------------------------------------------------------ files


@pytest.fixture
def copies(tmp_path):
    """Copies of the lab's uploads, models and config folder, and the extra vars pointing at them."""
    base = tmp_path / "live"
    uploads, models, etc = base / "uploads", base / "models", base / "etc" / "llmops"
    shutil.copytree(LAB_STATE / "data" / "appdb" / "uploads", uploads, symlinks=True)
    shutil.copytree(LAB_STATE / "data" / "ai" / "models", models, symlinks=True)
    shutil.copytree(LAB_STATE / "etc" / "llmops", etc, symlinks=True)
    assert os.readlink(models / "llm" / "current") == "v2"
    return {"app_uploads_path": str(uploads), "models_path": str(models), "app_config_paths": [str(etc)]}


def files_set(root, paths):
    return make_set(root, {
        "uploads": ("files_backup", {"mode": "tree", "src": paths["app_uploads_path"], "backup_root": str(root)}),
        "models": ("files_backup", {"mode": "models", "src": paths["models_path"], "backup_root": str(root)}),
        "configs": ("files_backup", {"mode": "configs", "paths": paths["app_config_paths"],
                                     "backup_root": str(root)}),
    })


def snapshot_files(folder) -> dict:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() and not p.is_symlink() else os.readlink(p)
                                         if p.is_symlink() else None) for p in sorted(folder.rglob("*"))}


def test_files_restore_brings_uploads_models_and_configs_back(copies, tmp_path):
    root = tmp_path / "backups"
    uploads, models, etc = (tmp_path / "live" / n for n in ("uploads", "models", "etc/llmops"))
    before = {"uploads": tree_hash(uploads), "models": snapshot_files(models), "etc": snapshot_files(etc)}
    final = files_set(root, copies)
    assert final["manifest"]["components"]["uploads"]["fingerprint"]["tree_sha256"] == before["uploads"]
    # damage: uploads deleted and added, a model file changed, current moved, a config edited and one deleted
    victim = next(p for p in uploads.rglob("*") if p.is_file())
    victim.unlink()
    (uploads / "stray.txt").write_text("not in the backup")
    (models / "llm" / "v2" / "model.safetensors").write_bytes(b"corrupted weights")
    os.remove(models / "llm" / "current")
    os.symlink("v1", models / "llm" / "current")
    (etc / "app.yaml").write_text("broken: [\n")
    (etc / "prompts.txt").unlink()
    proc = restore(root, "uploads,models,configs", copies)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert tree_hash(uploads) == before["uploads"]
    assert not (uploads / "stray.txt").exists()
    assert {k: v for k, v in snapshot_files(models).items() if ".pre-restore-" not in k} == before["models"]
    assert os.readlink(models / "llm" / "current") == "v2"
    assert snapshot_files(etc) == before["etc"]
    # the safety copies (of uploads, the changed model version and the config folder) are kept
    assert list(uploads.parent.glob("uploads.pre-restore-*"))
    assert list((models / "llm").glob(".v2.pre-restore-*"))
    assert list(etc.parent.glob("llmops.pre-restore-*"))
    audit = [json.loads(line) for line in (root / "audit.log").read_text().splitlines()]
    assert audit[-1]["result"] == "success"


def test_model_version_rollback_and_a_failed_check_changes_nothing(copies, tmp_path):
    root = tmp_path / "backups"
    models = tmp_path / "live" / "models"
    final = files_set(root, copies)
    v1 = (models / "llm" / "v1" / "model.safetensors").read_bytes()
    shutil.rmtree(models / "llm" / "v1")  # v1 is gone from the host, only the store has it
    proc = restore(root, "models", dict(copies, model_version="llm=v1"))
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert os.readlink(models / "llm" / "current") == "v1"
    assert (models / "llm" / "current" / "model.safetensors").read_bytes() == v1
    assert (models / "llm" / "v2").is_dir()  # the previous version stays
    # a store copy that fails its check: nothing changes, current keeps pointing at v1
    store = root / final["manifest"]["components"]["models"]["models"]["llm"]["versions"]["v2"]["store"]
    os.chmod(store / "model.safetensors", 0o600)
    (store / "model.safetensors").write_bytes(b"bit rot")
    (models / "llm" / "v2" / "config.json").write_text("{}")
    before = snapshot_files(models)
    proc = restore(root, "models", dict(copies, model_version={"llm": "v2"}))
    assert proc.returncode != 0 and "fails its check" in proc.stdout
    assert snapshot_files(models) == before
    assert os.readlink(models / "llm" / "current") == "v1"


def test_an_audit_line_that_cannot_be_written_fails_the_restore_after_releasing_its_record(copies, tmp_path):
    root = tmp_path / "backups"
    uploads = Path(copies["app_uploads_path"])
    final = files_set(root, copies)
    (uploads / "stray.txt").write_text("not in the backup")
    (root / "audit.log").mkdir()  # a line cannot be appended to it
    proc = restore(root, "uploads", copies)
    assert proc.returncode != 0
    assert "the audit line of this restore could not be written" in proc.stdout and "Is a directory" in proc.stdout
    # the message holds the line to append by hand; the data was restored and the restore record released
    line = json.loads(re.search(r"by hand: (\{.*?\})\"?\s*$", proc.stdout, re.M).group(1))
    assert line["action"] == "restore" and line["result"] == "success"
    assert line["set"] == final["set_id"] and line["components"] == ["uploads"]
    assert not (uploads / "stray.txt").exists()
    assert not os.path.lexists(restore_owner_path(root)), "the restore record was kept"
