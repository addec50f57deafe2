"""The Compose templates rendered for production (official images, GPU split 3+1) and for the lab,
validated by `docker compose config` and by the Compose specification's JSON schema."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import stat
import subprocess
import time

import pytest
import yaml

from tests.conftest import LAB_STATE, REPO, VENV_BIN, fake_nvidia_smi, run_module, run_playbook

GIB = {"g": 1, "m": 1 / 1024}
UUID = "GPU-00000000-0000-0000-0000-00000000000%d"
# A Redis password with what redis.conf's parser treats specially: space, double quote, backslash, $ and #.
REDIS_PASSWORD = 'test-redis_password-0123456789 "q" \\ $HOME #x'  # noqa: S105 - a test value


def schema_check(path) -> None:
    proc = subprocess.run([str(VENV_BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def compose_config(path) -> dict:
    # --profile training: the training job only exists under its profile
    proc = subprocess.run(["docker", "compose", "-f", str(path), "--profile", "training", "config", "--format", "json"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def gpu_plan(tmp_path_factory):
    """The 3+1 split as site.yml plans it: gpu_facts on real nvidia-smi output of 4 Ada GPUs whose
    indexes are not in PCI bus order (tests/data/nvidia-smi/README.md says how it was assembled)."""
    smi = fake_nvidia_smi(tmp_path_factory.mktemp("smi"), "ada-4gpu-reordered__query-gpu.csv")
    result = run_module("gpu_facts", {"nvidia_smi_path": str(smi), "groups": {"ai": 3, "appdb": 1}})
    assert not result.get("failed"), result
    return result["ansible_facts"]["gpu_device_ids"]


@pytest.fixture(scope="module")
def production(tmp_path_factory, gpu_plan):
    """Render (only) the production projects on this machine with test secrets and the planned split."""
    root = tmp_path_factory.mktemp("prod")
    secrets = root / "vault.yml"
    # every value the example vault names (a new vault_* setting of the production inventory is rendered too)
    vault_example = REPO / "inventories" / "production" / "group_vars" / "all" / "vault.yml.example"
    example = yaml.safe_load(vault_example.read_text())
    values = {k: f"test-{k.removeprefix('vault_')}-0123456789" for k in example}
    values["vault_redis_password"] = REDIS_PASSWORD
    secrets.write_text(yaml.safe_dump(values))
    secrets.chmod(0o600)
    extra = {"ansible_connection": "local", "ansible_become": False,
             "ansible_python_interpreter": str(VENV_BIN / "python"),
             "stack_deploy": False, "stack_root": str(root / "stack"), "appdb_storage_path": str(root / "appdb"),
             "ai_storage_path": str(root / "ai"), "app_uploads_path": str(root / "appdb/uploads"),
             "models_path": str(root / "ai/models"), "gpu_split_device_ids": gpu_plan}
    run_playbook("stack.yml", "-e", json.dumps(extra), "-e", f"@{secrets}", inventory="production")
    return root / "stack"


@pytest.mark.parametrize("project", ["appdb", "ai"])
def test_production_files_validate_against_compose_and_its_schema(production, project):
    schema_check(production / project / "compose.yml")
    compose_config(production / project / "compose.yml")


def test_production_uses_official_images_and_the_3_plus_1_gpu_split(production, gpu_plan):
    # PCI bus order 01, 21, 41 (indexes 1, 3, 0) to the AI group, 61 (index 2) to app/DB
    assert gpu_plan == {"ai": [UUID % 1, UUID % 3, UUID % 0], "appdb": [UUID % 2]}
    appdb = compose_config(production / "appdb" / "compose.yml")["services"]
    ai = compose_config(production / "ai" / "compose.yml")["services"]
    assert set(appdb) == {"api", "mariadb", "postgres", "redis", "search"}
    assert set(ai) == {"llm", "embedding", "training", "qdrant"}
    assert ai["qdrant"]["image"] == "qdrant/qdrant:v1.19.0"
    assert appdb["mariadb"]["image"] == "mariadb:10.11"
    gpu_services = {}
    for name, svc in {**appdb, **ai}.items():
        devices = svc.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        for dev in devices:
            assert "count" not in dev, f"{name}: count together with device_ids"
            assert all(isinstance(i, str) for i in dev["device_ids"])
            gpu_services[name] = dev["device_ids"]
            assert svc["environment"]["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert gpu_services == {"api": gpu_plan["appdb"], "llm": gpu_plan["ai"], "embedding": gpu_plan["ai"],
                            "training": gpu_plan["ai"]}


def test_production_memory_limits_fit_each_group(production):
    for project in ["appdb", "ai"]:
        services = compose_config(production / project / "compose.yml")["services"]
        total = sum(int(s["deploy"]["resources"]["limits"]["memory"]) for s in services.values()) / 2**30
        assert 0 < total <= 128, f"{project}: {total:.0f} GiB of limits exceed the group's 128 GB"


def test_production_services_are_healthchecked_and_published_on_loopback(production):
    for project in ["appdb", "ai"]:
        for name, svc in compose_config(production / project / "compose.yml")["services"].items():
            if name != "training":
                assert svc.get("healthcheck", {}).get("test"), f"{name} has no health check"
                assert svc["restart"] == "unless-stopped"
            for port in svc.get("ports", []):
                assert port["host_ip"] == "127.0.0.1", f"{name} publishes on {port['host_ip']}"
    mariadb_cnf = (production / "appdb" / "config" / "mariadb.cnf").read_text()
    assert re.search(r"^binlog_format = ROW$", mariadb_cnf, re.M)
    assert re.search(r"^appendonly yes$", (production / "appdb" / "config" / "redis.conf").read_text(), re.M)


def test_production_secrets_are_files_not_compose_values(production):
    for project in ["appdb", "ai"]:
        text = (production / project / "compose.yml").read_text()
        assert "-0123456789" not in text
    assert (production / "appdb" / "secrets" / "redis_password").read_text() == REDIS_PASSWORD


def test_production_qdrant_key_is_a_mounted_config_file_not_environment(production):
    qdrant = compose_config(production / "ai" / "compose.yml")["services"]["qdrant"]
    assert "env_file" not in qdrant
    assert not [k for k in qdrant.get("environment") or {} if "API_KEY" in k]
    mounts = {v["target"]: v for v in qdrant["volumes"]}
    local = mounts["/qdrant/config/local.yaml"]
    assert local["source"] == str(production / "ai" / "secrets" / "qdrant.yaml") and local["read_only"] is True
    config = production / "ai" / "secrets" / "qdrant.yaml"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert yaml.safe_load(config.read_text()) == {"service": {"api_key": "test-qdrant_api_key-0123456789"}}
    assert not (production / "ai" / "secrets" / "qdrant.env").exists()


def test_the_standin_reads_the_key_from_the_rendered_production_file(production, tmp_path):
    """The lab's stand-in gets the key the way production Qdrant does: /qdrant/config/local.yaml."""
    from module_utils.llmops_qdrant import QdrantClient, QdrantError
    from tests.unit.qdrant_fixtures import StandinProcess

    (tmp_path / "config").mkdir()
    shutil.copy(production / "ai" / "secrets" / "qdrant.yaml", tmp_path / "config" / "local.yaml")
    proc = StandinProcess(tmp_path, None)
    proc.start()
    try:
        with pytest.raises(QdrantError) as err:
            QdrantClient(proc.url, retries=0, timeout=5).list_collections()
        assert err.value.status == 401
        assert QdrantClient(proc.url, api_key="test-qdrant_api_key-0123456789", retries=0,
                            timeout=5).list_collections() == []
    finally:
        proc.stop()


