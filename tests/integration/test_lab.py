"""The lab as `make lab-seed` leaves it: the production Compose templates, locally built images,
fixed ports on 127.0.0.1 only, the settings the backups rely on, secrets kept off command lines,
and sample data in every store."""

from __future__ import annotations

import base64
import json
import socket
import stat
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import LAB_STATE, run_playbook

pytestmark = pytest.mark.lab


def inspect(container: str) -> dict:
    out = subprocess.run(["docker", "inspect", container], capture_output=True, text=True, check=True).stdout
    return json.loads(out)[0]


def test_every_store_runs_healthy_from_a_locally_built_image(lab):
    for service, name in lab.containers.items():
        info = inspect(name)
        assert info["State"]["Health"]["Status"] == "healthy", f"{name}: {info['State']['Health']['Log'][-1:]}"
        image = subprocess.run(["docker", "image", "inspect", info["Image"]], capture_output=True, text=True,
                               check=True).stdout
        labels = json.loads(image)[0]["Config"]["Labels"] or {}
        assert labels.get("org.llmops.content-hash"), f"{name} does not run a locally built image"
        project = info["Config"]["Labels"]["com.docker.compose.project"]
        assert project == ("llmops-ai" if service == "qdrant" else "llmops-appdb")


def test_ports_are_published_on_loopback_only(lab):
    container_ports = {"mariadb": "3306/tcp", "postgres": "5432/tcp", "redis": "6379/tcp", "qdrant": "6333/tcp",
                       "search": "9200/tcp"}
    for service, name in lab.containers.items():
        bindings = inspect(name)["HostConfig"]["PortBindings"]
        assert list(bindings) == [container_ports[service]]
        assert bindings[container_ports[service]] == [{"HostIp": "127.0.0.1", "HostPort": str(lab.ports[service])}]


def test_each_server_answers_on_its_port_with_its_secret(lab):
    # MariaDB and PostgreSQL through their own clients over TCP (the password in the environment)
    out = subprocess.run(
        ["docker", "run", "--rm", "--network", "host", "-e", "MYSQL_PWD", "llmops-lab/mariadb:10.11",
         "mariadb", "-h", "127.0.0.1", "-P", str(lab.ports["mariadb"]), "-uroot", "-N", "-e", "SELECT 40 + 2"],
        capture_output=True, text=True,
        env={"MYSQL_PWD": lab.secret("mariadb_root_password"), "PATH": "/usr/bin:/bin:/usr/local/bin"})
    assert out.stdout.strip() == "42", out.stderr
    out = subprocess.run(
        ["docker", "run", "--rm", "--network", "host", "-e", "PGPASSWORD", "llmops-lab/postgres:15",
         "psql", "-h", "127.0.0.1", "-p", str(lab.ports["postgres"]), "-U", "postgres", "-Atc", "SELECT 6 * 7"],
        capture_output=True, text=True,
        env={"PGPASSWORD": lab.secret("postgres_password"), "PATH": "/usr/bin:/bin:/usr/local/bin"})
    assert out.stdout.strip() == "42", out.stderr
    # Redis: RESP over a socket; without AUTH it refuses
    with socket.create_connection(("127.0.0.1", lab.ports["redis"]), timeout=5) as sock:
        sock.sendall(b"PING\r\n")
        assert sock.recv(100).startswith(b"-NOAUTH")
        password = lab.secret("redis_password").encode()
        sock.sendall(b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\nPING\r\n" % (len(password), password))
        reply = b""
        while reply.count(b"\r\n") < 2:
            reply += sock.recv(100)
        assert reply == b"+OK\r\n+PONG\r\n"
    # Qdrant stand-in: the API key is required
    url = f"http://127.0.0.1:{lab.ports['qdrant']}/collections"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=5)
    assert refused.value.code == 401
    req = urllib.request.Request(url, headers={"api-key": lab.secret("qdrant_api_key")})
    names = {c["name"] for c in json.load(urllib.request.urlopen(req, timeout=5))["result"]["collections"]}
    assert {"documents", "faq"} <= names
    # Elasticsearch stand-in: security on, the elastic user's password is required
    url = f"http://127.0.0.1:{lab.ports['search']}/_cluster/health"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=5)
    assert refused.value.code == 401
    token = base64.b64encode(f"elastic:{lab.secret('search_password')}".encode()).decode()
    req = urllib.request.Request(url, headers={"Authorization": f"Basic {token}"})
    assert json.load(urllib.request.urlopen(req, timeout=5))["status"] in ("green", "yellow")


