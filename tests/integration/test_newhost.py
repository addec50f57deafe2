"""The bare new host of the rebuild test (tests/integration/newhost.py) works: a fresh Debian 12 container with no
data and no images runs its own Docker engine, takes the lab's MariaDB image from a `docker save` archive (no
registry is reachable here) and runs a MariaDB container that answers `mariadb-admin ping`. Prints the timings
(start, engine up, image load, container healthy); everything it started is removed."""

from __future__ import annotations

import secrets
import subprocess
import time

import pytest

from tests.integration.newhost import LABEL, new_host

pytestmark = [pytest.mark.lab, pytest.mark.slow]

MARIADB_IMAGE = "llmops-lab/mariadb:10.11"


def test_new_host_runs_docker_and_the_lab_mariadb_image():
    present = subprocess.run(["docker", "image", "inspect", MARIADB_IMAGE], capture_output=True)
    assert present.returncode == 0, f"{MARIADB_IMAGE} is not built: run scripts/images.sh mariadb (make lab-up)"
    t0 = time.monotonic()
    with new_host() as host:
        name = host.name
        built_and_started = round(time.monotonic() - t0, 2)
        # bare: its own engine (not the lab's: no lab container is visible), no images, no containers, no data
        assert host.engine.split()[-1] in ("overlay2", "vfs"), host.engine
        assert host.images() == []
        assert host.docker("ps", "-aq").stdout.strip() == b""
        assert host.exec("test", "-e", "/srv/llmops", check=False).returncode != 0
        assert host.exec("systemctl", "is-active", "docker").stdout.strip() == b"active"

        host.load_images([MARIADB_IMAGE])
        assert host.images() == [MARIADB_IMAGE]

        password = "newhost-" + secrets.token_hex(12)
        host.write_file("/root/secrets/mariadb_root_password", password)
        mode = host.exec("stat", "-c", "%a", "/root/secrets/mariadb_root_password").stdout.strip()
        assert mode == b"600", mode
        t_run = time.monotonic()
        host.docker("run", "-d", "--name", "appdb-mariadb", "--network", "none",
                    "-e", "MARIADB_ROOT_PASSWORD_FILE=/run/secrets/root_password",
                    "-v", "/root/secrets/mariadb_root_password:/run/secrets/root_password:ro", MARIADB_IMAGE)
        host.wait_healthy("appdb-mariadb", ["mariadb-admin", "ping"])
        host.timings["container_healthy"] = round(time.monotonic() - t_run, 2)
        pong = host.docker("exec", "appdb-mariadb", "mariadb-admin", "ping").stdout.decode()
        assert "mysqld is alive" in pong, pong
        # the root password the entrypoint set from the secret file works over TCP (it reaches the client through
        # an option file written by the shell's printf builtin, never through a command line)
        login = ('umask 077; printf "[client]\\npassword=%s\\n" "$(cat /run/secrets/root_password)" > /tmp/my.cnf; '
                 'mariadb --defaults-extra-file=/tmp/my.cnf -h 127.0.0.1 -u root -N -e "SELECT VERSION()"')
        version = host.docker("exec", "appdb-mariadb", "sh", "-c", login).stdout.decode()
        assert version.startswith("10.11"), version
        # the inner container runs on the new host's engine, not on the lab's
        lab_names = subprocess.run(["docker", "ps", "-a", "--format", "{{.Names}}"], capture_output=True,
                                   text=True).stdout.split()
        assert "appdb-mariadb" not in lab_names and name in lab_names
        print(f"new host timings (s): build+start+engine {built_and_started}, " +
              ", ".join(f"{k} {v}" for k, v in host.timings.items()))
    left = subprocess.run(["docker", "ps", "-a", "--filter", f"label={LABEL}", "--filter", f"name={name}",
                           "--format", "{{.Names}}"], capture_output=True, text=True).stdout.split()
    assert left == [], f"the new host was not removed: {left}"
