"""Fixtures shared by the whole suite: the repository, the running lab and its secrets.

Tests marked `lab` need the lab that `make test` brings up before pytest runs (`make lab-seed`).
When it is not running they fail with that advice: a missing lab is never a skipped test.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import ansible.module_utils
import pg8000.native
import pymysql
import pytest
import yaml
from redis import Redis

REPO = Path(__file__).resolve().parents[1]
# Tests import the shared code the way modules do: `from ansible.module_utils.llmops_x import ...`
# (ansible.cfg's module_utils path does the same for ansible-playbook).
if str(REPO / "module_utils") not in ansible.module_utils.__path__:
    ansible.module_utils.__path__.append(str(REPO / "module_utils"))
VENV_BIN = REPO / ".venv" / "bin"
LAB_STATE = REPO / ".state" / "lab"


def ansible_env(**extra: str) -> dict[str, str]:
    """Environment for running ansible-playbook / ansible against this repository."""
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
        ANSIBLE_COLLECTIONS_PATH=str(REPO / "collections"),
        ANSIBLE_NOCOLOR="1",
        PATH=f"{VENV_BIN}:{env.get('PATH', '')}",
    )
    env.update(extra)
    return env


def run_playbook(playbook: str, *args: str, inventory: str | None = None,
                 check: bool = True, inventory_path: Path | None = None) -> subprocess.CompletedProcess:
    """ansible-playbook playbooks/<playbook>; `inventory` names one under inventories/, `inventory_path`
    is any other (e.g. tests/inventories/prodlike); neither: ansible.cfg's (the lab)."""
    cmd = [str(VENV_BIN / "ansible-playbook"), str(REPO / "playbooks" / playbook), *args]
    if inventory or inventory_path:
        cmd[1:1] = ["-i", str(inventory_path or REPO / "inventories" / inventory)]
    proc = subprocess.run(cmd, cwd=REPO, env=ansible_env(), capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"{playbook} failed (rc {proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}")
    return proc


@dataclass(frozen=True)
class Lab:
    """The running lab: container names, published ports and its generated secrets."""

    containers: dict[str, str]
    ports: dict[str, int]
    secrets_dir: Path
    stack_root: Path
    # the container whose own Docker engine runs these containers (the rebuild test's new host); None: this engine
    via: str | None = None

    def secret(self, name: str) -> str:
        return (self.secrets_dir / name).read_text().strip()

    def exec(self, service: str, *argv: str, user: str | None = None, env: dict[str, str] | None = None,
             stdin: bytes | None = None, check: bool = True) -> subprocess.CompletedProcess:
        """`docker exec` in a lab container; secrets go through the environment, never argv."""
        cmd = ["docker", "exec", "-i"]
        if self.via:
            cmd += [arg for key in env or {} for arg in ("-e", key)] + [self.via, "docker", "exec", "-i"]
        if user:
            cmd += ["-u", user]
        for key in env or {}:
            cmd += ["-e", key]  # value taken from our environment, so it is not on a command line
        cmd += [self.containers[service], *argv]
        proc = subprocess.run(cmd, input=stdin, capture_output=True, timeout=300,
                              env={**os.environ, **(env or {})})
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed: {proc.stderr.decode(errors='replace')[-2000:]}")
        return proc

    def encryption_vars(self, folder: Path) -> Path:
        """A 0600 vars file (``-e @<file>``) turning production's encryption at rest on with the lab's age identity
        (``secrets/backup_age_identity``, the file the prodlike and newhost inventories use; made when missing)."""
        identity = self.secrets_dir / "backup_age_identity"
        if not identity.exists():
            subprocess.run(["age-keygen", "-o", str(identity)], check=True, capture_output=True)
        path = folder / "encryption.yml"
        path.write_text(yaml.safe_dump({"backup_encryption": True, "backup_age_identity": identity.read_text()}))
        path.chmod(0o600)
        return path

    def mariadb(self, sql: str, database: str = "") -> list[list[str]]:
        argv = ["mariadb", "--default-character-set=utf8mb4", "-N", "-B", *([database] if database else [])]
        out = self.exec("mariadb", *argv, stdin=sql.encode()).stdout
        return [line.split("\t") for line in out.decode().splitlines()]

    def psql(self, sql: str, database: str = "postgres") -> list[list[str]]:
        out = self.exec("postgres", "psql", "-X", "-At", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-d", database,
                        user="postgres", stdin=sql.encode()).stdout
        return [line.split("\t") for line in out.decode().splitlines()]

    def redis(self, *args: str) -> str:
        auth = {"REDISCLI_AUTH": self.secret("redis_password")}
        return self.exec("redis", "redis-cli", *args, env=auth).stdout.decode()

    # Connections over the published ports, for the application's writes during a backup: a `docker exec` per
    # write costs a tenth of a CPU second, which on two cores slows down the very backup under test.
    def mariadb_connection(self) -> pymysql.Connection:
        return pymysql.connect(host="127.0.0.1", port=self.ports["mariadb"], user="root", charset="utf8mb4",
                               password=self.secret("mariadb_root_password"), autocommit=True)

    def postgres_connection(self, database: str) -> pg8000.native.Connection:
        return pg8000.native.Connection("postgres", password=self.secret("postgres_password"), host="127.0.0.1",
                                        port=self.ports["postgres"], database=database)

    def redis_connection(self, db: int) -> Redis:
        return Redis(host="127.0.0.1", port=self.ports["redis"], password=self.secret("redis_password"), db=db)


