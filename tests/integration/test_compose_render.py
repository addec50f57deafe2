"""The Compose templates rendered for production (official images, GPU split 3+1) and for the lab,
validated by `docker compose config` and by the Compose specification's JSON schema."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import yaml

from tests.conftest import LAB_STATE, VENV_BIN, fake_nvidia_smi, run_module, run_playbook

GIB = {"g": 1, "m": 1 / 1024}
UUID = "GPU-00000000-0000-0000-0000-00000000000%d"


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
    names = ["mariadb_root_password", "postgres_password", "redis_password", "qdrant_api_key"]
    secrets.write_text(yaml.safe_dump({f"vault_{k}": f"test-{k}-0123456789" for k in names}))
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
    assert (production / "appdb" / "secrets" / "redis_password").read_text() == "test-redis_password-0123456789"


@pytest.mark.lab
@pytest.mark.parametrize("project", ["appdb", "ai"])
def test_lab_files_validate_against_the_schema(lab, project):
    path = LAB_STATE / "stack" / project / "compose.yml"
    schema_check(path)
    services = compose_config(path)["services"]
    assert not any("devices" in json.dumps(s) for s in services.values()), "the lab must not reserve GPUs"
