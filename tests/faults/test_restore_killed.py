"""Fault matrix, a restore killed halfway (issue 13, item 7): per store, after a SIGKILL of the restore, the rollback
(`-e step=rollback -e confirm=yes`) or running the restore again leaves the store with the old or the new data, never
a mix, and the next run says which.

Each store gets data of the test's own (a database, a collection, a copy of the uploads), backed up into the test's
own root: that is the NEW data. The live data is then changed: the OLD data. A real restore (`restore.yml
-e confirm=yes`) is killed (SIGKILL of its process group and of every process of the run) at one of two points,
read from the restore journal (`<backup_root>/.restore-journal.json`): `before` (the run is open, nothing live
changed) or `replacing` (the step that replaces the live data has begun: the service stopped, the data moved aside
and partly replaced). Then the rollback must give the old data back (compared by fingerprint); the restore is killed
again at the same point, and a restore run again must finish with the new data.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from ansible.module_utils.llmops_exec import ExecTarget
from ansible.module_utils.llmops_files import tree_hash
from ansible.module_utils.llmops_layout import layout_path
from ansible.module_utils.llmops_mariadb import fingerprint as mariadb_fingerprint
from ansible.module_utils.llmops_postgres import fingerprint as pg_fingerprint
from ansible.module_utils.llmops_qdrant import QdrantClient, QdrantError
from ansible.module_utils.llmops_redis import fingerprint as redis_fingerprint
from ansible.module_utils.llmops_search import SearchClient, fingerprint_docs

from tests.conftest import LAB_STATE, make_set, run_module
from tests.faults import faultkit as fk

pytestmark = pytest.mark.lab

STORES = ["mariadb", "postgres", "redis", "qdrant", "search", "uploads"]
# every store killed while it replaces the data; killed before (nothing live changed yet: the same path for every
# store, through the journal only) once
CASES = [("mariadb", "before")] + [(name, "replacing") for name in STORES]
# the step of each store's restore that replaces the live data
CHANGING = {"mariadb": "swap", "redis": "swap", "postgres": "load", "qdrant": "load", "search": "swap",
            "uploads": "swap"}
DATA = LAB_STATE / "data" / "appdb"


class Store:
    """One store's own data: ``seed`` (the new data), ``change`` (the old data), ``fingerprint``, ``backup`` (the
    make_set spec), ``extra`` (restore.yml's -e), ``drop``."""

    def __init__(self, lab, name: str, tmp: Path):
        self.lab, self.name, self.tmp = lab, name, tmp
        self.tag = f"t_kill_{secrets.token_hex(4)}"
        self.extra: list[str] = []
        if name == "qdrant":
            self.client = QdrantClient(f"http://127.0.0.1:{lab.ports['qdrant']}", api_key=lab.secret("qdrant_api_key"),
                                       timeout=60)
        if name == "search":
            self.client = SearchClient(f"http://127.0.0.1:{lab.ports['search']}",
                                       password=lab.secret("search_password"), timeout=60, retries=2)
        if name == "uploads":
            self.uploads = tmp / "live" / "uploads"
            self.extra = ["-e", f"app_uploads_path={self.uploads}"]

    def seed(self) -> None:
        if self.name == "mariadb":
            self.lab.mariadb(f"CREATE DATABASE {self.tag}")
            self.lab.mariadb("CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(40)) ENGINE=InnoDB; "
                             "INSERT INTO t SELECT seq, CONCAT('new ', seq) FROM seq_1_to_500;", self.tag)
        elif self.name == "postgres":
            self.lab.psql(f"CREATE DATABASE {self.tag}")
            self.lab.psql("CREATE TABLE t (id int PRIMARY KEY, v text); "
                          "INSERT INTO t SELECT g, 'new ' || g FROM generate_series(1, 500) g;", self.tag)
        elif self.name == "redis":
            for i in range(50):
                self.lab.redis("SET", f"{self.tag}:{i}", f"new {i}")
        elif self.name == "qdrant":
            self.client.create_collection(self.tag, 4, "Cosine")
            self.client.upsert_points(self.tag, [{"id": i, "vector": [1.0, i, 0.5, 0.25], "payload": {"v": f"new {i}"}}
                                                 for i in range(1, 201)])
        elif self.name == "search":
            self.client.create_index(self.tag, settings={"number_of_shards": 1, "number_of_replicas": 0})
            self.client.bulk([("index", self.tag, f"문서-{i}", {"v": f"new {i}", "n": i}) for i in range(1, 201)])
        else:
            shutil.copytree(DATA / "uploads", self.uploads, symlinks=True)
            (self.uploads / f"{self.tag}.txt").write_text("new\n")

    def change(self) -> None:
        if self.name == "mariadb":
            self.lab.mariadb("DELETE FROM t WHERE id > 250; UPDATE t SET v = 'old' WHERE id <= 10; "
                             "INSERT INTO t VALUES (9001, 'only in the old data');", self.tag)
        elif self.name == "postgres":
            self.lab.psql("DELETE FROM t WHERE id > 250; UPDATE t SET v = 'old' WHERE id <= 10; "
                          "INSERT INTO t VALUES (9001, 'only in the old data');", self.tag)
        elif self.name == "redis":
            for i in range(25):
                self.lab.redis("DEL", f"{self.tag}:{i}")
            self.lab.redis("SET", f"{self.tag}:old", "only in the old data")
        elif self.name == "qdrant":
            self.client.upsert_points(self.tag, [{"id": i, "vector": [0.0, 1.0, 0.0, i], "payload": {"v": f"old {i}"}}
                                                 for i in [*range(1, 101), 9001]])
        elif self.name == "search":
            self.client.bulk([("index", self.tag, f"문서-{i}", {"v": f"old {i}", "n": i})
                              for i in [*range(1, 101), 9001]])
        else:
            (self.uploads / f"{self.tag}.txt").write_text("old\n")
            (self.uploads / "only-in-the-old-data.txt").write_text("old\n")

    def fingerprint(self):
        if self.name == "mariadb":
            return mariadb_fingerprint(ExecTarget(self.lab.containers["mariadb"]), {"user": "root"},
                                       databases=[self.tag])
        if self.name == "postgres":
            return pg_fingerprint(ExecTarget(self.lab.containers["postgres"], "postgres"), [self.tag])
        if self.name == "redis":
            return redis_fingerprint(ExecTarget(self.lab.containers["redis"]), {}, self.lab.secret("redis_password"))
        if self.name == "qdrant":
            return sorted((json.dumps(p["id"]), json.dumps(p["payload"], sort_keys=True))
                          for p in self.client.scroll_all(self.tag))
        if self.name == "search":
            self.client.refresh([self.tag])
            return fingerprint_docs(self.client.iter_docs(self.tag, page=50))
        return tree_hash(self.uploads)

    def backup(self) -> dict:
        if self.name == "mariadb":
            return {"mariadb": ("mariadb_backup", {"backup_type": "full"})}
        if self.name == "postgres":
            return {"postgres": ("postgres_backup", {"databases": [self.tag]})}
        if self.name == "redis":
            return {"redis": ("redis_backup", {"password": "{{ redis_password }}"})}
        if self.name == "qdrant":
            return {"qdrant": ("qdrant_backup", {"url": f"http://127.0.0.1:{self.lab.ports['qdrant']}",
                                                 "api_key": "{{ qdrant_api_key }}", "collections": [self.tag]})}
        if self.name == "search":
            return {"search": ("search_backup", {"url": f"http://127.0.0.1:{self.lab.ports['search']}",
                                                 "login_password": "{{ search_password }}",
                                                 "repo_path": str(DATA / "search-snapshots"), "indices": [self.tag]})}
        return {"uploads": ("files_backup", {"mode": "tree", "src": str(self.uploads)})}

    def drop(self) -> None:
        if self.name == "mariadb":
            self.lab.mariadb(f"DROP DATABASE IF EXISTS {self.tag}")
        elif self.name == "postgres":
            for row in self.lab.psql(f"SELECT datname FROM pg_database WHERE datname LIKE '{self.tag}%'"):
                self.lab.psql(f'DROP DATABASE IF EXISTS "{row[0]}" WITH (FORCE)')
        elif self.name == "redis":
            for i in range(50):
                self.lab.redis("DEL", f"{self.tag}:{i}")
            self.lab.redis("DEL", f"{self.tag}:old")
        elif self.name == "qdrant":
            try:
                self.client.delete_collection(self.tag)
            except QdrantError:
                pass
        elif self.name == "search":
            if self.client.index_exists(self.tag):
                self.client.delete_index(self.tag)
            if self.client.get_repository("llmops_safety") is not None:  # the killed runs' safety snapshots
                for snap in self.client.request("GET", "/_snapshot/llmops_safety/_all")[1].get("snapshots") or []:
                    if snap.get("indices") == [self.tag]:
                        self.client.delete_snapshot("llmops_safety", snap["snapshot"])


def ensure_running(lab, service: str) -> None:
    """Start the lab's ``service`` again when a failed run left it stopped (the same Compose call the restore
    makes), so that a failure of this test never leaves the lab without it."""
    state = subprocess.run(["docker", "inspect", "-f", "{{.State.Running}}", lab.containers[service]],
                           capture_output=True, text=True, check=False).stdout.strip()
    if state != "true":
        args = {"project_src": str(lab.stack_root / "appdb"), "files": ["compose.yml"], "services": [service],
                "state": "present", "wait": True, "wait_timeout": 300}
        run_module("community.docker.docker_compose_v2", args)


def remove_safety_copies(tags: set[str]) -> None:
    """The safety copies the test's runs left in the lab's data folders (the killed runs' own)."""
    for tag in tags:
        # the search engine's copy a killed restore unpacked under path.repo (search_restore's staged_location)
        for path in (DATA / f"mariadb.{tag}", DATA / "redis" / f".{tag}",
                     DATA / "search-snapshots" / f"llmops_restore_{tag}"):
            if path.is_dir():
                shutil.rmtree(path)


def restore_args(root: Path, store: Store, *extra: str) -> list[str]:
    return ["-e", f"backup_root={root}", "-e", f"components={store.name}", "-e", "restore_keep_safety_copy=false",
            *store.extra, *extra]


def killed_restore(root: Path, store: Store, point: str, tmp: Path, attempt: str) -> dict:
    """Start a real restore, kill it at ``point`` (see the module docstring); return the journal it left."""
    journal = Path(layout_path(root, "restore_journal"))
    journal.unlink(missing_ok=True)
    token = f"kill-{store.tag}-{attempt}"
    log = tmp / f"restore-{attempt}.log"
    proc = fk.start_playbook("restore.yml", log, token, *restore_args(root, store, "-e", "confirm=yes"))

    def reached():
        record = fk.restore_journal(root)
        if not record.get("started"):
            return None
        entry = (record.get("components") or {}).get(store.name) or {}
        if point == "before":
            return record if entry.get("live", "old") == "old" else None
        return record if entry.get("step") == CHANGING[store.name] else None

    try:
        fk.wait_for(reached, 600, f"the {store.name} restore to reach '{point}'", interval=0.002, proc=proc, log=log)
    finally:
        fk.kill_run(proc, token)
    for folder in (DATA / "mariadb", DATA / "redis"):
        fk.wait_containers_gone(folder)
    return fk.restore_journal(root)


def run(root: Path, store: Store, *extra: str) -> tuple[int, str]:
    return fk.run_playbook("restore.yml", store.tmp / f"run-{time.monotonic_ns()}.log", f"run-{store.tag}",
                           *restore_args(root, store, *extra))


@pytest.mark.slow
@pytest.mark.parametrize(("store_name", "point"), CASES)
def test_a_killed_restore_ends_with_the_old_or_the_new_data_never_a_mix(lab, tmp_path, store_name, point):
    """The rollback gives the old data back, a run again the new data; both say what the killed run left."""
    store = Store(lab, store_name, tmp_path)
    root = tmp_path / "backups"
    tags = set()
    try:
        store.seed()
        final = make_set(root, {c: (m, {**a, **({"backup_root": str(root)} if m in ("mariadb_backup", "files_backup")
                                                  else {})}) for c, (m, a) in store.backup().items()}, name="kill")
        new = store.fingerprint()
        store.change()
        old = store.fingerprint()
        assert old != new

        # killed, then rolled back: the old data
        left = killed_restore(root, store, point, tmp_path, "1")
        tags.add(left["safety_tag"])
        entry = left["components"].get(store.name, {"live": "old"})
        rc, out = run(root, store, "-e", "step=rollback")  # without confirm: says what was left, changes nothing
        if entry["live"] == "old":
            assert rc == 0 and "nothing to roll back" in out, out[-3000:]
        else:
            assert rc != 0 and "Refusing to roll back without -e confirm=yes" in out, out[-3000:]
            assert f"a restore of {store.name} (set {final['set_id']}" in out and "INTERRUPTED RESTORE" in out
            assert f"interrupted {'during' if entry['status'] == 'running' else 'after'} `{entry['step']}`" in out
        rc, out = run(root, store, "-e", "step=rollback", "-e", "confirm=yes")
        assert rc == 0, out[-5000:]
        assert store.fingerprint() == old, f"after the rollback {store.name} does not hold the old data"
        if entry["live"] != "old":
            assert f"ROLLED BACK: {store.name} hold the OLD data again" in out, out[-3000:]
        assert not fk.restore_journal(root) or store.name not in (
            fk.restore_journal(root).get("components") or {}) or \
            fk.restore_journal(root)["components"][store.name]["live"] in ("old", "old (the safety copy was put back)")

        # killed again, then run again: the new data
        tags.add(killed_restore(root, store, point, tmp_path, "2")["safety_tag"])
        rc, out = run(root, store, "-e", "confirm=yes")
        assert rc == 0, out[-6000:]
        assert "INTERRUPTED RESTORE" in out or point == "before"
        assert store.fingerprint() == new, f"after the run again {store.name} does not hold the new data"
        record = fk.restore_journal(root)["components"][store.name]
        assert record["live"] == "new, verified" and record["step"] == "cleanup" and record["status"] == "done"
        rc, out = run(root, store, "-e", "step=rollback")
        assert rc == 0 and "nothing to roll back" in out  # the finished run left nothing to undo
    finally:
        if fk.restore_journal(root) and (fk.restore_journal(root).get("components") or {}).get(store.name, {}).get(
                "live") not in (None, "old", "new, verified", "old (the safety copy was put back)"):
            run(root, store, "-e", "step=rollback", "-e", "confirm=yes")  # never leave the lab's store half-restored
        if store.name in ("mariadb", "redis"):
            ensure_running(lab, store.name)
        remove_safety_copies(tags)
        store.drop()

