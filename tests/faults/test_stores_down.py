"""Fault matrix, a store the backup cannot use (issue 13, item 5): wrong credentials, a store that is down, Qdrant
unreachable, a Docker engine that cannot be reached - through ``ansible-playbook playbooks/backup.yml``.

The run fails with a message that names the component and says what to do; the other components are still
backed up (their artefacts in the set, checksummed); the set is finalized as failed and ``latest`` stays on the
previous one; no secret (the lab's, or the wrong one passed) appears in the output or anywhere under the backup
root. Nothing of the lab is stopped: a store that is down is a stopped container of the lab's image that the
run's ``stack_containers`` points at; Qdrant unreachable is a closed port; the unreachable engine is
``DOCKER_HOST=unix:///nonexistent.sock``, which gives the Docker client exactly the error of a stopped engine
(``Cannot connect to the Docker daemon at ... Is the docker daemon running?``).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
from pathlib import Path

import pytest

from module_utils import llmops_backupset as bs
from tests.conftest import LAB_CONTAINERS, LAB_PORTS
from tests.faults import faultkit as fk

pytestmark = pytest.mark.lab

WRONG = "Wr0ng-" + secrets.token_hex(10)  # the wrong credential a case passes (a vars file, not the command line)
ALL_CONTAINERS = ("api", "mariadb", "postgres", "redis", "search", "llm", "embedding", "qdrant")


def containers(**override: str) -> dict:
    """The run's whole ``stack_containers`` (extra vars replace a dict), the lab's names but ``override``."""
    names = {k: LAB_CONTAINERS.get(k) or f"llmops-{'ai' if k in ('llm', 'embedding', 'qdrant') else 'appdb'}-{k}-1"
             for k in ALL_CONTAINERS}
    return dict(names, **override)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when the block ends: nothing listens there


@pytest.fixture(scope="module")
def stopped():
    """A stopped container of each lab store's image (``docker create``, never started), removed at the end."""
    made = {}
    try:
        for store in ("mariadb", "postgres", "redis"):
            image = subprocess.run(["docker", "inspect", "-f", "{{.Config.Image}}", LAB_CONTAINERS[store]],
                                   capture_output=True, text=True, check=True).stdout.strip()
            name = f"llmops-fault-{store}-down-{secrets.token_hex(3)}"
            subprocess.run(["docker", "create", "--name", name, image], capture_output=True, check=True)
            made[store] = name
        yield made
    finally:
        for name in made.values():
            subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)


# case: (components, extra vars (a callable of the stopped containers), environment, failing components,
#        words the failure of each failing component must hold - what is wrong and what to do)
CASES = {
    "wrong-redis-password": ("redis,qdrant,uploads", lambda s: {"redis_password": WRONG}, {}, {
        "redis": ["authentication to Redis failed", "redis_password", "requirepass", "run again"]}),
    "wrong-qdrant-api-key": ("qdrant,redis,uploads", lambda s: {"qdrant_api_key": WRONG}, {}, {
        "qdrant": ["HTTP 401", "API key was refused", "qdrant_api_key", "run again"]}),
    "mariadb-down": ("mariadb,redis,uploads", lambda s: {"stack_containers": containers(mariadb=s["mariadb"])}, {}, {
        "mariadb": ["is not running", "start the stack (playbooks/stack.yml)", "docker logs", "run again"]}),
    "postgres-down": ("postgres,redis,uploads", lambda s: {"stack_containers": containers(postgres=s["postgres"])},
                      {}, {"postgres": ["is not running", "start the stack (playbooks/stack.yml)", "run again"]}),
    "redis-down": ("redis,qdrant,uploads", lambda s: {"stack_containers": containers(redis=s["redis"])}, {}, {
        "redis": ["is not running", "start the stack (playbooks/stack.yml)", "run again"]}),
    "qdrant-unreachable": ("qdrant,redis,uploads", lambda s: {"stack_ports": dict(LAB_PORTS, qdrant=closed_port())},
                           {}, {"qdrant": ["Connection refused", "Qdrant does not answer", "stack_ports.qdrant",
                                           "run again"]}),
    "docker-engine-unreachable": ("postgres,redis,qdrant,uploads", lambda s: {},
                                  {"DOCKER_HOST": "unix:///nonexistent.sock"}, {
        "postgres": ["Cannot connect to the Docker daemon", "the Docker engine does not answer", "systemctl start "
                     "docker", "run again"],
        "redis": ["Cannot connect to the Docker daemon", "the Docker engine does not answer", "run again"]}),
}


