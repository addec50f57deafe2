"""The production Compose file's search engine (the official Elasticsearch image): authentication on, the elastic
password from a Compose secret file and never in the file or a command line, path.repo mounted from the appdb
storage, published on loopback only, on the app/DB network only; rendered and validated by `docker compose config`
(the production render of test_compose_render)."""

from __future__ import annotations

import json
import stat

from tests.integration.test_compose_render import compose_config, gpu_plan, production  # noqa: F401 - fixtures

PASSWORD = "test-search_password-0123456789"  # noqa: S105 - the value test_compose_render gives vault_search_password


def test_production_search_has_security_on_with_the_password_from_a_secret_file(production):  # noqa: F811
    path = production / "appdb" / "compose.yml"
    config = compose_config(path)
    search = config["services"]["search"]
    assert search["image"] == "docker.elastic.co/elasticsearch/elasticsearch:8.15.3"
    env = search["environment"]
    assert env["xpack.security.enabled"] == "true" and env["discovery.type"] == "single-node"
    assert env["ELASTIC_PASSWORD_FILE"] == "/run/secrets/search_password"  # noqa: S105 - a path, not a password
    assert "ELASTIC_PASSWORD" not in env
    assert [s["source"] for s in search["secrets"]] == ["search_password"]
    secret_file = production / "appdb" / "secrets" / "search_password"
    assert config["secrets"]["search_password"]["file"] == str(secret_file)
    assert secret_file.read_text() == PASSWORD
    info = secret_file.stat()
    assert info.st_uid == 1000 and stat.S_IMODE(info.st_mode) == 0o400  # the image's user reads it, nobody else
    # the password is in no file Compose shows and on no command line
    assert PASSWORD not in path.read_text() and PASSWORD not in json.dumps(config)
    health = " ".join(search["healthcheck"]["test"])
    assert "/run/secrets/search_password" in health and "Authorization: Basic" in health


def test_production_search_repository_mount_network_and_ports(production):  # noqa: F811
    config = compose_config(production / "appdb" / "compose.yml")
    search = config["services"]["search"]
    assert search["environment"]["path.repo"] == "/usr/share/elasticsearch/snapshots"
    mounts = {v["target"]: v["source"] for v in search["volumes"]}
    appdb = production.parent / "appdb"
    assert mounts == {"/usr/share/elasticsearch/data": str(appdb / "search"),
                      "/usr/share/elasticsearch/snapshots": str(appdb / "search-snapshots")}
    for folder in mounts.values():
        info = (production.parent / folder).stat()
        assert (info.st_uid, info.st_gid) == (1000, 0), folder  # the official image's user
    assert list(search["networks"]) == ["default"]  # the app/DB network only (not the backplane)
    assert [(p["host_ip"], p["published"], p["target"]) for p in search["ports"]] == [("127.0.0.1", "9200", 9200)]
    assert search["ulimits"]["nofile"] == {"soft": 65536, "hard": 65536}
