"""The off-site copy's SFTP back end against a real OpenSSH server.

A container from compose/images/offsite-sshd (Debian 12's openssh-server; one user `offsite`, key-only
authentication, internal-sftp only, a fresh host key per container) plays the off-site store. On this machine,
`ansible-playbook playbooks/offsite.yml` (roles/offsite, module offsite_sync) runs as the scheduled job does,
with `offsite_repository=sftp:offsite@127.0.0.1:/srv/restic/llmops` and the role's ssh settings: a throwaway
key (its *path* only reaches ssh's command line, through `restic -o sftp.command=...`), a known hosts file with
the container's host key read out of band (StrictHostKeyChecking=yes) and the published port. The sets are made
by the real backup modules (tests/conftest.py make_set: files_backup of an uploads folder).

Proven: init and sync of the sets; `restic restore` of a set's snapshot is byte-for-byte the local set (and its
SHA256SUMS verify); a second set of unchanged uploads costs almost nothing (restic's `data_added`); a third run
sends nothing; the repository password is in no -vvv output and no /proc/*/cmdline; a host key that does not
match fails the run (no trust on first use).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from ansible.module_utils.llmops_offsite import sftp_command

from tests.cmdlines import CmdlineSampler
from tests.conftest import REPO, make_set, run_playbook
from tests.integration.test_offsite_restic import tree_hashes

pytestmark = [pytest.mark.lab, pytest.mark.slow]

IMAGE = "llmops-lab/offsite-sshd:bookworm"
PASSWORD = "offsite-sftp-" + secrets.token_hex(12)
REMOTE = "/srv/restic/llmops"


def docker(*args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {shlex.join(args)} failed: {proc.stderr[-2000:]}")
    return proc


@contextlib.contextmanager
def sshd_store(keys: Path):
    """The off-site host: a container running sshd, its port published on 127.0.0.1, a client key in ``keys`` and
    a known hosts file for 127.0.0.1:<port>. Yields ``{name, port, ip, host_key, key, known_hosts, repository}``
    (``ip``: its address on the engine's bridge, for a client in another container); removed on exit."""
    built = subprocess.run([str(REPO / "scripts" / "images.sh"), "offsite-sshd"], cwd=REPO, capture_output=True,
                           text=True, timeout=900)
    assert built.returncode == 0, f"scripts/images.sh offsite-sshd failed: {built.stdout[-2000:]}{built.stderr[-2000:]}"
    key = keys / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "llmops-test", "-f", str(key)], check=True)
    name = f"llmops-offsite-sshd-{secrets.token_hex(4)}"
    docker("run", "-d", "--rm", "--name", name, "-p", "127.0.0.1::22", "-e", "OFFSITE_AUTHORIZED_KEY", IMAGE,
           env={"OFFSITE_AUTHORIZED_KEY": (keys / "id_ed25519.pub").read_text().strip()})
    try:
        port = int(docker("port", name, "22/tcp").stdout.split(":")[-1])
        host_key = ""
        for _ in range(100):  # the entrypoint makes the host key, then sshd listens
            host_key = docker("exec", name, "cat", "/etc/ssh/ssh_host_ed25519_key.pub", check=False).stdout.strip()
            probe = subprocess.run(["ssh-keyscan", "-T", "2", "-p", str(port), "127.0.0.1"], capture_output=True,
                                   text=True)
            if host_key and host_key.split()[1] in probe.stdout:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"sshd in {name} did not answer: {docker('logs', name, check=False).stderr[-2000:]}")
        host_key = " ".join(host_key.split()[:2])
        known = keys / "known_hosts"
        known.write_text(f"[127.0.0.1]:{port} {host_key}\n")
        ip = docker("inspect", "-f", "{{.NetworkSettings.IPAddress}}", name).stdout.strip()
        yield {"name": name, "port": port, "ip": ip, "host_key": host_key, "key": key, "known_hosts": known,
               "repository": f"sftp:offsite@127.0.0.1:{REMOTE}"}
    finally:
        docker("rm", "-f", name, check=False)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    with sshd_store(tmp_path_factory.mktemp("offsite-ssh")) as found:
        yield found


def uploads_set(root: Path, src: Path) -> dict:
    """An uploads-only set made by the real modules (files_backup of `src`), as the daily job makes one."""
    return make_set(root, {"uploads": ("files_backup", {"mode": "tree", "src": str(src), "backup_root": str(root),
                                                          "component": "uploads"})}, name="uploads")


def offsite(tmp_path: Path, root: Path, store: dict, *args: str, known_hosts: Path | None = None,
            **settings) -> subprocess.CompletedProcess:
    """playbooks/offsite.yml with the settings in a 0600 vars file; the password comes from the environment."""
    varsfile = tmp_path / "offsite-vars.yml"
    doc = {"offsite_enabled": True, "offsite_repository": store["repository"], "offsite_init": True,
           "offsite_password": "{{ lookup('env', 'LLMOPS_TEST_OFFSITE_PW') }}",
           "offsite_ssh_identity_file": str(store["key"]),
           "offsite_ssh_known_hosts_file": str(known_hosts or store["known_hosts"]),
           "offsite_ssh_port": store["port"], "offsite_retries": 1, "offsite_backoff_s": 1,
           "backup_root": str(root), "backup_metrics_dir": str(root.parent / "metrics"), **settings}
    varsfile.write_text(yaml.safe_dump(doc))
    varsfile.chmod(0o600)
    os.environ["LLMOPS_TEST_OFFSITE_PW"] = PASSWORD
    return run_playbook("offsite.yml", "-e", f"@{varsfile}", *args, check=False)


