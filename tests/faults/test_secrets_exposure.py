"""Fault matrix, secrets (issue 13, item 8) and permissions (item 9).

A backup of every component, a restore dry run and a drill, each with `-vvv`, while every process's command line
(`/proc/*/cmdline`, readable by any user) is sampled every 20 ms. Afterwards none of the lab's secrets, in any
of the forms it could be written in (as is, base64, URL- or JSON-escaped), may appear in: a sampled command
line, the complete output of the runs, any file under the backup root (artefacts decompressed), every object
of the config history, or the metrics. The backup root, its sets, manifests, artefacts, the audit log and the
state file are private to their owner.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import urllib.parse
from pathlib import Path

import pytest
from ansible.module_utils.llmops_layout import backup_layout

from tests.cmdlines import CmdlineSampler
from tests.conftest import run_playbook

pytestmark = pytest.mark.lab

SECRETS = ["mariadb_root_password", "postgres_password", "redis_password", "qdrant_api_key", "backup_auth_key"]


def forms(secret: str) -> set[bytes]:
    raw = secret.encode()
    return {raw, base64.b64encode(raw), urllib.parse.quote(secret, safe="").encode(),
            json.dumps(secret)[1:-1].encode()}


def files_under(root: Path):
    """(path, bytes) of every regular file under root; .zst artefacts decompressed."""
    for path in sorted(root.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        if path.suffix == ".zst":
            data = subprocess.run(["zstd", "-dc", str(path)], capture_output=True, check=True).stdout
        else:
            data = path.read_bytes()
        yield path, data


def config_history(repo: Path) -> bytes:
    """Every object of the config history, as git stores them (decompressed)."""
    if not (repo / ".git").exists() and not (repo / "HEAD").exists():
        return b""
    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null"}
    return subprocess.run(["git", "-c", f"safe.directory={repo}", "-C", str(repo), "cat-file", "--batch-all-objects",
                           "--batch"], capture_output=True, check=True, env=env).stdout


def leaks(text: bytes, secrets: dict[str, set[bytes]]) -> list[str]:
    return sorted(name for name, variants in secrets.items() if any(v in text for v in variants))


@pytest.fixture(scope="module")
def runs(lab, tmp_path_factory):
    """The three runs with -vvv and the command lines sampled meanwhile."""
    root = tmp_path_factory.mktemp("secrets") / "backups"
    metrics = root.parent / "metrics"
    sampler = CmdlineSampler()
    sampler.start()
    try:
        outputs = {
            "backup": run_playbook("backup.yml", "-vvv", "-e", f"backup_root={root}", "-e", "backup_type=full",
                                   "-e", f"backup_metrics_dir={metrics}", check=False),
            "restore dry run": run_playbook("restore.yml", "-vvv", "-e", f"backup_root={root}", "-e", "dry_run=true",
                                            check=False),
            "drill": run_playbook("drill.yml", "-vvv", "-e", f"backup_root={root}",
                                  "-e", f"backup_metrics_dir={metrics}", check=False),
        }
    finally:
        sampler.stop()
    for name, proc in outputs.items():
        assert proc.returncode == 0, f"{name}: {proc.stdout[-3000:]}"
    secrets = {name: forms(lab.secret(name)) for name in SECRETS}
    assert all(len(lab.secret(name)) >= 12 for name in SECRETS)  # long enough not to match by chance
    return root, metrics, outputs, sampler, secrets


def test_no_secret_on_any_command_line(runs):
    _root, _metrics, _outputs, sampler, secrets = runs
    assert sampler.samples > 100 and len(sampler.seen) > 50  # it did watch the runs
    found = {cmd.replace(b"\0", b" ")[:200]: leaks(cmd, secrets) for cmd in sampler.seen if leaks(cmd, secrets)}
    assert found == {}


def test_no_secret_in_the_output_even_with_vvv(runs):
    _root, _metrics, outputs, _sampler, secrets = runs
    for name, proc in outputs.items():
        assert len(proc.stdout) > 5_000 and "configured module search path" in proc.stdout, name  # -vvv printed
        assert leaks((proc.stdout + proc.stderr).encode(), secrets) == [], name


def test_no_secret_in_the_sets_logs_state_metrics_or_config_history(runs):
    root, metrics, _outputs, _sampler, secrets = runs
    scanned = 0
    for folder in (root, metrics):
        for path, data in files_under(folder):
            assert leaks(data, secrets) == [], path
            scanned += 1
    assert scanned > 20
    history = config_history(Path(backup_layout(root)["config_repo"]))
    assert history, "the config history was not written"
    assert leaks(history, secrets) == []


def test_the_backup_root_is_private(runs):
    root, _metrics, _outputs, _sampler, _secrets = runs
    layout = backup_layout(root)
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    sets = [p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and (p / "backup_manifest.json").exists()]
    assert sets
    for set_dir in sets:
        assert stat.S_IMODE(set_dir.stat().st_mode) == 0o700, set_dir
        for path in set_dir.rglob("*"):
            if path.is_file() and not path.is_symlink() and path.parent.name != "uploads" \
                    and "uploads" not in path.relative_to(set_dir).parts[:2]:
                assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path
    for key in ("audit_log", "state_file"):
        assert stat.S_IMODE(os.stat(layout[key]).st_mode) & 0o077 == 0, key
    for key in ("binlogs", "config_repo", "drill_reports"):
        if os.path.isdir(layout[key]):
            assert stat.S_IMODE(os.stat(layout[key]).st_mode) & 0o077 == 0, key
