"""playbooks/site.yml on a fresh Debian 12 host (molecule scenario `default`).

The host is the scenario's container; the Compose projects run on the lab machine's engine,
reached from inside the container through its socket.
"""

import json

import pytest
import yaml

ROOT = "/var/tmp/llmops-molecule"
SERVICES = {"appdb": ["mariadb", "postgres", "redis"], "ai": ["qdrant"]}


def _inspect(host, name):
    return json.loads(host.check_output(f"docker inspect {name}"))[0]


@pytest.mark.parametrize(("project", "service"), [(p, s) for p, ss in SERVICES.items() for s in ss])
def test_service_running_healthy_with_restart_policy(host, project, service):
    info = _inspect(host, f"llmops-molecule-{project}-{service}-1")
    assert info["State"]["Status"] == "running"
    assert info["State"]["Health"]["Status"] == "healthy"
    assert info["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    assert info["HostConfig"]["Memory"] > 0


@pytest.mark.parametrize("project", sorted(SERVICES))
def test_compose_file_rendered_valid_without_gpu_reservations(host, project):
    path = f"{ROOT}/stack/{project}/compose.yml"
    assert host.file(path).mode == 0o640
    host.run_expect([0], f"docker compose -f {path} config --quiet")
    compose = yaml.safe_load(host.file(path).content_string)
    assert sorted(compose["services"]) == sorted(SERVICES[project])
    for svc in compose["services"].values():
        devices = svc.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        assert devices == [], "no GPU on this host: no device reservation may be rendered"


@pytest.mark.parametrize("name", ["mariadb_root_password", "postgres_password", "redis_password"])
def test_secret_files_private(host, name):
    f = host.file(f"{ROOT}/stack/appdb/secrets/{name}")
    assert f.mode == 0o400 and f.uid == 999
    assert len(f.content_string) >= 12


def test_mariadb_binlog_in_row_format(host):
    # the password goes by environment (MYSQL_PWD), not on the command line
    out = host.check_output(
        "docker exec llmops-molecule-appdb-mariadb-1 sh -c "
        "'MYSQL_PWD=$(cat /run/secrets/mariadb_root_password) mariadb -uroot -Nse "
        "\"SELECT @@log_bin, @@binlog_format\"'")
    assert out.split() == ["1", "ROW"]


def test_redis_persistence(host):
    out = host.check_output(
        "docker exec llmops-molecule-appdb-redis-1 sh -c "
        "'REDISCLI_AUTH=$(cat /run/secrets/redis_password) redis-cli CONFIG GET appendonly'")
    assert out.split() == ["appendonly", "yes"]


def test_backup_schedule_installed(host):
    cron = host.file("/etc/cron.d/llmops-backup").content_string
    assert cron.count("#Ansible: llmops ") == 10  # the jobs of roles/backup_schedule (README: Schedules)
    assert host.service("cron").is_running


def test_monitoring_installed(host):
    assert host.file("/etc/prometheus/rules/llmops.rules.yml").exists
    assert host.service("prometheus-node-exporter").is_running


def test_base_and_docker(host):
    assert host.file("/backup").mode == 0o700
    daemon = json.loads(host.file("/etc/docker/daemon.json").content_string)
    assert daemon["log-opts"]["max-size"] == "50m"
    assert daemon.get("default-runtime", "runc") != "nvidia"


def test_health_metrics_written(host):
    text = host.file("/var/lib/node_exporter/textfile_collector/llmops_health.prom").content_string
    for name in ("appdb-mariadb", "appdb-postgres", "appdb-redis", "ai-qdrant"):
        assert f'llmops_container_healthy{{container="llmops-molecule-{name}-1"}} 1.0' in text
    assert 'llmops_health_check_status{check="backup"} 2.0' in text
