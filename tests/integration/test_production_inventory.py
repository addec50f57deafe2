"""The production inventory, run in the lab.

tests/inventories/prodlike/ takes every group_vars file of inventories/production as it is (links) and
overrides only what cannot be the same on the lab machine (zz_lab_overrides.yml: host and connection,
storage paths, images, services, ports, memory, GPU presence, secrets). On it must pass: backup.yml
without -e components (as the weekly and monthly jobs run it), every scheduled job of roles/backup_schedule
with its exact playbook and arguments (read from the role's defaults, so a job added there is tested
here), cleanup.yml and restore.yml dry runs, and the DR drill.

Isolation: every command runs on its own copy of one backup root under pytest's tmp_path, with its own
metrics folder; nothing is restored into the live lab (the drill and the restore test restore into the
scratch stack, ports 23306/25432/26379/26333, which one drill at a time can hold).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from module_utils.llmops_pipeline import AGE_HEADER
from tests.conftest import REPO, run_module, run_playbook

PRODLIKE = REPO / "tests" / "inventories" / "prodlike"
PRODUCTION_VARS = REPO / "inventories" / "production" / "group_vars" / "all"
OVERRIDES = PRODLIKE / "group_vars" / "all" / "zz_lab_overrides.yml"
SCHEDULE_DEFAULTS = REPO / "roles" / "backup_schedule" / "defaults" / "main.yml"
VARS_EXTENSIONS = {"", ".yml", ".yaml", ".json"}  # what Ansible reads in a group_vars folder


def yaml_file(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def production_vars() -> dict:
    merged: dict = {}
    for path in sorted(PRODUCTION_VARS.iterdir()):
        if path.suffix in VARS_EXTENSIONS and path.stem != "vault":
            merged.update(yaml_file(path))
    return merged


def job_args(job: dict) -> list[str]:
    return shlex.split(job.get("args") or "")


def needs_live_restore(playbook: str, args: list[str]) -> bool:
    """A command that would restore into the live stack (none is scheduled): never run here."""
    return playbook == "restore.yml" and "dry_run=true" not in args


JOBS = yaml_file(SCHEDULE_DEFAULTS)["backup_schedule_jobs"]
COMMANDS = [(f"job-{job['name']}", job["playbook"], job_args(job)) for job in JOBS
            if not needs_live_restore(job["playbook"], job_args(job))]
# Commands the issue names besides the jobs (the drill job already runs drill.yml exactly so).
for _name, _playbook, _args in [("cleanup-dry-run", "cleanup.yml", ["-e", "dry_run=true"]),
                                ("restore-dry-run", "restore.yml", ["-e", "dry_run=true"]),
                                ("drill", "drill.yml", [])]:
    if (_playbook, _args) not in [(playbook, args) for _, playbook, args in COMMANDS]:
        COMMANDS.append((_name, _playbook, _args))


def prodlike(playbook: str, root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """ansible-playbook -i tests/inventories/prodlike playbooks/<playbook> <args>, on `root`."""
    return run_playbook(playbook, *args, "-e", f"backup_root={root}", "-e", f"backup_metrics_dir={root}/metrics",
                        inventory_path=PRODLIKE, check=check)


def sets(root: Path) -> dict[str, dict]:
    return {p.name: json.loads((p / "backup_manifest.json").read_text())
            for p in root.iterdir() if not p.is_symlink() and (p / "backup_manifest.json").is_file()}


# --- the inventory itself (no lab needed) ---------------------------------------------------------

def test_prodlike_takes_every_production_vars_file_as_it_is():
    folder = PRODLIKE / "group_vars" / "all"
    # the vault (where an operator created it) is replaced by the lab's secrets, never linked
    production = sorted(p.name for p in PRODUCTION_VARS.iterdir()
                        if p.suffix in VARS_EXTENSIONS and p.stem != "vault")
    assert production, "inventories/production/group_vars/all has no vars file"
    for name in production:
        link = folder / name
        assert link.is_symlink() and link.resolve() == (PRODUCTION_VARS / name).resolve(), (
            f"{link.relative_to(REPO)} must be a link to inventories/production/group_vars/all/{name}")
    extra = sorted(p.name for p in folder.iterdir() if p.name not in production)
    assert extra == [OVERRIDES.name], f"only {OVERRIDES.name} may add to production's files, found {extra}"
    assert sorted(p.name for p in folder.iterdir())[-1] == OVERRIDES.name, "the overrides must be read last"


def test_the_overrides_only_replace_real_settings():
    """Each override names a production setting, a vault_* secret or a role default; lab_state_dir is
    the one helper. A typo here would otherwise silently test production's value."""
    known = set(production_vars())
    known |= set(yaml_file(PRODUCTION_VARS / "vault.yml.example"))
    for defaults in (REPO / "roles").glob("*/defaults/main.yml"):
        known |= set(yaml_file(defaults))
    unknown = sorted(set(yaml_file(OVERRIDES)) - known - {"lab_state_dir"})
    assert not unknown, f"{OVERRIDES.relative_to(REPO)} sets what nothing has: {unknown}"
    uncommented = [name for name, commented in top_level_keys(OVERRIDES) if not commented]
    assert not uncommented, f"say in a comment above each override why it cannot be production's value: {uncommented}"


def top_level_keys(path: Path) -> list[tuple[str, bool]]:
    """(name, commented) per top-level key: commented when a comment opens the group of lines (no blank
    line between) that the key is in."""
    keys, commented = [], False
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            commented = True
        elif not line.strip():
            commented = False
        elif not line.startswith((" ", "-")) and ":" in line:
            keys.append((line.split(":", 1)[0], commented))
    return keys