def test_servers_have_the_settings_the_backups_rely_on(lab):
    assert lab.mariadb("SELECT @@log_bin, @@binlog_format, @@binlog_row_image") == [["1", "ROW", "FULL"]]
    persistence = lab.redis("INFO", "persistence")
    assert "aof_enabled:1" in persistence
    assert "rdb_last_bgsave_status:ok" in persistence
    assert lab.psql("SHOW wal_level") == [["replica"]]


def test_secrets_stay_in_0600_files_and_off_command_lines(lab):
    secrets = {p.name: p.read_text().strip() for p in lab.secrets_dir.iterdir()}
    lab_own = {"mariadb_root_password", "postgres_password", "redis_password", "qdrant_api_key", "search_password",
               "backup_auth_key"}
    # the prod-like inventory (tests/inventories/prodlike) generates the off-site repository's password here too,
    # once its test has run
    assert lab_own <= set(secrets) <= lab_own | {"offsite_password"}
    for path in [*lab.secrets_dir.iterdir(), *(lab.stack_root / "appdb" / "secrets").iterdir(),
                 lab.stack_root / "ai" / "secrets" / "qdrant.yaml"]:
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, f"{path} is readable by others"
    for name in lab.containers.values():
        info = inspect(name)
        exposed = json.dumps([info["Config"]["Cmd"], info["Config"]["Entrypoint"], info["Args"], info["Path"],
                              info["Config"]["Env"]])
        for value in secrets.values():
            assert value not in exposed, f"a secret shows in the command or environment of {name}"
    for compose in lab.stack_root.glob("*/compose.yml"):
        text = compose.read_text()
        for value in secrets.values():
            assert value not in text, f"a secret is written into {compose}"


def test_sample_data_is_in_every_store_and_folder(lab):
    counts = "SELECT COUNT(*) FROM users; SELECT COUNT(*) FROM documents; SELECT COUNT(*) FROM document_audit"
    assert lab.mariadb(counts, "llmops_app") == [["500"], ["2000"], ["2000"]]
    assert lab.mariadb("SELECT name FROM users WHERE id = 7", "llmops_app") == [["사용자 7 — Ünïcödé ✓"]]
    assert lab.psql("SELECT count(*) FROM chunks", "rag") == [["6000"]]
    assert lab.psql("SELECT count(*) FROM daily_usage", "analytics") == [["300"]]
    keyspace = lab.redis("INFO", "keyspace")
    assert "db0:keys=708," in keyspace and "db1:keys=250," in keyspace
    assert lab.redis("--no-raw", "GET", "binary:blob").strip() == '"\\x00\\x01\\xfe\\xffbinary\\r\\n"'
    req = urllib.request.Request(f"http://127.0.0.1:{lab.ports['qdrant']}/collections/documents/points/count",
                                 data=b'{"exact": true}', method="POST",
                                 headers={"api-key": lab.secret("qdrant_api_key"), "content-type": "application/json"})
    assert json.load(urllib.request.urlopen(req, timeout=5))["result"]["count"] == 300
    data = LAB_STATE / "data"
    uploads = [p for p in (data / "appdb" / "uploads").rglob("*") if p.is_file()]
    assert len(uploads) == 47 and any("공유 문서" in str(p) for p in uploads) and any("'" in p.name for p in uploads)
    # names that break naive scripts are in every store of the lab, so every backup and drill carries them
    assert {p.name for p in uploads} >= {"new\nline.txt", "tab\there.txt", "-leading dash; $(touch pwned).md", "empty"}
    assert any(p.is_symlink() for p in uploads)
    assert lab.mariadb("SELECT COUNT(*) FROM information_schema.columns WHERE table_name LIKE 'tab%\nnl'") == [["2"]]
    assert lab.psql("SELECT count(*) FROM pg_roles WHERE rolname LIKE '역할%'") == [["1"]]
    for where in (Path.cwd(), LAB_STATE, data / "appdb" / "uploads"):
        assert not (where / "pwned").exists()
    assert (data / "ai" / "models" / "llm" / "current").resolve().name == "v2"
    assert sorted(p.name for p in (data / "ai" / "models" / "llm").iterdir()) == ["current", "v1", "v2"]
    assert (LAB_STATE / "etc" / "llmops" / "app.yaml").is_file()


def test_deploying_the_lab_again_changes_nothing(lab):
    # Converge first: earlier tests restore data folders (safety copies, new datadirs) and the role
    # re-asserts their modes; then a second deployment must change nothing.
    run_playbook("stack.yml")
    proc = run_playbook("stack.yml")
    recap = [line for line in proc.stdout.splitlines() if line.startswith("lab ")]
    assert recap and "changed=0" in recap[-1] and "failed=0" in recap[-1], proc.stdout[-3000:]