def lab_image(service: str) -> str:
    inventory = yaml.safe_load((REPO / "inventories" / "lab" / "group_vars" / "all" / "main.yml").read_text())
    image = inventory["stack_images"][service]
    if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode != 0:
        pytest.fail(f"the lab image {image} is missing: run make lab-seed (scripts/images.sh builds it)")
    return image


def resp(sock_file, *args: bytes) -> bytes:
    """Send one RESP command, return the first reply line."""
    sock_file.write(b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args))
    sock_file.flush()
    return sock_file.readline().rstrip(b"\r\n")


def test_production_redis_conf_quotes_requirepass_for_a_real_redis_server(production):
    """The rendered redis.conf, read by redis-server itself (the lab's image) in a throwaway container on a random
    port: the password with space, quote, backslash, $ and # is the password, byte for byte."""
    conf = production / "appdb" / "config" / "redis.conf"
    assert re.search(r'^requirepass "(?:[^"\\]|\\.)*"$', conf.read_text(), re.M)
    name = f"llmops-test-redisconf-{os.urandom(4).hex()}"
    proc = subprocess.run(["docker", "run", "-d", "--rm", "--name", name, "-p", "127.0.0.1::6379",
                           "-v", f"{conf}:/usr/local/etc/redis/redis.conf:ro", lab_image("redis")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    try:
        port = int(subprocess.run(["docker", "port", name, "6379/tcp"], capture_output=True, text=True,
                                  check=True).stdout.split(":")[-1])
        env = {**os.environ, "REDISCLI_AUTH": REDIS_PASSWORD}  # redis-cli reads it from its environment
        deadline = time.monotonic() + 60
        while True:
            ping = subprocess.run(["docker", "exec", "-e", "REDISCLI_AUTH", name, "redis-cli", "ping"], env=env,
                                  capture_output=True, text=True)
            if ping.stdout.strip() == "PONG" or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True).stderr
        assert ping.stdout.strip() == "PONG", (ping.stdout, ping.stderr, logs[-2000:])
        anonymous = subprocess.run(["docker", "exec", name, "redis-cli", "ping"], capture_output=True, text=True)
        assert "NOAUTH" in anonymous.stdout + anonymous.stderr
        # over the published port, from here: the exact bytes authenticate, a near miss does not
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock, sock.makefile("rwb") as f:
            assert resp(f, b"AUTH", REDIS_PASSWORD.replace("\\", "").encode()).startswith(b"-WRONGPASS")
            assert resp(f, b"AUTH", REDIS_PASSWORD.encode()) == b"+OK"
            assert resp(f, b"PING") == b"+PONG"
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def test_example_vault_values_and_short_secrets_are_refused_by_name(tmp_path):
    """vault.yml.example's change-me-* values are long enough for a length check: they are refused by name, as is a
    short secret; the output names the variables, never their values."""
    example = yaml.safe_load((REPO / "inventories" / "production" / "group_vars" / "all" /
                              "vault.yml.example").read_text())
    values = dict(example, vault_postgres_password="short")  # noqa: S106 - a test value
    vault = tmp_path / "vault.yml"
    vault.write_text(yaml.safe_dump(values))
    extra = {"ansible_connection": "local", "ansible_become": False,
             "ansible_python_interpreter": str(VENV_BIN / "python"), "stack_deploy": False,
             "stack_root": str(tmp_path / "stack"), "appdb_storage_path": str(tmp_path / "appdb"),
             "ai_storage_path": str(tmp_path / "ai"), "app_uploads_path": str(tmp_path / "appdb/uploads"),
             "models_path": str(tmp_path / "ai/models"), "gpu_split_device_ids": {}}
    proc = run_playbook("stack.yml", "-e", json.dumps(extra), "-e", f"@{vault}", inventory="production", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    for name in ["mariadb_root_password", "redis_password", "qdrant_api_key"]:
        assert f"{name} still holds an example value" in out, out[-3000:]
    assert "postgres_password is not set or shorter than 12 characters" in out
    assert not [v for v in values.values() if v in out and v != "short"], "a secret value is in the output"
    assert not (tmp_path / "stack" / "appdb" / "secrets").exists()  # nothing was rendered


@pytest.mark.lab
@pytest.mark.parametrize("project", ["appdb", "ai"])
def test_lab_files_validate_against_the_schema(lab, project):
    path = LAB_STATE / "stack" / project / "compose.yml"
    schema_check(path)
    services = compose_config(path)["services"]
    assert not any("devices" in json.dumps(s) for s in services.values()), "the lab must not reserve GPUs"