def restic(store: dict, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """restic against the store, the way the module runs it (password file, sftp.command with paths only)."""
    pw = tmp_path / "restic-pw"
    pw.write_text(PASSWORD)
    pw.chmod(0o600)
    command = sftp_command(store["repository"], str(store["key"]), str(store["known_hosts"]), store["port"])
    env = dict(os.environ, RESTIC_REPOSITORY=store["repository"], RESTIC_PASSWORD_FILE=str(pw),
               RESTIC_CACHE_DIR=str(tmp_path / "restic-cache"))
    return subprocess.run(["restic", "-o", f"sftp.command={command}", *args], env=env, capture_output=True,
                          text=True, timeout=300)


def state(root: Path) -> dict:
    return json.loads((root / ".offsite_state.json").read_text())["sync"]


def test_sync_restore_and_dedup_over_sftp(store, tmp_path):
    src = tmp_path / "uploads"
    (src / "docs").mkdir(parents=True)
    for i in range(4):
        (src / "docs" / f"file{i}.bin").write_bytes(os.urandom(400_000))
    (src / "readme.txt").write_text("uploads of the off-site SFTP test\n")
    root = tmp_path / "backups"
    first_set = uploads_set(root, src)

    sampler = CmdlineSampler(PASSWORD)
    sampler.start()
    started = time.monotonic()
    first = offsite(tmp_path, root, store, "-vvv")
    elapsed = time.monotonic() - started
    sampler.stop()
    assert first.returncode == 0, first.stdout[-5000:] + first.stderr[-2000:]
    assert PASSWORD not in first.stdout + first.stderr, "the repository password is in the -vvv output"
    assert sampler.samples > 3 and sampler.hits == [], sampler.hits[:3]
    sent = state(root)
    assert sent["last_status"] == "success" and sent["sets_sent"] == 1, sent
    assert sent["bytes_added"] > 1_500_000, sent  # 1.6 MB of random data, incompressible
    prom = (root.parent / "metrics" / "llmops_offsite.prom").read_text()
    assert "llmops_offsite_last_run_success 1.0" in prom and "llmops_offsite_lag_seconds 0.0" in prom
    print(f"SFTP: first sync {elapsed:.1f} s, {sent['bytes_added']} bytes added")

    # the repository is on the sshd container's disk, in the path of the URL
    listing = docker("exec", store["name"], "ls", REMOTE).stdout.split()
    assert {"config", "data", "index", "keys", "snapshots"} <= set(listing), listing

    snaps = json.loads(restic(store, tmp_path, "snapshots", "--json").stdout)
    by_set = {t.split("=", 1)[1]: s for s in snaps for t in s["tags"] if t.startswith("set=")}
    assert list(by_set) == [first_set["set_id"]]
    target = tmp_path / "restored"
    done = restic(store, tmp_path, "restore", by_set[first_set["set_id"]]["id"], "--target", str(target))
    assert done.returncode == 0, done.stderr
    local = Path(first_set["path"])
    restored = target / os.path.relpath(local, "/") if (target / os.path.relpath(local, "/")).exists() else target
    assert tree_hashes(restored) == tree_hashes(local) and len(tree_hashes(local)) >= 6
    assert subprocess.run(["sha256sum", "-c", "--strict", "--quiet", "SHA256SUMS"], cwd=restored).returncode == 0

    # a second set of the same, unchanged uploads: sent, but restic stores almost nothing new
    second_set = uploads_set(root, src)
    second = offsite(tmp_path, root, store)
    assert second.returncode == 0, second.stdout[-5000:]
    again = state(root)
    assert again["sets_sent"] == 1 and again["bytes_added"] < 0.05 * sent["bytes_added"], again
    print(f"SFTP: second sync of unchanged uploads added {again['bytes_added']} bytes")
    tags = [t for s in json.loads(restic(store, tmp_path, "snapshots", "--json").stdout) for t in s["tags"]]
    assert f"set={second_set['set_id']}" in tags

    # nothing new: nothing sent
    third = offsite(tmp_path, root, store)
    assert third.returncode == 0 and state(root)["sets_sent"] == 0, third.stdout[-3000:]
    assert restic(store, tmp_path, "check", "--read-data").returncode == 0


def test_an_unknown_host_key_fails_the_run(store, tmp_path):
    root = tmp_path / "backups"
    src = tmp_path / "uploads"
    src.mkdir()
    (src / "a.txt").write_text("a\n")
    uploads_set(root, src)
    other = tmp_path / "other_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    wrong = tmp_path / "known_hosts_wrong"
    other_key = " ".join((tmp_path / "other_host_key.pub").read_text().split()[:2])
    wrong.write_text(f"[127.0.0.1]:{store['port']} {other_key}\n")
    proc = offsite(tmp_path, root, store, known_hosts=wrong, offsite_retries=0)
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert "off-site sync" in proc.stdout and PASSWORD not in proc.stdout
    recorded = state(root)
    assert recorded["last_status"] == "failed" and "last_success" not in recorded, recorded