def test_the_schedule_is_read_from_the_role():
    names = [job["name"] for job in JOBS]
    assert len(names) == len(set(names)) and names, names
    for job in JOBS:
        assert (REPO / "playbooks" / job["playbook"]).is_file(), f"job {job['name']}: no playbooks/{job['playbook']}"
    assert not [job["name"] for job in JOBS if needs_live_restore(job["playbook"], job_args(job))]


# --- on the lab -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def base_root(lab, tmp_path_factory) -> Path:
    """One backup root holding one set taken with production's settings: backup.yml without -e components."""
    root = tmp_path_factory.mktemp("prodlike") / "backups"
    proc = prodlike("backup.yml", root)
    assert "component" in proc.stdout and "verified" in proc.stdout
    return root


@pytest.mark.lab
@pytest.mark.slow
def test_backup_without_components_backs_up_what_production_lists(base_root):
    (name, doc), = sets(base_root).items()
    assert (base_root / "latest").resolve().name == name
    assert doc["status"] == "success"
    assert sorted(doc["components"]) == sorted(production_vars()["backup_components"])
    assert all(c["status"] == "success" for c in doc["components"].values())


@pytest.mark.lab
@pytest.mark.slow
def test_production_sets_are_encrypted_at_rest_and_checkable_without_the_key(base_root):
    """backup_encryption is on in production: every artefact of the data stores is an age file (no clear uploads
    tree), SHA256SUMS checks with plain sha256sum (no key), and the seeded data is nowhere in clear. The drill
    (test_the_command_passes_on_the_production_inventory[drill]) restores and verifies them with the key."""
    assert production_vars()["backup_encryption"] is True
    (name, doc), = sets(base_root).items()
    set_dir = base_root / name
    artefacts = [set_dir / f["path"] for component in ("mariadb", "postgres", "redis", "qdrant", "search", "uploads")
                 for f in doc["components"][component]["files"]]
    assert {p.relative_to(set_dir).parts[0] for p in artefacts} == {"mariadb", "postgres", "redis", "qdrant",
                                                                      "search", "uploads"}
    for path in artefacts:
        assert path.read_bytes()[:len(AGE_HEADER)] == AGE_HEADER, f"{path} is not encrypted"
    assert not (set_dir / "uploads" / "uploads").exists() and doc["components"]["uploads"]["tree_dir"] is None
    subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=set_dir, check=True)
    seeded = "한국어".encode()  # in the seeded uploads' names and the databases' rows
    assert not [p for p in artefacts if seeded in p.read_bytes()]


@pytest.mark.lab
def test_an_encrypted_set_is_not_restored_without_the_identity(lab, base_root, tmp_path):
    """The first restore step (stage: unpack into the staging folder, before anything is stopped) refuses an
    encrypted artefact without the identity, saying what to set; the drill of this set (with it) passes below."""
    (name, _doc), = sets(base_root).items()
    staging = tmp_path / "staging"
    args = {"step": "stage", "set_path": str(base_root / name), "staging": str(staging),
            "container": lab.containers["redis"], "login_password": "{{ redis_password }}"}
    for extra, said in (({}, "the artefact is encrypted (age) and no identity was given: set backup_age_identity"),
                        ({"encrypt": True}, "encryption is on (backup_encryption) but no age identity was given")):
        result = run_module("redis_restore", {**args, **extra})
        assert result.get("failed") and said in result["msg"] and "nothing live was changed" in result["msg"], result
        assert not staging.exists() or not any(staging.rglob("*.rdb"))


@pytest.mark.lab
@pytest.mark.slow
@pytest.mark.parametrize(("playbook", "args"), [pytest.param(p, a, id=i) for i, p, a in COMMANDS])
def test_the_command_passes_on_the_production_inventory(base_root, tmp_path, playbook, args):
    root = tmp_path / "backups"
    subprocess.run(["cp", "-a", str(base_root), str(root)], check=True)  # -a keeps the hard links
    before = sets(root)
    proc = prodlike(playbook, root, *args, check=False)
    assert proc.returncode == 0, (
        f"ansible-playbook -i tests/inventories/prodlike playbooks/{playbook} {shlex.join(args)} failed "
        f"(rc {proc.returncode}; a drill needs the scratch ports free: retry when no other drill runs):\n"
        f"{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}")
    after = sets(root)
    new = {name: doc for name, doc in after.items() if name not in before}
    extra = dict(a.split("=", 1) for flag, a in zip(args, args[1:], strict=False) if flag == "-e" and "=" in a)
    if playbook == "backup.yml":
        (name, doc), = new.items()
        assert name.startswith(extra.get("backup_set_name", "llmops") + "_")
        assert doc["status"] == "success", doc
        wanted = extra["components"].split(",") if "components" in extra else production_vars()["backup_components"]
        assert sorted(doc["components"]) == sorted(wanted)
        assert (root / "latest").resolve().name == name
    elif playbook == "drill.yml":
        reports = sorted(root.glob("drills/drill_*/report.json"), key=os.path.getmtime)
        assert reports and json.loads(reports[-1].read_text())["passed"] is True
    elif playbook == "verify.yml":
        tested = json.loads((root / next(iter(before)) / "verification.json").read_text())
        assert tested["records"][-1]["result"] == "passed", tested
    elif playbook == "cleanup.yml" and extra.get("dry_run") == "true":
        assert after == before and "would delete" in proc.stdout
    elif playbook == "restore.yml":
        assert after == before and "Stop here (dry run" in proc.stdout
    if playbook != "backup.yml":
        assert not new, f"{playbook} wrote new sets: {sorted(new)}"
