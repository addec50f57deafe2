"""Fault matrix, damaged sets (issue 13, item 3): one flipped byte, a truncated artefact or a missing file, in
each kind of artefact a set holds. `restore.yml -e dry_run=true` and a real restore (`-e confirm=yes`) refuse
before they touch anything, naming the file.

One backup (every store, the uploads and the configs; `backup.yml` with its own backup root) is copied for each
case and damaged there. A real restore that refuses fails in its first task that can fail, the verification of
the set: the output shows no task after it (no service stopped, nothing staged).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import run_playbook

pytestmark = pytest.mark.lab

COMPONENTS = ["mariadb", "postgres", "redis", "qdrant", "uploads", "configs"]
DAMAGES = ["flip", "truncate", "missing"]
PLAN_TASK = "Verify the set and plan the restore"


@pytest.fixture(scope="module")
def backup_set(lab, tmp_path_factory):
    """One set of every component but the models (theirs is the model store, outside the set)."""
    root = tmp_path_factory.mktemp("damaged") / "backups"
    proc = run_playbook("backup.yml", "-e", f"backup_root={root}", "-e", f"components={','.join(COMPONENTS)}",
                        "-e", "backup_type=full", "-e", f"backup_metrics_dir={root.parent}/metrics", check=False)
    assert proc.returncode == 0, proc.stdout[-4000:]
    return root, (root / "latest").resolve().name


def artefact(set_dir: Path, component: str) -> str:
    """The largest file the manifest lists for the component (relative to the set)."""
    manifest = json.loads((set_dir / "backup_manifest.json").read_text())
    files = [f for f in manifest["components"][component]["files"] if (set_dir / f["path"]).stat().st_size > 1]
    return max(files, key=lambda f: (set_dir / f["path"]).stat().st_size)["path"]


def damage(path: Path, how: str) -> None:
    if how == "missing":
        path.unlink()
        return
    data = bytearray(path.read_bytes())
    if how == "flip":
        data[len(data) // 2] ^= 0x01
    else:
        del data[len(data) // 2:]
    path.write_bytes(bytes(data))


def damaged_copy(backup_set, tmp_path: Path, component: str, how: str) -> tuple[Path, str]:
    root, set_id = backup_set
    copy = tmp_path / "backups"
    shutil.copytree(root, copy, symlinks=True)
    rel = artefact(copy / set_id, component)
    damage(copy / set_id / rel, how)
    return copy, rel


def restore(root: Path, component: str, *extra: str):
    return run_playbook("restore.yml", "-e", f"backup_root={root}", "-e", f"components={component}", *extra,
                        check=False)


def tasks_run(stdout: str) -> list[str]:
    return re.findall(r"^TASK \[(?:[\w.]+ : )?(.+?)\] \*+$", stdout, re.M)


def refused(proc, rel: str, how: str) -> None:
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert "cannot go ahead" in proc.stdout and "fails verification" in proc.stdout, proc.stdout[-3000:]
    word = "missing" if how == "missing" else "checksum mismatch"
    assert f"{word} {rel}" in proc.stdout, proc.stdout[-3000:]
    run = tasks_run(proc.stdout)
    assert run[-1].startswith(PLAN_TASK), run  # nothing after the verification ran


@pytest.mark.slow
@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("component", COMPONENTS)
def test_a_dry_run_names_the_damaged_file(backup_set, tmp_path, component, how):
    root, rel = damaged_copy(backup_set, tmp_path, component, how)
    refused(restore(root, component, "-e", "dry_run=true"), rel, how)


@pytest.mark.slow
@pytest.mark.parametrize("component", COMPONENTS)
def test_a_real_restore_refuses_before_it_touches_anything(backup_set, tmp_path, component):
    root, rel = damaged_copy(backup_set, tmp_path, component, "flip")
    # the files restores point at copies, should the refusal ever fail
    live = tmp_path / "live"
    proc = restore(root, component, "-e", "confirm=yes", "-e", f"app_uploads_path={live}/uploads",
                   "-e", json.dumps({"app_config_paths": [f"{live}/etc"]}))
    refused(proc, rel, "flip")
    assert "Stop the application services" not in proc.stdout
    assert not live.exists() and not (root / ".restore").exists()
