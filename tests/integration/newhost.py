"""The bare "new host" of the rebuild test: a fresh Debian 12 container with its own Docker engine inside.

The image (compose/images/newhost, built by ``scripts/images.sh newhost``) is a Debian 12 server as a fresh install
leaves it (systemd as init, python3, sudo) plus Debian's docker.io; it holds no data and no images. It runs with
the capabilities that work on this machine (``../shared/notes/lab-facts.md``): ``--privileged`` is refused here
(CAP_SYS_RESOURCE is outside the bounding set), so every capability but that one, no seccomp or AppArmor profile,
and the host's cgroup tree. The engine inside has no iptables and no default bridge (the image's
/etc/docker/daemon.json); its data lives in an anonymous volume, removed with the container, on which the engine
chooses overlay2 (vfs where overlay cannot mount).

Production pulls its images from a registry; none is reachable here, so :meth:`NewHost.load_images` streams the
lab's images in from ``docker save`` (the stand-in for a pull). Secrets go into the host on stdin
(:meth:`NewHost.write_file`), never on a command line.

Use::

    with new_host() as host:            # builds the image if needed, starts it, waits for the engine
        host.load_images(["llmops-lab/mariadb:10.11"])
        host.docker("run", "-d", ...)   # `docker` inside the new host
        host.timings                    # seconds: start, engine_up, image_load, ...

Everything started is removed on exit (the container, its volumes, the inner engine's data with it).
"""

from __future__ import annotations

import contextlib
import secrets
import shlex
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
IMAGE = "llmops-lab/newhost:bookworm"
LABEL = "org.llmops.test=newhost"
# What works here instead of --privileged (lab-facts.md "Containers that run Docker themselves").
RUN_ARGS = ("--cap-add=ALL", "--cap-drop=SYS_RESOURCE", "--security-opt", "seccomp=unconfined",
            "--security-opt", "apparmor=unconfined", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
            "--tmpfs", "/run", "--tmpfs", "/run/lock")


class NewHostError(AssertionError):
    """A step of the new host failed; the message holds the command and its output."""


def _run(argv, *, input=None, timeout=300, check=True):
    proc = subprocess.run(argv, input=input, capture_output=True, timeout=timeout)
    if check and proc.returncode != 0:
        out, err = proc.stdout.decode(errors="replace")[-1500:], proc.stderr.decode(errors="replace")[-2500:]
        raise NewHostError(f"{shlex.join(argv)} failed (rc {proc.returncode}): {out}{err}")
    return proc


def build_image():
    """``scripts/images.sh newhost`` (nothing to do when the image is up to date)."""
    _run([str(REPO / "scripts" / "images.sh"), "newhost"], timeout=1200)


