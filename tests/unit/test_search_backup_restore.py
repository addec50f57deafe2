"""The search component's backup and restore (module_utils/llmops_search*.py, library/search_*.py) against the
Elasticsearch STAND-IN running as a subprocess: real snapshot files, a real zstd artefact, every restore step.
The modules run through `ansible` with the lab inventory's local connection (tests/conftest.run_module)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from ansible.module_utils.llmops_search import SearchBackupError, SearchError, backup
from ansible.module_utils.llmops_search_restore import (
    SAFETY_REPOSITORY,
    STAGED_REPOSITORY,
    SearchRestoreError,
    cleanup,
    load,
    rollback,
    set_indices,
    stage,
    swap,
    verify,
)

from tests.conftest import make_set, run_module
from tests.unit.test_search_standin import PASSWORD, EsStandin, all_docs, seed

TAG = "pre-restore-test"


@pytest.fixture
def standin(tmp_path):
    proc = EsStandin(tmp_path / "es")
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def backup_into_set(standin, tmp_path, **kwargs):
    """Run ``backup`` into ``<set>/search`` and return ``(set_path, entry)`` with the file paths relative to the set,
    as backup_set records them."""
    set_path = tmp_path / "set"
    entry = backup(standin.client(), str(set_path / "search"), str(standin.repo), **kwargs)
    for item in entry["files"]:
        item["path"] = os.path.relpath(item["path"], set_path)
    return str(set_path), entry


def test_backup_delete_restore_brings_back_the_same_documents(standin, tmp_path):
    client = standin.client()
    docs = seed(client)
    set_path, entry = backup_into_set(standin, tmp_path)
    assert entry["type"] == "search" and entry["status"] == "success" and entry["compressed"] is True
    assert sorted(entry["indices"]) == ["docs_ko", "faq"]
    assert entry["fingerprint_source"] == "snapshot" and entry["fingerprint_stable"] is True
    assert entry["fingerprint"]["docs_ko"]["doc_count"] == len(docs["docs_ko"])
    artefact = Path(set_path) / entry["files"][0]["path"]
    assert artefact.name == "repository.tar.zst" and artefact.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"  # zstd magic
    import hashlib

    assert hashlib.sha256(artefact.read_bytes()).hexdigest() == entry["files"][0]["sha256"]
    assert entry["files"][0]["size"] == artefact.stat().st_size
    # the server's snapshot is gone once the set holds it
    assert entry["repository"]["server_snapshot_deleted"] is True
    with pytest.raises(SearchError) as err:
        client.get_snapshot("llmops_backup", entry["repository"]["snapshot"])
    assert err.value.status == 404

    # after the backup: docs_ko is lost, faq changes (and must stay as it is now: only docs_ko is restored)
    client.delete_index("docs_ko")
    client.put_doc("faq", "after-backup", {"answer": "새 답변"})
    staging = str(tmp_path / "staging")
    state = stage(client, set_path, entry, staging, str(standin.repo), TAG, patterns=["docs_*"])
    assert state["indices"] == ["docs_ko"] and os.path.isdir(state["unpacked"])
    assert client.get_repository(STAGED_REPOSITORY)["settings"]["readonly"] == "true"
    safety = swap(client, staging, TAG)
    assert safety["existed"] == {"docs_ko": False} and safety["snapshot"] is None  # nothing to keep
    loaded = load(client, staging)
    assert loaded["restored"] == ["docs_ko"] and loaded["health"] in ("green", "yellow")
    assert all_docs(client, "docs_ko") == docs["docs_ko"]
    assert client.get_doc("docs_ko", "$(touch /tmp/pwned)") == docs["docs_ko"]["$(touch /tmp/pwned)"]
    assert client.get_index("docs_ko")["docs_ko"]["mappings"]["properties"]["title"] == {"type": "text"}
    assert client.get_doc("faq", "after-backup") == {"answer": "새 답변"}
    result = verify(client, staging, set_indices(entry, ["docs_*"]))
    assert result["differences"] == {} and result["unverified"] == []
    assert "manifest" in result["against"]["docs_ko"]
    # verify can fail: a document changed after the load is found
    client.put_doc("docs_ko", "new\nline", {"title": "changed"})
    result = verify(client, staging, set_indices(entry, ["docs_*"]))
    assert list(result["differences"]) == ["docs_ko"] and "docs_sha256" in result["differences"]["docs_ko"][0]
    done = cleanup(client, staging, str(standin.repo), TAG, keep_safety_copy=False)
    assert client.get_repository(STAGED_REPOSITORY) is None
    assert not os.path.exists(staging) and not os.path.exists(state["unpacked"]) and done["removed"]


def test_swap_keeps_a_safety_snapshot_and_rollback_puts_it_back(standin, tmp_path):
    client = standin.client()
    docs = seed(client, n=20)
    set_path, entry = backup_into_set(standin, tmp_path, indices=["docs_ko", "faq"])
    client.put_doc("docs_ko", "written-after-backup", {"title": "나중"})
    before = {index: all_docs(client, index) for index in ("docs_ko", "faq")}
    staging = str(tmp_path / "staging")
    stage(client, set_path, entry, staging, str(standin.repo), TAG)
    safety = swap(client, staging, TAG)
    assert safety["existed"] == {"docs_ko": True, "faq": True} and safety["snapshot"].startswith(TAG)
    assert not client.index_exists("docs_ko") and not client.index_exists("faq")
    load(client, staging)
    assert all_docs(client, "docs_ko") == docs["docs_ko"]  # the set's state, without the later document
    back = rollback(client, staging)
    assert back["restored"] == ["docs_ko", "faq"]
    assert {index: all_docs(client, index) for index in ("docs_ko", "faq")} == before
    cleanup(client, staging, str(standin.repo), TAG, keep_safety_copy=True)
    assert client.get_snapshot(SAFETY_REPOSITORY, safety["snapshot"])["state"] == "SUCCESS"  # kept


def test_flipped_byte_is_refused_at_stage(standin, tmp_path):
    client = standin.client()
    seed(client, n=12)
    set_path, entry = backup_into_set(standin, tmp_path)
    artefact = Path(set_path) / entry["files"][0]["path"]
    data = bytearray(artefact.read_bytes())
    data[len(data) // 2] ^= 0x01
    artefact.write_bytes(bytes(data))
    with pytest.raises(SearchRestoreError, match="sha256 .* the manifest says") as err:
        stage(client, set_path, entry, str(tmp_path / "staging"), str(standin.repo), TAG)
    assert "nothing was unpacked" in str(err.value)
    assert not (standin.repo / f"llmops_restore_{TAG}").exists()
    assert client.get_repository(STAGED_REPOSITORY) is None
    assert not (tmp_path / "staging").exists()


def test_manifest_paths_are_untrusted(standin, tmp_path):
    client = standin.client()
    seed(client, n=4)
    set_path, entry = backup_into_set(standin, tmp_path)
    entry["files"][0]["path"] = "../../etc/repository.tar.zst"
    with pytest.raises(SearchRestoreError, match="not a plain path inside the set"):
        stage(client, set_path, entry, str(tmp_path / "staging"), str(standin.repo), TAG)
    with pytest.raises(SearchRestoreError, match="holds no index matching"):
        set_indices(entry, ["nothing*"])


def test_wrong_password_fails_clearly_without_the_password(standin, tmp_path):
    client = standin.client(password="wrong-" + PASSWORD)
    with pytest.raises(SearchError) as err:
        backup(client, str(tmp_path / "set" / "search"), str(standin.repo))
    assert err.value.status == 401 and "login_password" in str(err.value)
    assert PASSWORD not in str(err.value) and "wrong-" not in str(err.value)
    assert not (tmp_path / "set" / "search").exists()


def test_missing_path_repo_gives_a_clear_error(tmp_path):
    proc = EsStandin(tmp_path / "es", path_repo=False)
    proc.start()
    try:
        seed(proc.client(), n=4)
        with pytest.raises(SearchBackupError) as err:
            backup(proc.client(), str(tmp_path / "set" / "search"), str(proc.repo))
        assert "Set path.repo" in str(err.value) and "this setting is empty" in str(err.value)
    finally:
        proc.stop()


def test_red_index_fails_the_backup_with_its_name(standin, tmp_path):
    client = standin.client()
    seed(client, n=4)
    uuid = client.get_index("faq")["faq"]["settings"]["index"]["uuid"]
    standin.stop()
    (standin.data / "indices" / uuid / "docs.json").write_bytes(b"\x00 not json")  # a shard that cannot be read
    standin.start()
    client = standin.client()
    assert client.health()["status"] == "red"
    with pytest.raises(SearchBackupError, match=r"cluster health is red .*red indices: faq"):
        backup(client, str(tmp_path / "set" / "search"), str(standin.repo))
    entry = backup(client, str(tmp_path / "set2" / "search"), str(standin.repo), indices=["docs_*"])
    assert sorted(entry["indices"]) == ["docs_ko"]  # the healthy index alone can be backed up


def test_server_unchanged_fingerprint_for_unreadable_snapshots(standin, tmp_path, monkeypatch):
    """A real ES repository cannot be read here: the fingerprint is the server's, taken around the snapshot."""
    import ansible.module_utils.llmops_search as search

    client = standin.client()
    seed(client, n=10)
    monkeypatch.setattr(search, "snapshot_fingerprints", lambda repo_dir, snap: None)
    _set, entry = backup_into_set(standin, tmp_path)
    assert entry["fingerprint_source"] == "server-unchanged" and entry["fingerprint_stable"] is True
    monkeypatch.undo()
    readable = backup(client, str(tmp_path / "set4" / "search"), str(standin.repo))
    assert readable["fingerprint_source"] == "snapshot"
    assert readable["fingerprint"] == entry["fingerprint"]  # both describe the same documents


