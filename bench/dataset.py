"""The benchmark's data set, built in the lab: about ``size_mb`` in all, split like a small production server.

- MariaDB ``bench``: four tables of sysbench's shape (``id``, ``k`` with its index, ``c CHAR(120)``, ``pad
  CHAR(60)``), filled from the sequence engine;
- PostgreSQL ``bench``: ``pgbench -i`` at the matching scale;
- Redis: ``bench:*`` string keys (capped by the lab server's ``maxmemory``);
- uploads: a tree of ``files`` documents of random content and size; models: two models, two versions each.

Qdrant and the search engine are stand-ins in the lab: their speed says nothing about the real servers, so the
benchmark leaves them out rather than report a misleading figure.
"""

from __future__ import annotations

import json
import os
import random
import shutil

from lab import REPO, container, secret, text

BENCH_STATE = REPO / ".state" / "bench"
SHARE = {"mariadb": 0.45, "postgres": 0.25, "redis": 0.03, "uploads": 0.20, "models": 0.07}
REDIS_CAP_MB = 32  # the lab's Redis runs with maxmemory 96mb, and other data lives there too
ROW_BYTES = 250   # a sysbench row in InnoDB, index included
PGBENCH_SCALE_MB = 16


def mariadb(sql: str, database: str = "") -> str:
    return text(["docker", "exec", "-i", container("mariadb"), "mariadb", "-N", "-B",
                 *([database] if database else [])], stdin=sql)


def psql(sql: str, database: str = "postgres") -> str:
    return text(["docker", "exec", "-i", "-u", "postgres", container("postgres"), "psql", "-Atq", "-d", database,
                 "-v", "ON_ERROR_STOP=1"], stdin=sql)


def redis(*args: str, stdin: str | None = None) -> str:
    return text(["docker", "exec", "-i", "-e", "REDISCLI_AUTH", container("redis"), "redis-cli", *args],
                stdin=stdin, env={"REDISCLI_AUTH": secret("redis_password")})


class Dataset:
    def __init__(self, size_mb: int, files: int):
        self.size_mb, self.files = size_mb, files
        self.uploads = BENCH_STATE / "data" / "uploads"
        self.models = BENCH_STATE / "data" / "models"
        self.marker = BENCH_STATE / "data" / "dataset.json"

    @property
    def params(self) -> dict:
        return {"size_mb": self.size_mb, "files": self.files, "version": 1}

    def mb(self, part: str) -> float:
        return self.size_mb * SHARE[part]

    def build(self, log=print) -> dict:
        """Build what is missing (a data set of the same parameters is reused); return its description."""
        have = json.loads(self.marker.read_text()) if self.marker.is_file() else None
        if have != self.params or not self._databases_present():
            self.drop()
            log(f"building a {self.size_mb} MB data set ({self.files} upload files)")
            self._mariadb()
            self._postgres()
            self._redis()
            self._files()
            self.marker.parent.mkdir(parents=True, exist_ok=True)
            self.marker.write_text(json.dumps(self.params))
        return self.describe()

    def _databases_present(self) -> bool:
        return (mariadb("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema='bench'").strip() == "4"
                and psql("SELECT count(*) FROM pg_database WHERE datname='bench'").strip() == "1"
                and self.uploads.is_dir() and self.models.is_dir())

    def _mariadb(self) -> None:
        rows = max(1000, int(self.mb("mariadb") * 1e6 / ROW_BYTES / 4))
        mariadb("CREATE DATABASE bench")
        for t in range(1, 5):
            mariadb(f"CREATE TABLE sbtest{t} (id INT NOT NULL AUTO_INCREMENT PRIMARY KEY, k INT NOT NULL DEFAULT 0, "
                    "c CHAR(120) NOT NULL DEFAULT '', pad CHAR(60) NOT NULL DEFAULT '', KEY k_1 (k)) ENGINE=InnoDB",
                    "bench")
            for lo in range(1, rows + 1, 500_000):  # bounded transactions: the lab server has 512 MB
                hi = min(rows, lo + 499_999)
                mariadb(f"INSERT INTO sbtest{t} (id, k, c, pad) SELECT seq, FLOOR(RAND() * {rows}), "
                        "CONCAT(MD5(RAND()), MD5(RAND()), MD5(RAND()), LEFT(MD5(RAND()), 24)), "
                        f"CONCAT(MD5(RAND()), LEFT(MD5(RAND()), 28)) FROM seq_{lo}_to_{hi}", "bench")

    def _postgres(self) -> None:
        scale = max(1, round(self.mb("postgres") / PGBENCH_SCALE_MB))
        psql("CREATE DATABASE bench")
        text(["docker", "exec", "-u", "postgres", container("postgres"), "/usr/lib/postgresql/15/bin/pgbench",
              "-i", "-q", "-s", str(scale), "bench"])

    def _redis(self) -> None:
        keys = int(min(self.mb("redis"), REDIS_CAP_MB) * 1e6 / 1024)
        value = "v" * 1000
        lines = "".join(f"SET bench:{i:08d} {value}{i}\n" for i in range(keys))
        redis("--pipe", stdin=lines)

    def _files(self) -> None:
        rnd = random.Random(14)
        avg = self.mb("uploads") * 1e6 / self.files
        for i in range(self.files):
            d = self.uploads / f"{i % 100:02d}"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"doc-{i:07d}.bin").write_bytes(os.urandom(max(1, int(rnd.uniform(0.2, 1.8) * avg))))
        per = int(self.mb("models") * 1e6 / 4)
        for model in ("embed-ko", "chat-7b"):
            for version in ("v1", "v2"):
                d = self.models / model / version
                d.mkdir(parents=True, exist_ok=True)
                (d / "weights.bin").write_bytes(os.urandom(per))

    def describe(self) -> dict:
        return {
            **self.params,
            "mariadb_rows": int(mariadb("SELECT SUM(table_rows) FROM information_schema.tables "
                                        "WHERE table_schema='bench'").strip() or 0),
            "postgres_bytes": int(psql("SELECT pg_database_size('bench')").strip()),
            "redis_keys": int(redis("EVAL", "return #redis.call('keys','bench:*')", "0").strip() or 0),
            "upload_files": sum(1 for _ in self.uploads.rglob("*.bin")),
        }

    def change_mariadb(self, fraction: float = 0.05) -> None:
        """Rewrite the first ``fraction`` of the rows of every table (the incremental figure's change: a contiguous
        range, as an application's recent rows are; scattered rows would touch every page)."""
        for t in range(1, 5):
            mariadb(f"UPDATE sbtest{t} SET k = k + 1, c = CONCAT(MD5(RAND()), MD5(RAND()), MD5(RAND()), "
                    "LEFT(MD5(RAND()), 24)) "
                    f"WHERE id <= (SELECT MAX(id) FROM (SELECT id FROM sbtest{t}) s) * {fraction}",
                    "bench")

    def drop(self) -> None:
        """Remove the data set from the lab (the lab's tests back up every database: leave none behind)."""
        mariadb("DROP DATABASE IF EXISTS bench")
        psql("DROP DATABASE IF EXISTS bench")
        redis("EVAL", "for _, k in ipairs(redis.call('keys', 'bench:*')) do redis.call('del', k) end return 0", "0")
        shutil.rmtree(self.uploads.parent, ignore_errors=True)