class NewHost:
    """A running new-host container: ``exec`` runs in it, ``docker`` runs its own engine's CLI."""

    def __init__(self, name, image=IMAGE, volumes=()):
        self.name = name
        self.image = image
        self.volumes = tuple(volumes)
        self.timings = {}

    # ---------------------------------------------------------------- lifecycle
    def start(self, engine_timeout=120):
        t0 = time.monotonic()
        mounts = [arg for volume in self.volumes for arg in ("-v", volume)]
        _run(["docker", "run", "-d", "--name", self.name, "--hostname", "newhost", "--label", LABEL,
              *RUN_ARGS, *mounts, self.image])
        self.timings["start"] = round(time.monotonic() - t0, 2)
        deadline = time.monotonic() + engine_timeout
        last = None
        while time.monotonic() < deadline:
            last = self.exec("docker", "info", "--format", "{{.ServerVersion}} {{.Driver}}", check=False, timeout=30)
            if last.returncode == 0:
                break
            time.sleep(0.5)
        else:
            journal = self.exec("journalctl", "-u", "docker", "--no-pager", "-n", "40", check=False).stdout
            err = (last.stderr if last else b"").decode(errors="replace")
            raise NewHostError(f"the Docker engine inside {self.name} did not come up within {engine_timeout} s: "
                               f"{err}\n{journal.decode(errors='replace')[-3000:]}")
        self.engine = last.stdout.decode().strip()
        self.timings["engine_up"] = round(time.monotonic() - t0, 2)
        return self

    def remove(self):
        """Remove the container and its anonymous volumes (the inner engine's images and containers)."""
        _run(["docker", "rm", "-f", "-v", self.name], check=False, timeout=300)

    # ---------------------------------------------------------------- commands
    def exec(self, *argv, input=None, check=True, timeout=300):
        """Run ``argv`` inside the new host (``docker exec``; stdin when ``input`` is given)."""
        cmd = ["docker", "exec"] + (["-i"] if input is not None else []) + [self.name, *argv]
        return _run(cmd, input=input, timeout=timeout, check=check)

    def docker(self, *args, input=None, check=True, timeout=300):
        """The new host's own ``docker`` CLI."""
        return self.exec("docker", *args, input=input, check=check, timeout=timeout)

    def write_file(self, path, data, mode="0600"):
        """Write ``data`` to ``path`` inside the host through stdin (never on a command line)."""
        self.exec("sh", "-c", 'umask 077 && mkdir -p "$(dirname "$1")" && cat > "$1" && chmod "$2" "$1"', "sh",
                  path, mode, input=data.encode() if isinstance(data, str) else data)

    def images(self):
        out = self.docker("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.decode()
        return sorted(line for line in out.splitlines() if line)

    def load_images(self, tags):
        """Stream ``docker save TAGS`` from the lab's engine into ``docker load`` of the new host (the stand-in
        for a registry pull). Returns the seconds it took (also in ``timings["image_load"]``)."""
        t0 = time.monotonic()
        save = subprocess.Popen(["docker", "save", *tags], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        load = subprocess.run(["docker", "exec", "-i", self.name, "docker", "load"], stdin=save.stdout,
                              capture_output=True, timeout=1200)
        save.stdout.close()
        save_err = save.stderr.read().decode(errors="replace")
        save.wait(60)
        if save.returncode != 0 or load.returncode != 0:
            raise NewHostError(f"loading {', '.join(tags)} into {self.name} failed: docker save rc {save.returncode} "
                               f"{save_err[-1500:]}; docker load rc {load.returncode} "
                               f"{load.stderr.decode(errors='replace')[-1500:]}")
        took = round(time.monotonic() - t0, 2)
        self.timings["image_load"] = round(self.timings.get("image_load", 0) + took, 2)
        return took

    def wait_healthy(self, container, probe, timeout=180):
        """Wait until ``container`` (in the new host) is ``healthy`` by its HEALTHCHECK and ``probe`` (argv run
        with ``docker exec`` in it) succeeds. Returns the seconds waited."""
        t0 = time.monotonic()
        state = probe_out = ""
        while time.monotonic() - t0 < timeout:
            state = self.docker("inspect", "-f", "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}"
                                "{{end}}", container, check=False).stdout.decode().strip()
            if state.startswith("exited") or state.startswith("dead"):
                break
            if state.endswith("healthy") and not state.endswith("unhealthy"):
                done = self.docker("exec", container, *probe, check=False)
                probe_out = (done.stdout + done.stderr).decode(errors="replace")
                if done.returncode == 0:
                    return round(time.monotonic() - t0, 2)
            time.sleep(0.5)
        logs = self.docker("logs", "--tail", "40", container, check=False)
        tail = (logs.stdout + logs.stderr).decode(errors="replace")[-3000:]
        raise NewHostError(f"container {container} in {self.name} is not healthy after {time.monotonic() - t0:.0f} s "
                           f"(state {state!r}, probe {probe_out!r}): {tail}")


@contextlib.contextmanager
def new_host(image=IMAGE, build=True, volumes=()):
    """A fresh new host for the duration of the ``with`` block; removed afterwards, also on failure. ``volumes``:
    ``docker run -v`` arguments, e.g. ``/backup`` (an anonymous volume: the backups on a mount of their own)."""
    if build:
        build_image()
    host = NewHost(f"llmops-newhost-{secrets.token_hex(4)}", image, volumes)
    try:
        host.start()
        yield host
    finally:
        host.remove()
