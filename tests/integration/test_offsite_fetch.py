"""offsite_operation=fetch against real restic and a real REST server (`rclone serve restic --append-only`, the
fixture of test_offsite_restic.py): a backup root with a MariaDB full and two incrementals (each manifest names
its parent and its chain, as mariadb_backup writes them), a PostgreSQL/Redis part in the full, an uploads set, an
older set, the binary log archive and a config history (git) is synced; then the restore point is fetched into
an EMPTY backup root through playbooks/offsite.yml (role offsite, module offsite_sync).

Proven: check mode lists what would come and writes nothing; the sets arrive byte-identical and verified
(SHA256SUMS and the HMAC of backup_auth_key), the chain's parents come along, the older set does not, `latest`
names the newest set, the binary logs and the config history arrive whole; a second fetch changes nothing; a set
in place that differs from the off-site copy is refused, never overwritten; a damaged pack in the repository and
a set whose HMAC fails are refused with a message that names the set, and nothing half-fetched is left that
looks like a set (no set folder, no `latest`, no staging). The password and the key are in no output."""

from __future__ import annotations

import datetime
import os
import secrets
import subprocess
from pathlib import Path

import pytest
import yaml
from ansible.module_utils import llmops_backupset as bs
from ansible.module_utils.llmops_layout import backup_layout

from tests.conftest import run_module, run_playbook
from tests.integration.test_offsite_restic import PASSWORD, append_only, restic, tools, tree_hashes  # noqa: F401 - fixture

pytestmark = pytest.mark.slow

AUTH_KEY = "fetch-test-key-" + secrets.token_hex(16)
T0 = datetime.datetime.now(datetime.UTC).replace(microsecond=0) - datetime.timedelta(days=1)


def signed_set(root, now, name, files, components):
    """A finalized set written by llmops_backupset as a backup run writes one, signed with AUTH_KEY."""
    partial = bs.begin_set(root, name, now)
    os.unlink(os.path.join(partial, bs.OWNER))
    os.rmdir(os.path.join(partial, bs.COMPONENTS_DIR))
    for rel, data in files.items():
        full = os.path.join(partial, rel)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        Path(full).write_bytes(data)
    bs.write_manifest(partial, {"id": os.path.basename(partial)[1:-8], "name": name, "status": "success",
                                "started": bs.isoformat(now), "ended": bs.isoformat(now), "components": components})
    return Path(bs.finalize_set(partial, root, "success", auth_key=AUTH_KEY))


def mariadb(kind, parent=None, chain=(), binlog=None):
    comp = {"status": "success", "type": "mariadb", "backup_type": kind, "files": []}
    if parent:
        comp.update(parent=parent, chain=list(chain))
    if binlog:
        comp["binlog"] = binlog
    return comp


