"""qdrant_backup against the lab's Qdrant stand-in: snapshot, checksum, restore, cleanup.

Each test works on collections of its own (``t_qb_<random>``) and drops them at the end; the
seeded ``documents`` and ``faq`` collections are only read.
"""

from __future__ import annotations

import json
import random
import secrets
import tarfile
import uuid

import pytest
from ansible.module_utils.llmops_pipeline import hash_file
from ansible.module_utils.llmops_qdrant import QdrantClient, QdrantError
from ansible.module_utils.llmops_qdrant_backup import fingerprint_collection, ids_digest, snapshot_fingerprint

from tests.conftest import run_module

pytestmark = [pytest.mark.lab, pytest.mark.slow]

DIM = 8
POINTS = 500
TEXTS = ["Grüße aus München", "日本語のテキスト", "emoji 🚀🧠", "quotes \"double\" and 'single'", "back\\slash",
         "tab\tand\nnewline", "Ελληνικά", "עברית", "العربية", "null\u0000byte?"]


def _points(rng: random.Random) -> list[dict]:
    points = []
    for i in range(POINTS):
        pid = i + 1 if i % 5 else str(uuid.UUID(int=rng.getrandbits(128)))
        payload = {"text": TEXTS[i % len(TEXTS)] + f" #{i}", "n": i, "score": rng.random(),
                   "tags": ["ü", "ß", str(i)], "nested": {"k": [1, {"deep": "wert"}], "none": None}, "flag": i % 2 == 0}
        points.append({"id": pid, "vector": [rng.uniform(-1, 1) for _ in range(DIM)], "payload": payload})
    return points


@pytest.fixture
def qdrant(lab):
    return QdrantClient(f"http://127.0.0.1:{lab.ports['qdrant']}", api_key=lab.secret("qdrant_api_key"), timeout=60)


@pytest.fixture
def collection(qdrant):
    """A fresh collection with ~500 points (integer and UUID ids, unicode payloads); dropped afterwards."""
    name = f"t_qb_{secrets.token_hex(4)}"
    qdrant.create_collection(name, DIM, "Cosine")
    points = _points(random.Random(name))
    for start in range(0, len(points), 200):
        qdrant.upsert_points(name, points[start:start + 200])
    created = [name]
    yield name, created
    for coll in created:
        try:
            qdrant.delete_collection(coll)
        except QdrantError:
            pass


def _all_points(client, name):
    return {json.dumps(p["id"]): (p["payload"], p["vector"]) for p in client.scroll_all(name)}


def test_backup_verify_and_restore(lab, qdrant, collection, tmp_path):
    name, created = collection
    dest = tmp_path / "qdrant"
    result = run_module("qdrant_backup", {"dest": str(dest), "url": f"http://127.0.0.1:{lab.ports['qdrant']}",
                                          "api_key": "{{ qdrant_api_key }}", "collections": [name]})
    assert not result.get("failed"), result.get("msg")
    comp = result["component"]
    assert comp["status"] == "success" and comp["type"] == "qdrant" and comp["backup_type"] == "full"
    assert comp["compressed"] is False and comp["server_version"] and comp["fingerprint_stable"] is True
    detail = comp["collections"][name]
    path = dest / f"{name}.snapshot"
    digest, size = hash_file(path)
    # sha256 of the file == what the module computed while streaming == the server's checksum
    assert digest == detail["sha256"] == detail["server_checksum"] == comp["files"][0]["sha256"]
    assert size == detail["size"] == comp["files"][0]["size"] == comp["bytes"]
    assert comp["files"] == [{"path": str(path), "sha256": digest, "size": size}]
    assert detail["checksum_verified"] is True and detail["server_snapshot_deleted"] is True
    assert (path.stat().st_mode & 0o077) == 0
    # The server-side snapshot is gone.
    assert qdrant.list_snapshots(name) == []

    # Fingerprint: the snapshot file's (count, vector config, ids and points hashes), equal to the live one here
    # since nothing wrote meanwhile; the ids hash is recomputed independently.
    source = _all_points(qdrant, name)
    fp = comp["fingerprint"][name]
    assert detail["fingerprint_source"] == "snapshot" and detail["snapshot_attempts"] == 1
    assert fp == snapshot_fingerprint(str(path), name) == {k: detail[k] for k in fp}
    assert fp["points_count"] == POINTS == len(source)
    assert fp["vectors"] == {"size": DIM, "distance": "Cosine"}
    assert fp["ids_sha256"] == ids_digest([json.loads(k) for k in source])
    live = fingerprint_collection(qdrant, name)
    assert {k: live[k] for k in fp} == fp

    # The snapshot is a tar archive (the stand-in's format: config + points as JSON).
    with tarfile.open(path) as tar:
        names = tar.getnames()
        assert {"config.json", "points.json"} <= set(names)
        assert json.loads(tar.extractfile("config.json").read())["points_count"] == POINTS
        archived = json.loads(tar.extractfile("points.json").read())
    assert {json.dumps(p["id"]): (p["payload"], p["vector"]) for p in archived} == source

    # Restore into a new collection through the upload API (checksum checked by the server).
    restored = f"{name}_restored"
    created.append(restored)
    qdrant.upload_snapshot(restored, str(path), checksum=digest)
    back = _all_points(qdrant, restored)
    assert back.keys() == source.keys()
    for key, (payload, vector) in source.items():
        assert back[key][0] == payload, key
        # The stand-in normalises Cosine vectors again when it loads a snapshot: last-bit differences only.
        assert back[key][1] == pytest.approx(vector, rel=1e-12, abs=1e-15), key
    refp = fingerprint_collection(qdrant, restored)
    assert {k: refp[k] for k in fp} == fp
    assert qdrant.list_snapshots(name) == []