def test_modules_back_up_and_restore_through_ansible(standin, tmp_path):
    client = standin.client()
    docs = seed(client, n=16)
    conn = {"url": standin.url, "login_password": PASSWORD, "timeout": 30, "retries": 0}
    checked = run_module("search_backup", {"dest": str(tmp_path / "x"), "repo_path": str(standin.repo), **conn},
                         check_mode=True)
    assert not checked.get("failed"), checked.get("msg")
    assert checked["server"]["indices"]["docs_ko"]["doc_count"] == 16 and not (tmp_path / "x").exists()
    made = make_set(tmp_path / "backups", {"search": ("search_backup", {"repo_path": str(standin.repo), **conn})})
    manifest = json.loads((Path(made["path"]) / "backup_manifest.json").read_text())
    recorded = manifest["components"]["search"]
    assert recorded["fingerprint_source"] == "snapshot" and sorted(recorded["fingerprint"]) == ["docs_ko", "faq"]
    assert recorded["files"][0]["path"] == "search/repository.tar.zst"
    assert recorded["files"][0]["sha256"] in (Path(made["path"]) / "SHA256SUMS").read_text()
    assert PASSWORD not in json.dumps(made, ensure_ascii=False) + json.dumps(manifest, ensure_ascii=False)
    client.delete_index("docs_ko")
    args = {"set_path": made["path"], "staging": str(tmp_path / "staging"), "repo_path": str(standin.repo),
            "safety_tag": TAG, "indices": ["docs_ko"], **conn}
    for step in ("stage", "swap", "load", "verify", "cleanup"):
        result = run_module("search_restore", {"step": step, **args})
        assert not result.get("failed"), f"{step}: {result.get('msg')}"
        assert PASSWORD not in json.dumps(result, ensure_ascii=False)
    assert all_docs(client, "docs_ko") == docs["docs_ko"]

    wrong = run_module("search_backup", {"dest": str(tmp_path / "y"), "repo_path": str(standin.repo),
                                         **conn, "login_password": "wrong-" + PASSWORD})
    assert wrong.get("failed") and "HTTP 401" in wrong["msg"] and "login_password" in wrong["msg"]
    assert "wrong-" not in json.dumps(wrong)
    failed = run_module("search_restore", {"step": "swap", **args, "staging": str(tmp_path / "none")})
    assert failed.get("failed") and "run step=stage first" in failed["msg"] and "Next:" in failed["msg"]


def test_verify_step_failure_is_a_step_failed(standin, tmp_path):
    client = standin.client()
    seed(client, n=8)
    set_path, entry = backup_into_set(standin, tmp_path)
    staging = str(tmp_path / "staging")
    stage(client, set_path, entry, staging, str(standin.repo), TAG)
    swap(client, staging, TAG)
    load(client, staging)
    client.bulk([("delete", "faq", "q-0", None)])
    result = verify(client, staging, set_indices(entry))
    assert sorted(result["differences"]) == ["faq"]
    assert any(d.startswith("doc_count: expected 2, found 1") for d in result["differences"]["faq"])