LAB_CONTAINERS = {
    "mariadb": "llmops-appdb-mariadb-1",
    "postgres": "llmops-appdb-postgres-1",
    "redis": "llmops-appdb-redis-1",
    "qdrant": "llmops-ai-qdrant-1",
    "search": "llmops-appdb-search-1",
}
LAB_PORTS = {"mariadb": 13306, "postgres": 15432, "redis": 16379, "qdrant": 16333, "search": 19200}


@pytest.fixture(scope="session")
def lab() -> Lab:
    """The lab brought up by `make lab-seed`; fails (never skips) when it is not running."""
    proc = subprocess.run(["docker", "ps", "--format", "{{json .}}"], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"no Docker engine answers ({proc.stderr.strip()}): run `make lab-seed` first")
    running = {json.loads(line)["Names"] for line in proc.stdout.splitlines()}
    missing = sorted(set(LAB_CONTAINERS.values()) - running)
    if missing:
        pytest.fail(f"lab containers not running: {', '.join(missing)}: run `make lab-seed` first")
    return Lab(containers=LAB_CONTAINERS, ports=LAB_PORTS, secrets_dir=LAB_STATE / "secrets",
               stack_root=LAB_STATE / "stack")


def redis_safety_copies(lab: Lab) -> list[Path]:
    """The Redis safety copies a restore left beside the lab's Redis data folder."""
    return sorted((lab.stack_root.parent / "data" / "appdb" / "redis").glob(".pre-restore-*"))


@pytest.fixture()
def redis_copies(lab):
    """The Redis safety copies before the test; the ones it made are removed at the end."""
    before = redis_safety_copies(lab)
    yield before
    for path in set(redis_safety_copies(lab)) - set(before):
        subprocess.run(["rm", "-rf", str(path)], check=True)


def fake_nvidia_smi(tmp_path: Path, fixture: str | None = None, rc: int = 0, stdout: str = "") -> Path:
    """An executable stand-in for nvidia-smi that records its argv in tmp_path/argv and prints a real
    capture from tests/data/nvidia-smi/ (so the module's command line and parsing are the real ones)."""
    script = tmp_path / "bin" / "nvidia-smi"
    script.parent.mkdir(exist_ok=True)
    body = f"#!/bin/sh\nprintf '%s\\n' \"$@\" > '{tmp_path / 'argv'}'\n"
    if fixture:
        body += f"cat '{REPO / 'tests' / 'data' / 'nvidia-smi' / fixture}'\n"
    if stdout:
        body += f"printf '%s\\n' \"{stdout}\"\n"
    body += f"exit {rc}\n"
    script.write_text(body)
    script.chmod(0o755)
    return script


def run_module(module: str, args: dict, *, check_mode: bool = False, inventory: str = "lab",
               host: str = "lab", extra_vars: dict | None = None) -> dict:
    """Run one of our modules through `ansible` (as a play would) and return its result dict.

    Arguments may use Jinja (e.g. "{{ redis_password }}") to take secrets from the inventory, so
    that they are not on this test's command line either.
    """
    cmd = [str(VENV_BIN / "ansible"), host, "-i", str(REPO / "inventories" / inventory), "-m", module,
           "-a", json.dumps(args)]
    if check_mode:
        cmd.append("--check")
    if extra_vars:
        cmd += ["-e", json.dumps(extra_vars)]
    env = ansible_env(ANSIBLE_STDOUT_CALLBACK="ansible.posix.json", ANSIBLE_LOAD_CALLBACK_PLUGINS="1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    try:
        doc, _ = json.JSONDecoder().raw_decode(proc.stdout, proc.stdout.index("{"))  # profile_tasks prints after it
        return doc["plays"][0]["tasks"][0]["hosts"][host]
    except (ValueError, KeyError, IndexError) as exc:
        raise AssertionError(f"cannot read the result of {module}: {proc.stdout[-3000:]} "
                             f"{proc.stderr[-3000:]}") from exc


def reauthenticate(set_path: Path) -> None:
    """Sign a set again with the lab's key (SHA256SUMS.hmac) after a test rewrote its manifest on purpose, as a
    backup that had hashed the same bytes would have."""
    from ansible.module_utils.llmops_backupset import write_set_auth

    write_set_auth(set_path, Path(set_path).name, (LAB_STATE / "secrets" / "backup_auth_key").read_text().strip())


def make_set(root: Path, components: dict, name: str = "t") -> dict:
    """A finalized backup set written by the real modules, as backup.yml writes one.

    ``components`` is ``{component: (module, args)}``; each module gets ``dest`` in the set's folder.
    Returns backup_set's finalize result (``path``, ``set_id``, ``manifest``...) plus ``results``: each
    module's own result.
    """
    begin = run_module("backup_set", {"command": "begin", "root": str(root), "name": name})
    assert not begin.get("failed"), begin.get("msg")
    results = {}
    for component, (module, args) in components.items():
        result = run_module(module, {"dest": f"{begin['path']}/{component}", **args})
        assert not result.get("failed"), result.get("msg")
        added = run_module("backup_set", {"command": "component", "root": str(root), "path": begin["path"],
                                          "component": component, "data": result["component"]})
        assert not added.get("failed"), added.get("msg")
        results[component] = result
    final = run_module("backup_set", {"command": "finalize", "root": str(root), "path": begin["path"],
                                      "auth_key": "{{ backup_auth_key }}"})
    assert final.get("status") == "success", final
    return {**final, "results": results}
