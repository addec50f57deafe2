"""Helpers of the fault tests: run the real backup playbook as a process of its own, watch its partial set
on disk, and kill it (SIGKILL) the way a crash or the OOM killer would.

Every run started here carries ``LLMOPS_FAULT_RUN=<token>`` in its environment; every process of the run
inherits it (ansible-playbook, its workers, the modules, the ``async`` component jobs that ansible
daemonises, their pipelines), so a test kills exactly its own run and never another engineer's.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from module_utils import llmops_backupset as bs
from tests.conftest import REPO, VENV_BIN, ansible_env

MARK = "LLMOPS_FAULT_RUN"


def backup_args(root: Path, metrics: Path | None = None) -> list[str]:
    """The extra vars of a backup into ``root`` (its metrics beside it unless ``metrics``)."""
    return ["-e", f"backup_root={root}", "-e", f"backup_metrics_dir={metrics or root.parent / 'metrics'}"]


def start_backup(root: Path, log: Path, token: str, *extra: str, metrics: Path | None = None) -> subprocess.Popen:
    """``ansible-playbook playbooks/backup.yml -e backup_root=<root>`` in a session of its own (its pid is
    the process group), output to ``log``."""
    return start_playbook("backup.yml", log, token, *backup_args(root, metrics), *extra)


def run_backup(root: Path, log: Path, token: str, *extra: str, metrics: Path | None = None,
               timeout: float = 600) -> tuple[int, str]:
    """A backup run to its end: ``(returncode, output)``."""
    return run_playbook("backup.yml", log, token, *backup_args(root, metrics), *extra, timeout=timeout)


def run_pids(token: str) -> list[int]:
    """The processes of the run marked ``token`` (read from /proc/<pid>/environ)."""
    needle = f"{MARK}={token}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                if needle in handle.read().split(b"\0"):
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def open_files(pid: int) -> list[str]:
    """What ``pid`` has open (fd link targets)."""
    out = []
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for fd in fds:
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
    return out


def kill_run(proc: subprocess.Popen, token: str, whole: bool = True) -> list[int]:
    """SIGKILL the run: ansible-playbook's process group, and with ``whole`` every other process of the run
    too (the component jobs, which ansible daemonised into sessions of their own). Returns what was
    killed besides the group."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)
    killed = []
    deadline = time.monotonic() + 30
    while whole and time.monotonic() < deadline:
        pids = run_pids(token)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    return killed


def wait_for(predicate, timeout: float, what: str, interval: float = 0.005, proc: subprocess.Popen | None = None,
             log: Path | None = None):
    """Poll ``predicate`` until it returns something true; fail naming ``what`` (and the run's output)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run ended (rc {proc.returncode}) before {what}:\n"
                                 f"{log.read_text(errors='replace')[-4000:] if log else ''}")
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def partials(root: Path) -> list[Path]:
    return sorted(root.glob(".*.partial")) if root.is_dir() else []


def in_flight(root: Path, component: str) -> dict[str, int]:
    """Files of ``component`` in the partial that a stream is writing now: run_pipeline's ``<dest>.tmp-<hex>``,
    rsync's ``.<name>.XXXXXX``, a download's ``.<name>.part-XXXX``; ``{path: size}``."""
    found = {}
    for partial in partials(root):
        base = partial / component
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if ".tmp-" in name or name.startswith("."):
                    try:
                        found[os.path.join(dirpath, name)] = os.lstat(os.path.join(dirpath, name)).st_size
                    except OSError:
                        continue
    return found


def looks_complete(root: Path) -> list[str]:
    """Entries of ``root`` that look like a finished set: folders not starting with '.', holding a manifest."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and not p.is_symlink()
                  and (p / bs.MANIFEST).exists())


def old_set(root: Path, days_ago: float = 1, name: str = "llmops") -> str:
    """A small finalized, successful set made with the library (its one artefact is a text file), as the
    previous night's set; returns its id."""
    when = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=days_ago)
    partial = bs.begin_set(root, name, when)
    os.unlink(os.path.join(partial, bs.OWNER))
    os.rmdir(os.path.join(partial, bs.COMPONENTS_DIR))
    os.makedirs(os.path.join(partial, "notes"))
    with open(os.path.join(partial, "notes", "note.txt"), "wb") as handle:
        handle.write(b"the previous night's set\n")
    bs.write_manifest(partial, {"status": "success", "started": bs.isoformat(when), "ended": bs.isoformat(when),
                                "components": {"notes": {"status": "success", "type": "files",
                                                         "files": [{"path": "notes/note.txt"}]}}})
    return os.path.basename(bs.finalize_set(partial, root, "success"))