def lab_secrets(lab) -> list[str]:
    values = [p.read_text().strip() for p in sorted(lab.secrets_dir.iterdir()) if p.is_file()]
    assert values and all(len(v) >= 16 for v in values)
    return values


def assert_no_secret(texts: dict[str, bytes], values: list[str]) -> None:
    leaks = [(where, value[:4] + "...") for where, text in texts.items() for value in values
             if value.encode() in text]
    assert leaks == [], f"secrets found: {leaks}"


def everything_under(root: Path) -> dict[str, bytes]:
    found = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath, name)
            if not path.is_symlink():
                found[str(path)] = path.read_bytes()
    return found


def run_case(lab, tmp_path, components, variables, env):
    root = tmp_path / "backups"
    src = tmp_path / "uploads-src"
    (src / "docs").mkdir(parents=True)
    (src / "docs" / "a.txt").write_text("a document\n")
    older = fk.old_set(root)
    varfile = tmp_path / "vars.json"
    varfile.write_text(json.dumps(dict(variables, components=components, app_uploads_path=str(src),
                                       backup_root=str(root), backup_metrics_dir=str(tmp_path / "metrics"))))
    varfile.chmod(0o600)
    rc, out = fk.run_playbook("backup.yml", tmp_path / "run.log", secrets.token_hex(8), "-e", f"@{varfile}",
                              env=env)
    return root, older, rc, out


@pytest.mark.parametrize("case", list(CASES))
def test_a_store_that_cannot_be_used_fails_its_component_only(lab, tmp_path, stopped, case):
    """The run fails naming each broken component and what to do; the other components are in the set and
    verify; the set is failed and latest stays; no secret in the output or under the backup root."""
    components, variables, env, failing = CASES[case]
    root, older, rc, out = run_case(lab, tmp_path, components, variables(stopped), env)
    assert rc != 0, out[-5000:]
    fatal = [line for line in out.splitlines() if line.startswith("fatal:") and "FAILED:" in line]
    assert fatal, out[-5000:]
    message = fatal[-1]
    for component, words in failing.items():
        assert f"component {component}:" in message, message
        for word in words:
            assert word in message, f"{word!r} missing from the failure of {component}: {message}"
    # the set: failed, not latest, the failing components failed, the others there and checksummed
    assert os.readlink(root / "latest") == older
    new = [s for s in fk.looks_complete(root) if s != older]
    assert len(new) == 1 and fk.partials(root) == []
    manifest = fk.manifest(root / new[0])
    assert manifest["status"] == "failed"
    for component in components.split(","):
        entry = manifest["components"][component]
        if component in failing:
            assert entry["status"] == "failed", entry
        else:
            assert entry["status"] == "success" and entry["files"], entry
            for item in entry["files"]:
                assert (root / new[0] / item["path"]).is_file()
    check = fk.sha256sum_ok(root / new[0])
    assert check.returncode == 0, check.stdout + check.stderr
    assert bs.verify_set(root / new[0], allow_unauthenticated=True)["ok"]
    assert_no_secret({"output": out.encode(), **everything_under(root)}, lab_secrets(lab) + [WRONG])


def test_wrong_mariadb_and_postgres_passwords_do_not_stop_their_backup(lab, tmp_path):
    """MariaDB and PostgreSQL are backed up by their tools inside their containers, logged in through the local
    socket: the inventory's passwords are not used, so wrong ones cannot break the backup; it succeeds, becomes
    latest, and neither the wrong passwords nor the lab's are in the output or the set."""
    variables = {"mariadb_root_password": WRONG, "postgres_password": WRONG[::-1]}
    root, older, rc, out = run_case(lab, tmp_path, "mariadb,postgres,uploads", variables, {})
    assert rc == 0, out[-5000:]
    latest = os.readlink(root / "latest")
    assert latest != older and fk.manifest(root / latest)["status"] == "success"
    assert_no_secret({"output": out.encode(), **everything_under(root)}, lab_secrets(lab) + [WRONG, WRONG[::-1]])
