"""The lab as the benchmark sees it: its containers, secrets, the playbooks and the bare tools.

Everything here runs what an operator would run: ``ansible-playbook`` for the bundle, and for the bare tools the
commands typed by hand (``docker exec … | zstd … > file``, ``rsync``). Secrets reach ``docker exec`` by name from
this process's environment (``-e NAME``), never on a command line.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAB_STATE = REPO / ".state" / "lab"
VENV_BIN = REPO / ".venv" / "bin"


class BenchError(RuntimeError):
    """A step of the benchmark failed; the message names the command and its log."""


def ansible_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(PATH=f"{VENV_BIN}:{env.get('PATH', '')}", ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
               ANSIBLE_COLLECTIONS_PATH=str(REPO / "collections"), ANSIBLE_NOCOLOR="1",
               )
    env.pop("ANSIBLE_CALLBACKS_ENABLED", None)  # no per-task profile: it would be part of the measured time
    return env


def secret(name: str) -> str:
    return (LAB_STATE / "secrets" / name).read_text().strip()


def container(service: str) -> str:
    """The running container of a lab service (found by its Compose labels, not by a guessed name)."""
    out = subprocess.run(["docker", "ps", "-q", "--filter", f"label=com.docker.compose.service={service}",
                          "--filter", "label=com.docker.compose.project=llmops-appdb", "--format", "{{.Names}}"],
                         capture_output=True, text=True, check=True).stdout.split()
    if len(out) != 1:
        raise BenchError(f"lab service {service}: expected one running container, found {out or 'none'}: "
                         "run `make lab-up` first")
    return out[0]


def sh(script: str, *, env: dict[str, str] | None = None, log: Path | None = None, timeout: int = 7200) -> float:
    """Run a bash pipeline (``set -o pipefail``); return its wall time in seconds; raise with its log on failure."""
    start = time.perf_counter()
    with open(log or os.devnull, "ab") as out:
        proc = subprocess.run(["bash", "-o", "pipefail", "-c", script], stdout=out, stderr=subprocess.STDOUT,
                              env={**os.environ, **(env or {})}, timeout=timeout, check=False)
    took = time.perf_counter() - start
    if proc.returncode:
        where = f"; log: {log}" if log else ""
        raise BenchError(f"bare command failed (rc {proc.returncode}): {script[:200]}{where}")
    return took


def text(argv: list[str], stdin: str | None = None, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, env={**os.environ, **(env or {})},
                          check=False, timeout=7200)
    if proc.returncode:
        raise BenchError(f"{' '.join(argv[:6])}: rc {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return proc.stdout


def playbook(name: str, extra: dict, log: Path) -> float:
    """``ansible-playbook playbooks/<name>`` with ``extra`` as one JSON ``-e`` (no secret is ever in it); wall time."""
    argv = [str(VENV_BIN / "ansible-playbook"), f"playbooks/{name}", "-e", json.dumps(extra)]
    start = time.perf_counter()
    with open(log, "ab") as out:
        out.write(("\n$ " + " ".join(argv) + "\n").encode())
        out.flush()
        proc = subprocess.run(argv, cwd=REPO, env=ansible_env(), stdout=out, stderr=subprocess.STDOUT,
                              check=False, timeout=7200)
    took = time.perf_counter() - start
    if proc.returncode:
        raise BenchError(f"ansible-playbook {name} {json.dumps(extra)} failed (rc {proc.returncode}); log: {log}")
    return took


def evict(path: Path) -> None:
    """Drop the page cache of every file under ``path`` (``posix_fadvise DONTNEED`` after a sync), and only of
    those: a read from the disk afterwards is a read of that data, while what a run has just written (an
    artefact read back to fingerprint it) stays cached as it would in production."""
    os.sync()
    for f in path.rglob("*"):
        if f.is_file() and not f.is_symlink():
            fd = os.open(f, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def drop_caches() -> bool:
    """Flush dirty pages and drop the page cache (root); False when the kernel does not let us."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def latest_set(root: Path) -> Path:
    sets = sorted(p for p in root.glob("llmops_*") if (p / "backup_manifest.json").is_file())
    if not sets:
        raise BenchError(f"no complete set under {root}")
    return sets[-1]


def manifest(set_path: Path) -> dict:
    return json.loads((set_path / "backup_manifest.json").read_text())


def tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())