def test_full_storage_and_all_collections(lab, qdrant, collection, tmp_path):
    name, _created = collection
    dest = tmp_path / "qdrant"
    result = run_module("qdrant_backup", {"dest": str(dest), "url": f"http://127.0.0.1:{lab.ports['qdrant']}",
                                          "api_key": "{{ qdrant_api_key }}", "full_storage": True})
    assert not result.get("failed"), result.get("msg")
    comp = result["component"]
    assert {"documents", "faq", name} <= set(comp["collections"])
    assert comp["fingerprint"]["documents"]["points_count"] == qdrant.count("documents")
    for coll, item in comp["collections"].items():  # each in a file of its own, named by encode_name
        assert (dest / item["file"]).is_file() and "/" not in item["file"], coll
    full = comp["full_storage"]
    assert full["checksum_verified"] and full["server_snapshot_deleted"]
    assert hash_file(dest / "full-storage.snapshot")[0] == full["sha256"] == full["server_checksum"]
    assert qdrant.list_full_snapshots() == []
    for coll in comp["collections"]:
        assert qdrant.list_snapshots(coll) == []


def test_check_mode_writes_nothing(lab, qdrant, collection, tmp_path):
    name, _created = collection
    dest = tmp_path / "qdrant"
    result = run_module("qdrant_backup", {"dest": str(dest), "url": f"http://127.0.0.1:{lab.ports['qdrant']}",
                                          "api_key": "{{ qdrant_api_key }}", "collections": [name]}, check_mode=True)
    assert not result.get("failed"), result.get("msg")
    assert result["changed"] is True and "component" not in result
    assert result["server"]["collections"][name] == {"points_count": POINTS, "file": f"{name}.snapshot",
                                                     "vectors": {"size": DIM, "distance": "Cosine"}}
    assert not dest.exists()
    assert qdrant.list_snapshots(name) == []


def test_wrong_api_key_fails_clearly(lab, tmp_path):
    wrong = "wrong-" + secrets.token_hex(12)
    dest = tmp_path / "qdrant"
    result = run_module("qdrant_backup", {"dest": str(dest), "url": f"http://127.0.0.1:{lab.ports['qdrant']}",
                                          "api_key": wrong, "retries": 0})
    assert result.get("failed") is True
    assert "Qdrant backup failed" in result["msg"] and "401" in result["msg"]
    assert wrong not in json.dumps(result)
    assert not dest.exists()


def test_missing_collection_fails_before_writing(lab, qdrant, tmp_path):
    dest = tmp_path / "qdrant"
    missing = f"t_qb_{secrets.token_hex(4)}_absent"
    result = run_module("qdrant_backup", {"dest": str(dest), "url": f"http://127.0.0.1:{lab.ports['qdrant']}",
                                          "api_key": "{{ qdrant_api_key }}", "collections": [missing]})
    assert result.get("failed") is True and "404" in result["msg"] and missing in result["msg"]
    assert not dest.exists()
