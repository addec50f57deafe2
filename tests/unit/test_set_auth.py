"""Authenticated sets (issue 13): SHA256SUMS.hmac, an HMAC-SHA256 of the set id and the exact bytes of SHA256SUMS
under a key kept off the backup volume. Written by finalize before the rename; verify_set and the restore plan,
given the key, refuse a set whose HMAC is missing (unless allow_unauthenticated), made with another key, or wrong
(SHA256SUMS and the manifest edited together, the set renamed)."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
from ansible.module_utils import llmops_backupset as bs
from ansible.module_utils.llmops_restore import plan_restore

KEY = "k" * 8 + "3f9a0c7e1b2d4f6a8c0e2a4b6d8f0a1c"
OTHER = "o" * 8 + "77aa55cc33ee11ff99dd77bb55993311"
T0 = datetime.datetime(2026, 1, 31, 2, 0, 0, tzinfo=datetime.UTC)


def make_set(root: Path, key: str | None = KEY, when: datetime.datetime = T0, files: dict | None = None) -> str:
    """A finalized set with an uploads component, authenticated with ``key`` (none: not authenticated)."""
    files = files or {"uploads/tree/a.txt": b"alpha\n", "uploads/tree/b.txt": b"beta\n"}
    partial = bs.begin_set(str(root), "llmops", when)
    for rel, data in files.items():
        full = os.path.join(partial, rel)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        Path(full).write_bytes(data)
    entries = bs.hash_set_files(partial)
    set_id = os.path.basename(partial)[1:-len(".partial")]
    manifest = {"id": set_id, "name": "llmops", "status": "success", "started": bs.isoformat(when),
                "ended": bs.isoformat(when + datetime.timedelta(seconds=5)),
                "components": {"uploads": {"type": "files", "status": "success",
                                           "files": [e for e in entries if e["path"].startswith("uploads/")]}}}
    bs.write_manifest(partial, manifest, files=entries)
    return bs.finalize_set(partial, str(root), "success", auth_key=key)


def forge(set_path: str, edit) -> None:
    """Edit the manifest with ``edit`` and rewrite SHA256SUMS to match, as an attacker with write access would."""
    manifest_path = os.path.join(set_path, bs.MANIFEST)
    manifest = json.loads(Path(manifest_path).read_text())
    edit(manifest)
    Path(manifest_path).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    sums = {e["path"]: e["sha256"] for e in manifest["files"]}
    sums[bs.MANIFEST] = hashlib.sha256(Path(manifest_path).read_bytes()).hexdigest()
    Path(set_path, bs.SUMS).write_bytes(bs.format_sums(sums))


def test_finalize_writes_a_versioned_hmac_that_verifies_and_sha256sum_still_accepts(tmp_path):
    path = make_set(tmp_path / "b")
    line = Path(path, bs.SUMS_HMAC).read_text()
    set_id = os.path.basename(path)
    key_id = hashlib.sha256(KEY.encode()).hexdigest()[:8]
    assert line.startswith(f"llmops-set-hmac v1 set={set_id} key={key_id} hmac-sha256="), line
    assert KEY not in line
    assert oct(os.stat(os.path.join(path, bs.SUMS_HMAC)).st_mode & 0o777) == "0o600"
    result = bs.verify_set(path, KEY)
    assert result["ok"], result
    assert result["auth"] == {"state": "authenticated", "key_id": key_id, "problem": None}
    assert bs.SUMS_HMAC not in result["extra"]
    assert bs.SUMS_HMAC not in bs.read_sums(path)
    assert subprocess.run(["sha256sum", "-c", "--strict", "--quiet", bs.SUMS], cwd=path).returncode == 0
    # without a key nothing is checked, and the plan says so
    assert bs.verify_set(path)["auth"]["state"] == "not_checked"


def test_a_wrong_key_is_named_as_another_key(tmp_path):
    path = make_set(tmp_path / "b")
    result = bs.verify_set(path, OTHER)
    assert not result["ok"]
    problem = result["auth"]["problem"]
    assert result["auth"]["state"] == "failed"
    assert f"authenticated with another key (key id {bs.auth_key_id(KEY)}" in problem
    assert f"has id {bs.auth_key_id(OTHER)}" in problem
    assert problem in result["errors"]


def test_a_missing_hmac_is_refused_unless_unauthenticated_sets_are_allowed(tmp_path):
    legacy = make_set(tmp_path / "b", key=None)
    assert not os.path.exists(os.path.join(legacy, bs.SUMS_HMAC))
    refused = bs.verify_set(legacy, KEY)
    assert not refused["ok"]
    assert "is not authenticated: it has no SHA256SUMS.hmac" in refused["auth"]["problem"]
    assert "allow_unauthenticated=true" in refused["auth"]["problem"]
    allowed = bs.verify_set(legacy, KEY, allow_unauthenticated=True)
    assert allowed["ok"] and allowed["auth"]["state"] == "unauthenticated_allowed"
    # allow_unauthenticated never accepts a wrong HMAC
    path = make_set(tmp_path / "c")
    assert not bs.verify_set(path, OTHER, allow_unauthenticated=True)["ok"]
    os.unlink(os.path.join(path, bs.SUMS_HMAC))  # deleting the HMAC of an authenticated set: refused too
    assert "has no SHA256SUMS.hmac" in bs.verify_set(path, KEY)["auth"]["problem"]


def test_a_renamed_set_fails_authentication(tmp_path):
    path = make_set(tmp_path / "b")
    renamed = os.path.join(tmp_path / "b", "llmops_20260201_020000")
    os.rename(path, renamed)
    result = bs.verify_set(renamed, KEY)
    assert not result["ok"]
    assert f"made as set {os.path.basename(path)} and renamed" in result["auth"]["problem"]
    # and an HMAC line edited to claim the new id does not match
    line = Path(renamed, bs.SUMS_HMAC).read_text().replace(os.path.basename(path), "llmops_20260201_020000")
    Path(renamed, bs.SUMS_HMAC).write_text(line)
    assert "does not match" in bs.verify_set(renamed, KEY)["auth"]["problem"]


def test_manifest_and_sums_edited_together_pass_checksums_but_fail_the_hmac(tmp_path):
    path = make_set(tmp_path / "b")
    Path(path, "uploads/tree/a.txt").write_bytes(b"planted\n")
    digest = hashlib.sha256(b"planted\n").hexdigest()

    def edit(manifest):
        for entry in manifest["files"] + manifest["components"]["uploads"]["files"]:
            if entry["path"] == "uploads/tree/a.txt":
                entry.update(sha256=digest, size=8)

    forge(path, edit)
    assert bs.verify_set(path)["ok"]  # consistent checksums: without the HMAC the forgery passes
    result = bs.verify_set(path, KEY)
    assert not result["ok"]
    assert "the HMAC in SHA256SUMS.hmac does not match SHA256SUMS" in result["auth"]["problem"]


def test_a_damaged_hmac_line_and_bad_keys(tmp_path):
    path = make_set(tmp_path / "b")
    Path(path, bs.SUMS_HMAC).write_text("llmops-set-hmac v2 whatever\n")
    assert "is not a 'llmops-set-hmac v1' line" in bs.verify_set(path, KEY)["auth"]["problem"]
    with pytest.raises(bs.BackupSetError, match="fewer than 16"):
        bs.verify_set(path, "short")
    with pytest.raises(bs.BackupSetError, match="example value"):
        bs.auth_key_id("change-me-backup-auth-key")


def test_finalize_with_a_bad_key_touches_nothing(tmp_path):
    root = tmp_path / "b"
    partial = bs.begin_set(str(root), "llmops", T0)
    Path(partial, "uploads").mkdir()
    Path(partial, "uploads", "x").write_bytes(b"x")
    bs.write_manifest(partial, {"id": os.path.basename(partial)[1:-8], "status": "success", "components": {}})
    with pytest.raises(bs.BackupSetError, match="fewer than 16"):
        bs.finalize_set(partial, str(root), "success", auth_key="short")
    assert os.path.isdir(partial) and os.path.exists(os.path.join(partial, bs.OWNER))
    assert not os.path.exists(os.path.join(partial, bs.SUMS_HMAC))


def test_an_hmac_planted_in_a_partial_is_not_kept(tmp_path):
    root = tmp_path / "b"
    partial = bs.begin_set(str(root), "llmops", T0)
    Path(partial, bs.SUMS_HMAC).write_text("llmops-set-hmac v1 set=x_20260101_000000 key=00000000 hmac-sha256=%s\n"
                                           % ("0" * 64))
    bs.write_manifest(partial, {"id": os.path.basename(partial)[1:-8], "status": "success", "components": {}})
    path = bs.finalize_set(partial, str(root), "success")
    assert bs.load_manifest(path)["status"] == "failed"  # the name is reserved
    assert not os.path.exists(os.path.join(path, bs.SUMS_HMAC))


def test_the_restore_plan_refuses_naming_why_and_warns_without_a_key(tmp_path):
    root = tmp_path / "b"
    path = make_set(root)
    good = plan_restore(str(root), "latest", auth_key=KEY)
    assert good["ok"], good["problems"]
    assert good["authentication"] == {os.path.basename(path): "authenticated"}
    assert not good["warnings"]
    assert "not authenticated: informational only" in good["restore_tested"]
    unkeyed = plan_restore(str(root), "latest")
    assert unkeyed["ok"] and any("no backup_auth_key configured" in w for w in unkeyed["warnings"])
    wrong = plan_restore(str(root), "latest", auth_key=OTHER)
    assert not wrong["ok"]
    assert any("authenticated with another key" in p for p in wrong["problems"])
    forge(path, lambda m: m.update(host="elsewhere"))
    edited = plan_restore(str(root), "latest", auth_key=KEY)
    assert not edited["ok"] and any("does not match SHA256SUMS" in p for p in edited["problems"])

    legacy_root = tmp_path / "legacy"
    make_set(legacy_root, key=None)
    refused = plan_restore(str(legacy_root), "latest", auth_key=KEY)
    assert not refused["ok"] and any("allow_unauthenticated" in p for p in refused["problems"])
    allowed = plan_restore(str(legacy_root), "latest", auth_key=KEY, allow_unauthenticated=True)
    assert allowed["ok"]
    assert any("accepted only because allow_unauthenticated" in w for w in allowed["warnings"])
