"""The lost host, rebuilt: `playbooks/rebuild.yml` on a bare Debian 12 host from the off-site copy alone.

The original host is the running lab, with its seeded data (uploads and models whose names hold Korean, emoji,
quotes, newlines, `$(...)`) and a MariaDB database of this test whose table has a hostile name. Its backup
(`backup.yml`, every component, encrypted at rest with age as production has it) is synced off-site
(`offsite.yml`) to a real OpenSSH server in a container (SFTP), and `restic check` passes on that repository. Then
a fresh new host (tests/integration/newhost.py: no data, no images but those a registry would give it, the backups
on a volume of their own) is rebuilt with

    ansible-playbook -i tests/inventories/newhost playbooks/rebuild.yml -e @<credentials> -e confirm=yes -vvv

through the community.docker.docker connection, with production's inventory (tests/inventories/newhost links it)
and only what a person has on that day: this repository, the vault (the lab's secrets) and the off-site
credentials in a 0600 vars file (the repository, its password, the SSH key, the off-site host's key).

Proven: the rebuild provisions the host, fetches the restore point, restores every component and verifies it,
and its record says success with a measured RTO and each phase's time (decrypting the sets with the vault's age
identity); the rebuilt stores hold the same data as the original's (MariaDB table checksums, PostgreSQL rows,
Redis keys, the uploads and models trees); the first backup of the new host is taken (encrypted) and `health.yml`
then passes there; no secret (the stores' passwords, the HMAC key, the age key, the off-site password, the SSH
key) is in the -vvv output, in any /proc/*/cmdline sampled during the run or in the new host's backup volume and
logs.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.cmdlines import CmdlineSampler
from tests.conftest import LAB_STATE, REPO, Lab, ansible_env, run_playbook
from tests.integration.newhost import new_host
from tests.integration.test_offsite_sftp import PASSWORD, REMOTE, offsite, sshd_store

pytestmark = [pytest.mark.lab, pytest.mark.slow]

NEWHOST_INVENTORY = REPO / "tests" / "inventories" / "newhost"
IMAGES = ["llmops-lab/mariadb:10.11", "llmops-lab/postgres:15", "llmops-lab/redis:7.0",
          "llmops-lab/qdrant-standin:1.19.0", "llmops-lab/elasticsearch-standin:8.15.3"]
COMPONENTS = ["mariadb", "postgres", "redis", "qdrant", "search", "uploads", "models", "configs"]
SYSTEM_SCHEMAS = "'mysql', 'sys', 'performance_schema', 'information_schema'"
# A tree's files and links as {relative path: sha256 or link target}, computed the same way on both hosts.
# the first bytes of every artefact (.zst, .snapshot) of a set, run on the new host
HEADS_SCRIPT = """
import json, os, sys
root = os.path.realpath(sys.argv[1])
heads = {}
for folder, _dirs, names in os.walk(root):
    for name in names:
        if name.endswith((".zst", ".snapshot")):
            with open(os.path.join(folder, name), "rb") as handle:
                heads[os.path.relpath(os.path.join(folder, name), root)] = handle.read(22).decode("latin-1")
print(json.dumps(heads))
"""
TREE_SCRIPT = r"""
import hashlib, json, os, sys
out = {}
for base, dirs, files in os.walk(sys.argv[1]):
    for name in dirs + files:
        full = os.path.join(base, name)
        rel = os.path.relpath(full, sys.argv[1])
        if os.path.islink(full):
            out[rel] = "-> " + os.readlink(full)
        elif os.path.isfile(full):
            out[rel] = hashlib.sha256(open(full, "rb").read()).hexdigest()