@pytest.fixture
def source(tmp_path):
    """A backup root as the schedule leaves it: an old full, the newest full with its PostgreSQL and Redis parts,
    two incrementals on it, an uploads set, binary logs and the config history."""
    root = tmp_path / "backups"
    old = signed_set(root, T0 - datetime.timedelta(days=1), "llmops",
                     {"mariadb/full.mbstream.zst": os.urandom(50_000), "postgres/app.dump": b"old" * 500},
                     {"mariadb": mariadb("full"), "postgres": {"status": "success", "backup_type": "full"}})
    full = signed_set(root, T0, "llmops",
                      {"mariadb/full.mbstream.zst": os.urandom(400_000), "postgres/app.dump": os.urandom(30_000),
                       "redis/dump.rdb": os.urandom(5000)},
                      {"mariadb": mariadb("full"), "postgres": {"status": "success", "backup_type": "full"},
                       "redis": {"status": "success", "backup_type": "full"}})
    inc1 = signed_set(root, T0 + datetime.timedelta(hours=6), "llmops",
                      {"mariadb/inc.mbstream.zst": os.urandom(40_000)},
                      {"mariadb": mariadb("incremental", full.name, [], {"file": "mysql-bin.000002"})})
    inc2 = signed_set(root, T0 + datetime.timedelta(hours=12), "llmops",
                      {"mariadb/inc.mbstream.zst": os.urandom(30_000)},
                      {"mariadb": mariadb("incremental", inc1.name, [full.name], {"file": "mysql-bin.000003"})})
    uploads = signed_set(root, T0 + datetime.timedelta(hours=13), "uploads",
                         {"uploads/docs/a.pdf": os.urandom(20_000), "uploads/readme.txt": b"uploads\n"},
                         {"uploads": {"status": "success", "backup_type": "full"}})
    layout = backup_layout(root)
    os.makedirs(layout["binlogs"])
    for i in (1, 2, 3):
        Path(layout["binlogs"], f"mysql-bin.00000{i}").write_bytes(os.urandom(3000))
    repo = layout["config_repo"]
    os.makedirs(repo)
    Path(repo, "site.yml").write_text("backup_root: /backup\n")
    git = ["git", "-C", repo, "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run(["git", "init", "-q", repo], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "config"], check=True)
    assert os.readlink(layout["latest"]) == uploads.name
    return root, {"old": old, "full": full, "inc1": inc1, "inc2": inc2, "uploads": uploads}


def sync(root, repo, monkeypatch):
    monkeypatch.setenv("LLMOPS_TEST_OFFSITE_PW", PASSWORD)
    done = run_module("offsite_sync", {"root": str(root), "repository": repo, "init": True, "retries": 0,
                                       "password": "{{ lookup('env', 'LLMOPS_TEST_OFFSITE_PW') }}"})
    assert not done.get("failed"), done
    return done


def fetch(tmp_path, root, repo, *args, **settings):
    """playbooks/offsite.yml -e offsite_operation=fetch; password and key from the environment via a 0600 file."""
    varsfile = tmp_path / "fetch-vars.yml"
    doc = {"offsite_enabled": True, "offsite_operation": "fetch", "offsite_repository": repo,
           "offsite_password": "{{ lookup('env', 'LLMOPS_TEST_OFFSITE_PW') }}",
           "backup_auth_key": "{{ lookup('env', 'LLMOPS_TEST_AUTH_KEY') }}", "offsite_retries": 0,
           "backup_root": str(root), "backup_metrics_dir": "", **settings}
    varsfile.write_text(yaml.safe_dump(doc))
    varsfile.chmod(0o600)
    os.environ["LLMOPS_TEST_OFFSITE_PW"] = PASSWORD
    os.environ["LLMOPS_TEST_AUTH_KEY"] = AUTH_KEY
    proc = run_playbook("offsite.yml", "-e", f"@{varsfile}", *args, check=False)
    out = proc.stdout + proc.stderr
    assert PASSWORD not in out and AUTH_KEY not in out, "a secret is in the playbook output"
    return proc


def set_dirs(root):
    return sorted(p.name for p in Path(root).iterdir() if bs._SET_RE.match(p.name)) if Path(root).exists() else []


def nothing_half_fetched(root):
    layout = backup_layout(root)
    assert set_dirs(root) == [], set_dirs(root)
    assert not os.path.lexists(layout["latest"])
    assert not os.path.exists(layout["binlogs"]) and not os.path.exists(layout["config_repo"])
    staging = Path(layout["restore_staging"])
    assert not staging.exists() or list(staging.iterdir()) == [], list(staging.iterdir())


def test_fetch_the_newest_restore_point_into_an_empty_root(source, append_only, tmp_path, monkeypatch):  # noqa: F811 - the fixture
    root, sets = source
    sync(root, append_only, monkeypatch)
    target = tmp_path / "newhost-backups"
    wanted = ["full", "inc1", "inc2", "uploads"]

    dry = fetch(tmp_path, target, append_only, "--check")
    assert dry.returncode == 0, dry.stdout[-4000:]
    assert "would fetch 4 set(s)" in dry.stdout, dry.stdout[-3000:]
    for key in wanted:
        assert sets[key].name in dry.stdout
    assert sets["old"].name not in dry.stdout.split("would fetch")[1]
    assert set_dirs(target) == []

    done = fetch(tmp_path, target, append_only, "-vvv")
    assert done.returncode == 0, done.stdout[-6000:]
    print(done.stdout[done.stdout.find("fetched "):][:600])
    assert set_dirs(target) == sorted(sets[k].name for k in wanted)  # the old full stays off-site
    for key in wanted:
        assert tree_hashes(target / sets[key].name) == tree_hashes(sets[key]), key
        check = bs.verify_set(target / sets[key].name, AUTH_KEY)
        assert check["ok"] and check["auth"]["state"] == "authenticated", check
    layout = backup_layout(target)
    assert os.readlink(layout["latest"]) == sets["uploads"].name
    assert tree_hashes(layout["binlogs"]) == tree_hashes(backup_layout(root)["binlogs"])
    assert tree_hashes(layout["config_repo"]) == tree_hashes(backup_layout(root)["config_repo"])
    log = subprocess.run(["git", "-C", layout["config_repo"], "log", "--oneline"], capture_output=True, text=True)
    assert log.returncode == 0 and "config" in log.stdout
    assert list(Path(layout["restore_staging"]).iterdir()) == []

    again = fetch(tmp_path, target, append_only)
    assert again.returncode == 0 and "changed=0" in again.stdout, again.stdout[-3000:]

    # one named set: it and the chain it needs (inc1 -> full), nothing else
    single = tmp_path / "single"
    one = fetch(tmp_path, single, append_only, offsite_fetch_sets=[sets["inc1"].name], offsite_fetch_extras=[])
    assert one.returncode == 0, one.stdout[-4000:]
    assert set_dirs(single) == sorted([sets["full"].name, sets["inc1"].name])
    assert os.readlink(backup_layout(single)["latest"]) == sets["inc1"].name

    # a set in place that differs from the off-site copy is refused and left as it is
    mine = target / sets["uploads"].name / "uploads" / "readme.txt"
    mine.write_bytes(b"changed on the new host\n")
    manifest = bs.load_manifest(mine.parents[1])
    bs.write_manifest(mine.parents[1], {k: v for k, v in manifest.items() if k not in ("files", "totals", "links")})
    refused = fetch(tmp_path, target, append_only)
    assert refused.returncode != 0
    assert f"set {sets['uploads'].name} is already in" in refused.stdout and "not overwritten" in refused.stdout
    assert mine.read_bytes() == b"changed on the new host\n"


def test_a_damaged_pack_is_refused_and_nothing_is_half_fetched(source, append_only, tmp_path, monkeypatch):  # noqa: F811 - the fixture
    root, sets = source
    sync(root, append_only, monkeypatch)
    store = tmp_path / "offsite-store" / "llmops" / "data"
    pack = max((p for p in store.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(pack.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 64):
        data[i] ^= 0xFF
    pack.chmod(0o600)
    pack.write_bytes(bytes(data))
    target = tmp_path / "newhost-backups"
    proc = fetch(tmp_path, target, append_only)
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert "cannot be read back from the off-site repository" in proc.stdout, proc.stdout[-3000:]
    assert "nothing was moved" in proc.stdout
    print(proc.stdout[proc.stdout.find("fetch refused"):][:900])
    nothing_half_fetched(target)


def test_a_set_whose_hmac_fails_is_refused(source, append_only, tmp_path, monkeypatch):  # noqa: F811 - the fixture
    root, sets = source
    # an attacker on the server changes an incremental and rewrites its SHA256SUMS; the HMAC needs the key
    victim = sets["inc2"]
    (victim / "mariadb" / "inc.mbstream.zst").write_bytes(os.urandom(30_000))
    manifest = bs.load_manifest(victim)
    bs.write_manifest(victim, {k: v for k, v in manifest.items() if k not in ("files", "totals", "links")})
    assert bs.verify_set(victim)["ok"]  # SHA256SUMS alone is fooled
    sync(root, append_only, monkeypatch)
    target = tmp_path / "newhost-backups"
    proc = fetch(tmp_path, target, append_only)
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert f"set {victim.name} fails verification" in proc.stdout and "fails authentication" in proc.stdout, \
        proc.stdout[-3000:]
    print(proc.stdout[proc.stdout.find("fetch refused"):][:900])
    nothing_half_fetched(target)
    # the good sets alone are still fetchable by name
    ok = fetch(tmp_path, target, append_only, offsite_fetch_sets=[sets["inc1"].name])
    assert ok.returncode == 0, ok.stdout[-3000:]
    assert set_dirs(target) == sorted([sets["full"].name, sets["inc1"].name])
