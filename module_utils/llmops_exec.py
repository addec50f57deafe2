"""Where a data store's tools run: inside its container (``docker exec``) or on the host.

The default is the store's own container: the tool's version then always matches the server's
(the official images ship ``mariadb-backup``, ``pg_dump``, ``redis-cli``...). Secrets travel as
environment variables *by name* (``docker exec -e NAME`` takes the value from our environment),
so they never appear on a command line, in ``ps`` or in ``docker inspect``.

Stdlib only and free of Ansible imports; modules import it as
``from ansible.module_utils.llmops_exec import ExecTarget``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

from ansible.module_utils.llmops_common import LlmopsError, connection_params
from ansible.module_utils.llmops_pipeline import STDERR_TAIL_BYTES, redact_text


class ExecError(LlmopsError):
    """A tool exited non-zero (or could not start); the message holds the redacted stderr tail."""

    def __init__(self, message, rc=None, stderr_tail=""):
        super().__init__(message)
        self.rc = rc
        self.stderr_tail = stderr_tail


_DOCKER_DOWN = ("Cannot connect to the Docker daemon", "Is the docker daemon running",
                "error during connect", "permission denied while trying to connect to the Docker daemon")


def docker_hint(text, container=None):
    """What to do about a ``docker`` client error in ``text`` (an engine that does not answer, a container that
    is not running or does not exist), as ``"; <what to do>"``, or ``""`` when it is no such error."""
    text = str(text or "")
    if any(words in text for words in _DOCKER_DOWN):
        return ("; the Docker engine does not answer (DOCKER_HOST=%s): start it (systemctl start docker) or correct "
                "DOCKER_HOST / the socket's permissions, check `docker ps`, then run again"
                % (os.environ.get("DOCKER_HOST") or "unset, the default socket"))
    name = container or "the container"
    if re.search(r"Container \S+ is (not running|restarting|paused)", text):
        return ("; the container %s is not running: start the stack (playbooks/stack.yml) or `docker start %s`, "
                "look at `docker logs %s` for why it stopped, then run again" % (name, name, name))
    if "No such container" in text:
        return ("; there is no container %s: deploy the stack (playbooks/stack.yml) or correct stack_containers in "
                "the inventory, then run again" % name)
    return ""


class ExecTarget:
    """Runs tools in ``container`` (as ``user``) or, with ``container=None``, on the host."""

    def __init__(self, container=None, user=None, docker="docker", workdir=None):
        self.container = container or None
        self.user = user or None
        self.docker = docker
        self.workdir = workdir

    def __repr__(self):
        return "ExecTarget(container=%r, user=%r)" % (self.container, self.user)

    def describe(self):
        return "container %s" % self.container if self.container else "the host"

    def argv(self, tool_argv, env_names=(), interactive=False):
        """The argv that runs ``tool_argv`` at this target, passing the named variables through."""
        tool_argv = [str(a) for a in tool_argv]
        if not self.container:
            return tool_argv
        argv = [self.docker, "exec"]
        if interactive:
            argv.append("-i")
        if self.user:
            argv += ["-u", self.user]
        if self.workdir:
            argv += ["-w", self.workdir]
        for name in sorted(env_names):
            argv += ["-e", name]
        return argv + [self.container] + tool_argv

    def env(self, env):
        """The environment for running ``argv(...)``: ours plus ``env`` (names only reach the tool)."""
        merged = dict(os.environ)
        merged.update({k: str(v) for k, v in (env or {}).items()})
        return merged

    def image(self):
        """The image the container runs (to start throw-away containers with the same tools)."""
        if not self.container:
            raise ExecError("tools run on the host: there is no container image")
        return self._docker_text(["inspect", "--format", "{{.Config.Image}}", self.container]).strip()

    def _docker_text(self, args):
        proc = subprocess.run([self.docker] + args, capture_output=True, timeout=120, check=False)
        if proc.returncode != 0:
            text = proc.stderr.decode("utf-8", "replace").strip()
            raise ExecError("docker %s failed: %s%s" % (args[0], text, docker_hint(text, self.container)))
        return proc.stdout.decode("utf-8", "replace")

    def run(self, tool_argv, env=None, stdin=None, timeout=600, check=True, redact=()):
        """Run a tool to completion; return its stdout (bytes). Raise ExecError when it fails."""
        argv = self.argv(tool_argv, env_names=(env or {}).keys(), interactive=stdin is not None)
        secrets = [str(v) for v in (env or {}).values() if v] + list(redact)
        try:
            proc = subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout,
                                  env=self.env(env), check=False)
        except FileNotFoundError as exc:
            raise ExecError("cannot run %s: %s not found on PATH" % (tool_argv[0], argv[0])) from exc
        except subprocess.TimeoutExpired as exc:
            raise ExecError("%s in %s did not finish within %s s" % (tool_argv[0], self.describe(), timeout)) from exc
        if check and proc.returncode != 0:
            tail = redact_text(proc.stderr[-STDERR_TAIL_BYTES:].decode("utf-8", "replace").strip(), secrets)
            raise ExecError("%s in %s exited with code %d: %s%s" % (
                tool_argv[0], self.describe(), proc.returncode, tail or "(no error output)",
                docker_hint(tail, self.container) if self.container or isinstance(self, ImageTarget) else ""),
                rc=proc.returncode, stderr_tail=tail)
        return proc.stdout

    def text(self, tool_argv, **kwargs):
        """``run`` decoded as UTF-8."""
        return self.run(tool_argv, **kwargs).decode("utf-8", "replace")

    def running(self):
        """Whether the container is running (always true on the host)."""
        if not self.container:
            return True
        proc = subprocess.run([self.docker, "inspect", "--format", "{{.State.Running}}", self.container],
                              capture_output=True, timeout=60, check=False)
        return proc.returncode == 0 and proc.stdout.strip() == b"true"

    def logs(self, tail=20):
        """The container's last ``tail`` log lines, redacted (empty on the host)."""
        if not self.container:
            return ""
        proc = subprocess.run([self.docker, "logs", "--tail", str(tail), self.container], capture_output=True,
                              timeout=60, check=False)
        return redact_text((proc.stdout + proc.stderr).decode("utf-8", "replace").strip()[-STDERR_TAIL_BYTES:], [])

    def wait_ready(self, probe_argv, timeout=300, env=None, ready=None, interval=0.2):
        """Run ``probe_argv`` here every ``interval`` s until it exits 0 (and, with ``ready``, until
        ``ready(stdout)`` is true): a server that has just started answering. Returns the probe's stdout.

        This awaits the event itself: a restore does not wait for the container's next health check (10 s
        apart), which would keep the store down longer than its own start takes. A container that stops
        meanwhile, or a server that does not answer within ``timeout`` s, raises ``ExecError`` with its log.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                out = self.run(probe_argv, env=env, timeout=30)
                if ready is None or ready(out):
                    return out
                exc = ExecError("%s answered %r" % (probe_argv[0], out[-200:].decode("utf-8", "replace").strip()))
            except ExecError as error:
                exc = error
            if not self.running():
                raise ExecError("%s stopped while starting: %s" % (self.describe(), self.logs())) from exc
            if time.monotonic() > deadline:
                raise ExecError("%s was not ready within %s s (%s): %s"
                                % (self.describe(), timeout, exc, self.logs())) from exc
            time.sleep(interval)


def connection_of(params):
    """``(target, conn, password)`` of a store module's connection options (``connection_argument_spec``):
    where its tools run (``container``, ``container_user``), how they log in (``connection_params``) and
    the password (passed to the tools by name in the environment, never on a command line)."""
    container = params["container"] or None
    target = ExecTarget(container, user=params["container_user"] if container else None)
    return target, connection_params(params), params["login_password"]


class ImageTarget(ExecTarget):
    """Runs tools in a throw-away container of ``image`` (``docker run --rm``) with host folders mounted.

    Used to prepare and copy back restores with the very image the server runs, so the tools
    match the server's version without touching the running container. ``mounts`` maps host
    paths to container paths.
    """

    def __init__(self, image, mounts=None, user=None, docker="docker"):
        super().__init__(container=None, user=user, docker=docker)
        self.image = image
        self.mounts = dict(mounts or {})

    def __repr__(self):
        return "ImageTarget(image=%r)" % (self.image,)

    def describe(self):
        return "a throw-away container of %s" % self.image

    def argv(self, tool_argv, env_names=(), interactive=False):
        tool_argv = [str(a) for a in tool_argv]
        argv = [self.docker, "run", "--rm", "--network", "none"]
        if interactive:
            argv.append("-i")
        if self.user:
            argv += ["-u", self.user]
        for host, inside in sorted(self.mounts.items()):
            argv += ["-v", "%s:%s" % (host, inside)]
        for name in sorted(env_names):
            argv += ["-e", name]
        return argv + ["--entrypoint", tool_argv[0], self.image] + tool_argv[1:]


class ScratchServer(ExecTarget):
    """A throw-away server of ``image`` (``docker run -d --network none``) on a data folder, for reading
    an artefact the way the real server would: fingerprints taken from what a backup holds, never
    from the live server at another moment.

    ``server_argv`` is the server's command (its first word the entrypoint), ``mounts`` maps host
    folders to container folders, ``ready_argv`` is run with ``docker exec`` until it exits 0.
    Use as a context manager; the container is removed on exit, whatever happened. Being an
    ``ExecTarget``, the store's own query functions run against it unchanged.
    """

    def __init__(self, image, server_argv, mounts=None, ready_argv=None, user=None, docker="docker",
                 ready_timeout=300, name_prefix="llmops-scratch"):
        super().__init__(container="%s-%s" % (name_prefix, os.urandom(6).hex()), user=user, docker=docker)
        self.image_name = image
        self.server_argv = [str(a) for a in server_argv]
        self.mounts = dict(mounts or {})
        self.ready_argv = list(ready_argv or [])
        self.ready_timeout = ready_timeout

    def __repr__(self):
        return "ScratchServer(image=%r, container=%r)" % (self.image_name, self.container)

    def describe(self):
        return "a scratch server of %s" % self.image_name

    def start(self):
        # no --rm: a server that dies while starting keeps its container, so logs() can say why (stop() removes it)
        argv = ["run", "-d", "--network", "none", "--name", self.container]
        if self.user:
            argv += ["-u", self.user]
        for host, inside in sorted(self.mounts.items()):
            argv += ["-v", "%s:%s" % (host, inside)]
        self._docker_text(argv + ["--entrypoint", self.server_argv[0], self.image_name] + self.server_argv[1:])
        self.wait_ready(self.ready_argv, timeout=self.ready_timeout)
        return self

    def stop(self):
        subprocess.run([self.docker, "rm", "-f", "-v", self.container], capture_output=True, timeout=120,
                       check=False)

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc_info):
        self.stop()
        return False


def health_probe_argv(test):
    """The argv that runs a container's own health check (``docker inspect``'s ``Config.Healthcheck.Test``) with
    ``docker exec``, or ``None`` when the container has none (no test, or ``NONE``)."""
    if not test or test[0] == "NONE":
        return None
    if test[0] == "CMD":
        return [str(a) for a in test[1:]]
    if test[0] == "CMD-SHELL" and len(test) == 2:
        return ["/bin/sh", "-c", str(test[1])]
    raise ExecError("unknown health check test %r" % (test,))


def await_healthy(containers, timeout=300, interval=0.25, docker="docker"):
    """Run each container's own health check every ``interval`` s until it passes, all containers at once, and
    return ``{name: seconds until it passed}`` (0 for one Docker already reports healthy; for one without a health
    check, the time until it runs).

    Docker runs a health check on its own schedule (``interval``: 10 to 30 s here), so a server that answers after
    2 s is reported healthy after 10. This awaits the answer itself, with the very probe Docker would run. A
    container that stops meanwhile, or does not pass within ``timeout`` s, raises ``ExecError`` naming every such
    container with its last log lines. Docker's own health status is not changed: it may still read ``starting``.
    """
    started = time.monotonic()

    def one(name):
        target = ExecTarget(name, docker=docker)
        info = json.loads(target._docker_text(["inspect", "--format", "{{json .}}", name]))
        state = info.get("State") or {}
        if (state.get("Health") or {}).get("Status") == "healthy":
            return 0.0
        probe = health_probe_argv((info.get("Config") or {}).get("Healthcheck", {}).get("Test"))
        if probe is None:
            if not state.get("Running"):  # read by the inspect above
                raise ExecError("container %s is %s: %s" % (name, state.get("Status"), target.logs()))
        else:
            target.wait_ready(probe, timeout=timeout, interval=interval)
        return round(time.monotonic() - started, 2)

    seconds, problems = {}, []
    with ThreadPoolExecutor(max_workers=max(1, len(containers))) as pool:
        futures = {name: pool.submit(one, name) for name in containers}
        for name, future in futures.items():
            try:
                seconds[name] = future.result()
            except ExecError as exc:
                problems.append(str(exc))
    if problems:
        raise ExecError("; ".join(problems))
    return seconds
