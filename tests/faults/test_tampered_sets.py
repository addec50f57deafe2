"""Fault matrix, tampered sets (issue 13, item 10): an edited set is refused, naming why, before anything runs.

Whoever can write to the backup volume can edit a set.

One real set (MariaDB, the uploads, the configs; `backup.yml` with its own backup root, authenticated with the lab's
generated backup_auth_key) is copied for each case and tampered with there: the manifest and SHA256SUMS edited
together (consistent checksums), an absolute or `..` path in the manifest, a MariaDB chain entry that escapes the
backup root, the HMAC removed or made with another key, a planted git configuration in the config history. A dry run
(`restore.yml -e dry_run=true`) refuses in its plan task, the first that can fail: no task after it runs. The
structural checks (paths, chain) refuse even without a key (`-e backup_auth_key=`): they do not rest on the HMAC.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
from ansible.module_utils.llmops_backupset import format_sums

from tests.conftest import run_playbook

pytestmark = pytest.mark.lab

COMPONENTS = ["mariadb", "uploads", "configs"]
PLAN_TASK = "Verify the set and plan the restore"
NO_KEY = ("-e", "backup_auth_key=")
OTHER_KEY = ("-e", "backup_auth_key=" + "0ther-test-key-" + "9" * 40)


@pytest.fixture(scope="module")
def backup_set(lab, tmp_path_factory):
    root = tmp_path_factory.mktemp("tampered") / "backups"
    proc = run_playbook("backup.yml", "-e", f"backup_root={root}", "-e", f"components={','.join(COMPONENTS)}",
                        "-e", "backup_type=full", "-e", f"backup_metrics_dir={root.parent}/metrics", check=False)
    assert proc.returncode == 0, proc.stdout[-4000:]
    return root, (root / "latest").resolve().name


def copy_of(backup_set, tmp_path: Path) -> tuple[Path, Path]:
    root, set_id = backup_set
    copy = tmp_path / "backups"
    shutil.copytree(root, copy, symlinks=True)
    return copy, copy / set_id


def forge(set_dir: Path, edit) -> None:
    """Edit the manifest and rewrite SHA256SUMS to match it, as an attacker would."""
    path = set_dir / "backup_manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    lines = {e["path"]: e["sha256"] for e in manifest["files"]}
    lines["backup_manifest.json"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (set_dir / "SHA256SUMS").write_bytes(format_sums(lines))


def dry_run(root: Path, *extra: str, components: str = "mariadb,uploads"):
    return run_playbook("restore.yml", "-e", f"backup_root={root}", "-e", f"components={components}",
                        "-e", "dry_run=true", *extra, check=False)


def tasks_run(stdout: str) -> list[str]:
    return re.findall(r"^TASK \[(?:[\w.]+ : )?(.+?)\] \*+$", stdout, re.M)


def refused(proc, *words: str) -> None:
    out = proc.stdout
    assert proc.returncode != 0, out[-3000:]
    for word in words:
        assert word in out, (word, out[-3000:])
    assert tasks_run(out)[-1].startswith(PLAN_TASK), tasks_run(out)  # nothing after the verification ran


def test_the_set_is_authenticated_and_restores_in_a_dry_run(backup_set, tmp_path):
    """The untampered set carries SHA256SUMS.hmac and passes the dry run."""
    root, set_dir = copy_of(backup_set, tmp_path)
    line = (set_dir / "SHA256SUMS.hmac").read_text()
    assert line.startswith(f"llmops-set-hmac v1 set={set_dir.name} key="), line
    proc = dry_run(root)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "Stop here (dry run" in proc.stdout


def test_an_edited_manifest_and_sums_are_refused_by_the_hmac(backup_set, tmp_path):
    """Refused: consistent checksums, but the HMAC does not match (without a key the forgery would pass)."""
    root, set_dir = copy_of(backup_set, tmp_path)
    manifest = json.loads((set_dir / "backup_manifest.json").read_text())
    target = next(f for f in manifest["components"]["uploads"]["files"] if (set_dir / f["path"]).stat().st_size)
    (set_dir / target["path"]).write_bytes(b"planted by whoever can write to the NAS\n")
    digest = hashlib.sha256((set_dir / target["path"]).read_bytes()).hexdigest()

    def edit(m):
        for entry in m["files"] + m["components"]["uploads"]["files"]:
            if entry["path"] == target["path"]:
                entry.update(sha256=digest, size=(set_dir / target["path"]).stat().st_size)

    forge(set_dir, edit)
    refused(dry_run(root), "fails authentication", "does not match SHA256SUMS")
    unkeyed = dry_run(root, *NO_KEY)
    assert unkeyed.returncode == 0, unkeyed.stdout[-3000:]  # what the checksums alone cannot see
    assert "no backup_auth_key configured" in unkeyed.stdout + unkeyed.stderr  # a warning: stderr


def test_a_missing_hmac_another_key_and_a_renamed_set_are_refused(backup_set, tmp_path):
    """Refused, naming why: no HMAC (allow_unauthenticated accepts it), another key, a renamed set."""
    root, set_dir = copy_of(backup_set, tmp_path)
    refused(dry_run(root, *OTHER_KEY), "authenticated with another key")
    renamed = root / "llmops_20200101_000000"
    set_dir.rename(renamed)
    (root / "latest").unlink()
    (root / "latest").symlink_to(renamed.name)
    refused(dry_run(root), f"it was made as set {set_dir.name} and renamed")
    (renamed / "SHA256SUMS.hmac").unlink()
    refused(dry_run(root), "is not authenticated", "allow_unauthenticated=true")
    allowed = dry_run(root, "-e", "allow_unauthenticated=true")
    assert allowed.returncode == 0, allowed.stdout[-3000:]
    assert "accepted only because allow_unauthenticated" in allowed.stdout + allowed.stderr


@pytest.mark.parametrize("bad", ["/etc/passwd", "../../../../etc/passwd", "uploads/../../outside"])
@pytest.mark.parametrize("keyed", [True, False])
def test_an_absolute_or_dotdot_path_in_the_manifest_is_refused(backup_set, tmp_path, bad, keyed):
    """Refused: the manifest lists a path outside the set, with or without a key."""
    root, set_dir = copy_of(backup_set, tmp_path)
    forge(set_dir, lambda m: m["components"]["uploads"]["files"].append({"path": bad, "sha256": "0" * 64,
                                                                          "size": 1}))
    refused(dry_run(root, *(() if keyed else NO_KEY)), "lists paths outside the set", "do not restore from this set")


@pytest.mark.parametrize("entry", ["../../../../etc", "/var/lib/mysql", "llmops_20200101_000000/../../x"])
@pytest.mark.parametrize("keyed", [True, False])
def test_a_chain_entry_that_escapes_is_refused(backup_set, tmp_path, entry, keyed):
    """Refused: a MariaDB chain entry is not the id of a set in the backup root, with or without a key."""
    root, set_dir = copy_of(backup_set, tmp_path)
    forge(set_dir, lambda m: m["components"]["mariadb"].update(chain=[entry], backup_type="incremental"))
    proc = dry_run(root, *(() if keyed else NO_KEY), components="mariadb")
    refused(proc, "not the id of another set")
    if keyed:
        assert "does not match SHA256SUMS" in proc.stdout


def test_a_planted_git_config_never_runs_and_the_config_backup_refuses(backup_set, tmp_path):
    """Refused, nothing executed: a filter, fsmonitor, hooksPath and hooks planted in the config history."""
    root, _set_dir = copy_of(backup_set, tmp_path)
    repo = root / "configs.git-worktree"
    marker = tmp_path / "MARKER"
    evil = tmp_path / "evil.sh"
    evil.write_text(f'#!/bin/sh\necho "$0 $*" >> {marker}\ncat\n')
    evil.chmod(0o755)
    config = repo / ".git" / "config"
    config.write_text(config.read_text() + f'[filter "x"]\n\tclean = {evil} clean\n\tsmudge = {evil} smudge\n'
                      f"[core]\n\tfsmonitor = {evil} fsmonitor\n\thooksPath = {repo}/.git/hooks\n")
    (repo / ".git" / "info" / "attributes").write_text("* filter=x\n")
    (repo / ".git" / "hooks").mkdir(exist_ok=True)
    for hook in ("pre-commit", "post-commit", "post-checkout", "reference-transaction"):
        (repo / ".git" / "hooks" / hook).write_text(f"#!/bin/sh\nexec {evil} hook-{hook}\n")
        (repo / ".git" / "hooks" / hook).chmod(0o755)
    before = (root / "latest").resolve().name
    proc = run_playbook("backup.yml", "-e", f"backup_root={root}", "-e", "components=configs",
                        "-e", f"backup_metrics_dir={tmp_path}/metrics", check=False)
    assert "Git is not run there" in proc.stdout, proc.stdout[-4000:]
    assert "holds the setting 'filter.x.clean'" in proc.stdout
    assert (root / "latest").resolve().name == before  # the failed set did not become latest
    assert not marker.exists(), marker.read_text()
