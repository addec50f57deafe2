"""roles/docker on a fresh Debian 12 host (molecule scenario `docker`)."""

import json


def test_engine_package_installed(host):
    assert host.package("docker.io").is_installed


def test_compose_v2_plugin(host):
    out = host.check_output("docker compose version")
    assert "v2." in out or "version 2." in out


def test_daemon_json_merged_not_overwritten(host):
    daemon = json.loads(host.file("/etc/docker/daemon.json").content_string)
    # ours
    assert daemon["log-driver"] == "json-file"
    assert daemon["log-opts"] == {"max-size": "50m", "max-file": "5"}
    assert daemon["live-restore"] is True
    assert daemon["data-root"] == "/srv/ai/docker"
    # written before the role ran, kept
    assert daemon["runtimes"]["nvidia"]["path"] == "nvidia-container-runtime"
    assert daemon["log-level"] == "warn"
    # never the default runtime
    assert daemon.get("default-runtime", "runc") != "nvidia"
