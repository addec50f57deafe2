"""The search engine (the lab's Elasticsearch STAND-IN, security on) through the playbooks: `backup.yml -e
components=search` writes the snapshot repository copy into a verified set while a writer keeps adding documents to
another index; an index deleted afterwards comes back with `restore.yml -e components=search -e confirm=yes` with the
same ids and documents (Korean text included); `drill.yml` restores a search-only set into the scratch stack and
verifies it there.

Each test works on indices of its own (``rt-<tag>-*``) and removes them, and the safety snapshots its restores
took, at the end.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import subprocess
import time

import pytest
from ansible.module_utils.llmops_search import SearchClient, fingerprint_docs

from tests.conftest import run_playbook
from tests.writer import Writer

pytestmark = pytest.mark.lab

KO_TEXT = ["검색 엔진 백업 문서", "복구 훈련 보고서 — 한국어 본문", "스냅샷은 매일 새벽 두 시",
           "따옴표 \"q\" 'q' `b` $(touch x)"]


def client_for(lab) -> SearchClient:
    return SearchClient(f"http://127.0.0.1:{lab.ports['search']}", password=lab.secret("search_password"), timeout=60,
                        retries=2)


def indices(tag: str) -> dict[str, str]:
    return {"ko": f"rt-{tag}-ko", "en": f"rt-{tag}-en", "live": f"rt-{tag}-live"}


def manifest(set_dir) -> dict:
    return json.loads((set_dir / "backup_manifest.json").read_text())


def docs_of(client: SearchClient, index: str) -> dict:
    client.refresh([index])
    return dict(client.iter_docs(index, page=50))


def safety_snapshots(client: SearchClient) -> list[dict]:
    if client.get_repository("llmops_safety") is None:
        return []
    return client.request("GET", "/_snapshot/llmops_safety/_all")[1].get("snapshots") or []


@pytest.fixture
def search(lab):
    """A client of the lab's search engine and this test's own indices (Korean and English documents); removes them
    and the safety snapshots taken meanwhile at the end."""
    client = client_for(lab)
    tag = secrets.token_hex(3)
    names = indices(tag)
    before = {s["snapshot"] for s in safety_snapshots(client)}
    docs = {names["ko"]: {f"문서-{i:03d} {KO_TEXT[i % 4][:6]}": {"title": f"{KO_TEXT[i % 4]} {i}", "n": i,
                                                              "tags": ["운영", "복구"]} for i in range(60)},
            names["en"]: {f"en-{i:03d}": {"title": f"runbook {i}", "n": i} for i in range(25)}}
    for index in docs:
        client.create_index(index, settings={"number_of_shards": 1, "number_of_replicas": 0})
    client.create_index(names["live"], settings={"number_of_shards": 1, "number_of_replicas": 0})
    client.bulk([("index", index, doc_id, source) for index, items in docs.items() for doc_id, source in items.items()])
    yield {"client": client, "names": names, "docs": docs, "tag": tag}
    for name in names.values():
        if client.index_exists(name):
            client.delete_index(name)
    for snap in safety_snapshots(client):
        if snap["snapshot"] not in before:
            client.delete_snapshot("llmops_safety", snap["snapshot"])


def test_backup_then_a_deleted_index_comes_back_with_the_same_documents(lab, search, tmp_path):
    client, names, docs = search["client"], search["names"], search["docs"]
    root = tmp_path / "backups"
    opts = ["-e", f"backup_root={root}", "-e", f"backup_metrics_dir={root}/metrics"]
    seed_before = {n: fingerprint_docs(docs_of(client, n).items()) for n in ("docs-ko", "docs-en")}

    client_w, live = client_for(lab), names["live"]
    writer = Writer(lambda n: client_w.put_doc(live, f"w-{n:05d}", {"n": n, "text": f"쓰기 {n}"}))
    writer.start()
    try:
        time.sleep(0.5)
        started = time.time()
        run_playbook("backup.yml", *opts, "-e", "components=search")
        time.sleep(0.5)
    finally:
        writer.stop()
    assert not writer.errors, writer.errors[:3]
    acked_before = writer.before(started)
    assert acked_before and len(writer.done) > len(acked_before)  # it kept writing during the backup

    # the set: the search artefact, listed with its sha256 in SHA256SUMS, and a fingerprint per index
    set_dir = (root / "latest").resolve()
    doc = manifest(set_dir)
    assert doc["status"] == "success" and set(doc["components"]) == {"search"}
    entry = doc["components"]["search"]
    assert entry["status"] == "success" and entry["fingerprint_source"] == "snapshot"
    assert [f["path"] for f in entry["files"]] == ["search/repository.tar.zst"]
    artefact = set_dir / "search" / "repository.tar.zst"
    sums = dict(reversed(line.split("  ", 1)) for line in (set_dir / "SHA256SUMS").read_text().splitlines())
    assert sums["search/repository.tar.zst"] == entry["files"][0]["sha256"] == \
        hashlib.sha256(artefact.read_bytes()).hexdigest()
    subprocess.run(["sha256sum", "-c", "--strict", "--quiet", "SHA256SUMS"], cwd=set_dir, check=True)
    assert entry["repository"]["server_snapshot_deleted"] is True
    for index, items in docs.items():
        assert entry["fingerprint"][index] == fingerprint_docs(items.items())
    assert set(entry["indices"]) >= {*names.values(), "docs-ko", "docs-en"}
    assert (root / "metrics" / "llmops_backup.prom").read_text().count('component="search"') > 0

    # delete one index, damage another: a selective restore brings both back, the writer's index is left alone
    client.delete_index(names["ko"])
    removed = next(iter(docs[names["en"]]))
    client.request("DELETE", f"/{names['en']}/_doc/{removed}")
    live_now = docs_of(client, names["live"])
    run_playbook("restore.yml", *opts, "-e", "components=search", "-e", "confirm=yes",
                 "-e", f"search_restore_indices={names['ko']},{names['en']}")
    for index, items in docs.items():
        back = docs_of(client, index)
        assert back == items  # the same ids, the same documents (Korean included)
        assert fingerprint_docs(back.items()) == entry["fingerprint"][index]
    assert docs_of(client, names["live"]) == live_now

    # the whole component: every index at the snapshot's point, the writer's a prefix holding every acknowledged write
    client.delete_index(names["ko"])
    proc = run_playbook("restore.yml", *opts, "-e", "components=search", "-e", "confirm=yes")
    assert "restore success" in proc.stdout
    assert docs_of(client, names["ko"]) == docs[names["ko"]]
    restored = {source["n"] for source in docs_of(client, names["live"]).values()}
    assert restored == set(range(len(restored))) and acked_before <= restored
    assert fingerprint_docs(docs_of(client, names["live"]).items()) == entry["fingerprint"][names["live"]]
    assert {n: fingerprint_docs(docs_of(client, n).items()) for n in ("docs-ko", "docs-en")} == seed_before
    # the indices it replaced are in a safety snapshot of the server's own repository
    taken = [s for s in safety_snapshots(client) if names["en"] in s["indices"]]
    assert taken and all(s["state"] == "SUCCESS" for s in taken)
    record = sorted((root / "recovery-records").glob("*.md"))[-1].read_text()
    assert "search" in record
    audit = [json.loads(line) for line in (root / "audit.log").read_text().splitlines()]
    assert [a["result"] for a in audit if a["action"] == "restore"] == ["success", "success"]


def test_a_search_only_set_is_drilled_in_the_scratch_stack(lab, search, tmp_path):
    root = tmp_path / "backups"
    opts = ["-e", f"backup_root={root}", "-e", f"backup_metrics_dir={root}/metrics"]
    run_playbook("backup.yml", *opts, "-e", "components=search")
    set_id = (root / "latest").resolve().name
    live = subprocess.run(["docker", "inspect", "-f", "{{.State.StartedAt}}", lab.containers["search"]],
                          capture_output=True, text=True, check=True).stdout
    proc = run_playbook("drill.yml", *opts, "-e", f"drill_backup_id={set_id}")
    assert "Search | verify each index against its snapshot's fingerprint" in proc.stdout
    report = json.loads(next((root / "drills").glob("drill_*/report.json")).read_text())
    assert report["passed"] is True and report["components"] == ["search"] and report["set_id"] == set_id
    assert set(report["rto_by_component"]) == {"search"}
    record = json.loads((root / set_id / "verification.json").read_text())["records"][-1]
    assert record["method"] == "restore" and record["result"] == "passed"
    assert record["components"] == {"search": "passed"}
    # the scratch stack is gone, the live search engine was not restarted and still holds this test's indices
    names = subprocess.run(["docker", "ps", "-a", "--format", "{{.Names}}"], capture_output=True, text=True).stdout
    assert not [n for n in names.split() if n.startswith("llmops-drill-")]
    assert subprocess.run(["docker", "inspect", "-f", "{{.State.StartedAt}}", lab.containers["search"]],
                          capture_output=True, text=True, check=True).stdout == live
    assert docs_of(search["client"], search["names"]["ko"]) == search["docs"][search["names"]["ko"]]