def sha256sum_ok(set_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["sha256sum", "-c", "--strict", "--quiet", "SHA256SUMS"], cwd=set_dir,
                          capture_output=True, text=True)


def manifest(set_dir: Path) -> dict:
    return json.loads((set_dir / bs.MANIFEST).read_text())


class Webhook:
    """A Slack / Discord style webhook receiver on 127.0.0.1 that keeps what it was sent (``url``, ``received``)."""

    def __init__(self):
        import http.server
        import threading

        received = self.received = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def mount_tmpfs(path: Path, size: str) -> None:
    """A tmpfs of ``size`` (e.g. '24m') at ``path``: a backup volume that fills for real (needs root)."""
    if os.geteuid() != 0:
        raise AssertionError("this fault test mounts a small tmpfs as the backup volume: run it as root")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)], check=True)


def umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], check=False)


def start_playbook(playbook: str, log: Path, token: str, *extra: str, env: dict | None = None) -> subprocess.Popen:
    """``ansible-playbook playbooks/<playbook> <extra>`` in a session of its own, marked ``token`` like
    ``start_backup``, output to ``log``; ``env``: more environment variables."""
    cmd = [str(VENV_BIN / "ansible-playbook"), str(REPO / "playbooks" / playbook), *extra]
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, cwd=REPO, env=ansible_env(**{MARK: token}, **(env or {})), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def run_playbook(playbook: str, log: Path, token: str, *extra: str, timeout: float = 600,
                 env: dict | None = None) -> tuple[int, str]:
    """A playbook run to its end: ``(returncode, output)``."""
    proc = start_playbook(playbook, log, token, *extra, env=env)
    try:
        rc = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            kill_run(proc, token)
    return rc, log.read_text(errors="replace")


def pause_run(proc: subprocess.Popen) -> None:
    """SIGSTOP the run's process group: ansible-playbook stays alive (its owner records stay live) but does
    nothing until ``resume_run`` - a run caught in the middle, for as long as the test needs."""
    os.killpg(proc.pid, signal.SIGSTOP)


def resume_run(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGCONT)
    except ProcessLookupError:
        pass


def restore_journal(root: Path) -> dict:
    """The restore journal of ``root`` (``{}`` while there is none, or while it is being replaced)."""
    from module_utils.llmops_layout import layout_path

    try:
        return json.loads(Path(layout_path(root, "restore_journal")).read_text())
    except (OSError, ValueError):
        return {}


def containers_mounting(path: Path) -> list[str]:
    """Running throw-away containers (not the stack's ``llmops-*`` services) that mount ``path``: a tool container
    that a killed run left behind."""
    out = subprocess.run(["docker", "ps", "--format", "{{.Names}}", "--filter", f"volume={path}"],
                         capture_output=True, text=True, check=False).stdout.split()
    return [name for name in out if not name.startswith("llmops-")]


def wait_containers_gone(path: Path, timeout: float = 120) -> None:
    """Wait until no container mounts ``path`` any more (``docker run --rm`` tools outlive a killed client)."""
    wait_for(lambda: not containers_mounting(path), timeout, f"the containers that mount {path} to end")


def tree_digest(path: Path) -> str:
    """A fingerprint of a folder: each file's relative name, mode, size and content (a link's, not its target's)."""
    digest = hashlib.sha256()
    for dirpath, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for name in sorted(files):
            full = Path(dirpath, name)
            st = full.lstat()
            digest.update(f"{full.relative_to(path)}\0{st.st_mode:o}\0{st.st_size}\0".encode())
            if not full.is_symlink():
                with open(full, "rb") as handle:
                    for chunk in iter(lambda: handle.read(1 << 20), b""):
                        digest.update(chunk)
    return digest.hexdigest()