print(json.dumps(out, sort_keys=True))
"""


def ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def unhex(value: str) -> str:
    return bytes.fromhex(value).decode()


def mariadb_checksums(stores: Lab) -> dict:
    """{table: CHECKSUM TABLE} of every application table (names read hex-encoded: they may hold tabs, newlines)."""
    tables = stores.mariadb("SELECT HEX(table_schema), HEX(table_name) FROM information_schema.tables WHERE "
                            f"table_type = 'BASE TABLE' AND table_schema NOT IN ({SYSTEM_SCHEMAS}) ORDER BY 1, 2")
    assert tables, "no application table in MariaDB"
    listed = ", ".join(f"{ident(unhex(db))}.{ident(unhex(table))}" for db, table in tables)
    return {row[0]: row[1] for row in stores.mariadb(f"CHECKSUM TABLE {listed} EXTENDED")}


# per table of a database: its name (hex: names may hold tabs and newlines), its row count and the md5 of its rows
POSTGRES_DIGEST = r"""
SELECT encode(convert_to(table_schema || '.' || table_name, 'UTF8'), 'hex'),
       (xpath('/row/d/text()', query_to_xml(format(
           'SELECT count(*) || '':'' || md5(coalesce(string_agg(t::text, E''\n'' ORDER BY t::text), '''')) AS d '
           'FROM %I.%I t', table_schema, table_name), false, true, '')))[1]::text
FROM information_schema.tables
WHERE table_type = 'BASE TABLE' AND table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1
"""


def postgres_rows(stores: Lab) -> dict:
    out = {}
    for (db,) in stores.psql("SELECT datname FROM pg_database WHERE NOT datistemplate AND datallowconn "
                             "AND datname <> 'postgres' ORDER BY 1"):
        for table, rows in stores.psql(POSTGRES_DIGEST, database=db):
            out[f"{db}/{table}"] = rows
    assert out, "no application table in PostgreSQL"
    return out


def redis_keys(stores: Lab) -> list:
    return sorted(stores.redis("--scan").splitlines())


def set_heads(path: Path) -> dict:
    """The first bytes of every artefact of the set at ``path`` (HEADS_SCRIPT)."""
    return json.loads(subprocess.run([sys.executable, "-c", HEADS_SCRIPT, str(path)], capture_output=True, text=True,
                                     check=True).stdout)


def tree(path: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", TREE_SCRIPT, str(path)], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


@pytest.fixture
def hostile_table(lab):
    """A database of this test whose table name holds Korean, quotes and $(...); rows with emoji and newlines."""
    db = f"rebuild_{secrets.token_hex(4)}"
    table = "문서 it's \"q\" $(id)"
    lab.mariadb(f"CREATE DATABASE {ident(db)} CHARACTER SET utf8mb4")
    lab.mariadb(f"CREATE TABLE {ident(table)} (id INT PRIMARY KEY, body TEXT) CHARACTER SET utf8mb4; "
                f"INSERT INTO {ident(table)} SELECT seq, CONCAT('행 ', seq, ' 🚀\\n$(rm -rf /)') FROM seq_1_to_500",
                database=db)
    yield db, table
    lab.mariadb(f"DROP DATABASE IF EXISTS {ident(db)}")


def test_rebuild_on_a_bare_host_from_the_offsite_copy(lab, hostile_table, tmp_path, monkeypatch):
    root = tmp_path / "backups"
    # the sets encrypted at rest as production has them (backup_encryption), with the key the newhost inventory
    # gives the rebuild (the lab's age identity)
    run_playbook("backup.yml", "-e", f"backup_root={root}", "-e", f"backup_metrics_dir={tmp_path / 'metrics'}",
                 "-e", f"@{lab.encryption_vars(tmp_path)}")
    heads = set_heads(root / "latest")
    assert len(heads) >= 6 and set(heads.values()) == {"age-encryption.org/v1\n"}, heads
    original = {"mariadb": mariadb_checksums(lab), "postgres": postgres_rows(lab), "redis": redis_keys(lab),
                "uploads": tree(LAB_STATE / "data" / "appdb" / "uploads"),
                "models": tree(LAB_STATE / "data" / "ai" / "models")}
    db, table = hostile_table
    assert f"{db}.{table}" in original["mariadb"], original["mariadb"].keys()

    keys = tmp_path / "ssh"
    keys.mkdir()
    with sshd_store(keys) as store, new_host(volumes=["/backup"]) as host:
        synced = offsite(tmp_path, root, store)
        assert synced.returncode == 0, synced.stdout[-4000:]
        checked = offsite(tmp_path, root, store, "-e", "offsite_operation=check")
        assert checked.returncode == 0 and "check of" in checked.stdout, checked.stdout[-4000:]
        host.load_images(IMAGES)

        # what a person has on that day: the vault (the lab's secrets play it) and the off-site credentials
        private_key = store["key"].read_text()
        credentials = tmp_path / "offsite-credentials.yml"
        credentials.write_text(yaml.safe_dump({
            "offsite_repository": f"sftp:offsite@{store['ip']}:{REMOTE}", "vault_offsite_password": PASSWORD,
            "offsite_ssh_private_key": private_key, "offsite_ssh_known_hosts": f"{store['ip']} {store['host_key']}"}))
        credentials.chmod(0o600)
        age_secret = next(line for line in (lab.secrets_dir / "backup_age_identity").read_text().splitlines()
                          if line.startswith("AGE-SECRET-KEY-1"))
        secret_values = [PASSWORD, private_key.splitlines()[1], age_secret] + [
            (lab.secrets_dir / name).read_text().strip() for name in
            ("mariadb_root_password", "postgres_password", "redis_password", "qdrant_api_key", "search_password",
             "backup_auth_key")]

        # the make target of the quarterly drill's self-hosted job, as that job runs it; refused without CONFIRM=yes
        dr_args = [f"DR_INVENTORY={NEWHOST_INVENTORY}", f"DR_ARGS=-e @{credentials} -vvv"]
        env = ansible_env(LLMOPS_NEWHOST=host.name)
        refused = subprocess.run(["make", "dr-rebuild", *dr_args], cwd=REPO, env=env, capture_output=True, text=True)
        assert refused.returncode != 0 and "CONFIRM=yes" in refused.stdout + refused.stderr, refused.stdout
        copies = REPO / ".state" / "rebuild"
        before = set(copies.glob("rebuild_*")) if copies.is_dir() else set()
        sampler = CmdlineSampler(secret_values)
        sampler.start()
        t0 = time.monotonic()
        try:
            rebuilt = subprocess.run(["make", "dr-rebuild", *dr_args, "CONFIRM=yes"], cwd=REPO, env=env,
                                     capture_output=True, text=True, timeout=1800)
        finally:
            sampler.stop()
        wall = round(time.monotonic() - t0, 1)
        output = rebuilt.stdout + rebuilt.stderr
        assert rebuilt.returncode == 0, output[-8000:]
        assert "REBUILD PASSED" in output and "rto_chart: " in output, output[-3000:]
        phases = r"provision [\d.]+ s, fetch [\d.]+ s, restore [\d.]+ s, health [\d.]+ s"
        assert re.search(phases, output), output[-3000:]

        # the report (like a drill's) and the recovery record, copied to this machine; the chart drawn here
        (folder,) = set(copies.glob("rebuild_*")) - before
        report = json.loads((folder / "report.json").read_text())
        assert report["passed"] and report["kind"] == "rebuild" and report["health"] in ("ok", "warning"), report
        assert sorted(report["verified"]) == sorted(COMPONENTS) == sorted(report["rto_by_component"]), report
        assert 0 < report["rto_seconds"] <= wall and report["rto_seconds"] <= report["rto_target_seconds"], report
        assert max(report["rto_by_component"].values()) <= report["rto_seconds"], report
        assert all(report["phases"][phase] > 0 for phase in ("provision", "fetch", "restore")), report
        for component in COMPONENTS:
            assert f"{component}=" in report["restore_point"], report["restore_point"]
        assert "# Host rebuild" in (folder / "report.md").read_text()
        (record,) = [p for p in folder.glob("*.md") if p.name != "report.md"]
        assert "host-rebuild" in record.read_text() and "SUCCESS" in record.read_text()
        assert (copies / "rto_rpo.png").stat().st_mtime > time.time() - wall - 5

        rebuilt_stores = Lab(containers=lab.containers, ports=lab.ports, secrets_dir=lab.secrets_dir,
                             stack_root=Path("/opt/llmops/stack"), via=host.name)
        assert mariadb_checksums(rebuilt_stores) == original["mariadb"]
        assert postgres_rows(rebuilt_stores) == original["postgres"]
        assert redis_keys(rebuilt_stores) == original["redis"]
        for component, path in (("uploads", "/srv/appdb/uploads"), ("models", "/srv/ai/models")):
            there = json.loads(host.exec("python3", "-c", TREE_SCRIPT, path).stdout)
            assert there == original[component], component

        # the first backup of the new host was taken, so the daily health check passes there as it is scheduled
        monkeypatch.setenv("LLMOPS_NEWHOST", host.name)
        health = run_playbook("health.yml", inventory_path=NEWHOST_INVENTORY, check=False)
        assert health.returncode == 0, health.stdout[-4000:]
        assert re.search(r'"backup +OK ', health.stdout), health.stdout[-4000:]
        cron = host.exec("cat", "/etc/cron.d/llmops-backup", check=False).stdout.decode()
        assert "backup.yml" in cron, cron
        # production encrypts at rest: every artefact of that first backup is an age file
        heads = json.loads(host.exec("python3", "-c", HEADS_SCRIPT, "/backup/latest").stdout)
        assert len(heads) >= 6 and set(heads.values()) == {"age-encryption.org/v1\n"}, heads

        # no secret in the output, a command line, the backup volume (sets, config history, records) or the logs
        assert sampler.samples > 10 and not sampler.hits, [hit[:200] for hit in sampler.hits]
        leaked = [hashlib.sha256(s.encode()).hexdigest()[:12] for s in secret_values if s in output]
        assert not leaked, f"secrets (sha256 prefixes) in the -vvv output: {leaked}"
        host.write_file("/root/scan-patterns", "\n".join(secret_values) + "\n")
        found = host.exec("sh", "-c", "grep -rlaF -f /root/scan-patterns /backup /var/log; "
                          "journalctl --no-pager 2>/dev/null | grep -caF -f /root/scan-patterns", check=False)
        assert found.stdout.decode().split() == ["0"], found.stdout.decode()[-2000:]
        print(f"rebuild: RTO {report['rto_seconds']} s, RPO {report['rpo_seconds']} s (phases {report['phases']}), "
              f"wall {wall} s; new host {host.timings}; -e backup_id={report['restore_point']}")
