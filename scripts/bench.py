"""`make bench`: the bundle's backup pipelines against the bare tools, measured in the same run.

Loads a benchmark table into the lab's MariaDB and PostgreSQL (once; reused afterwards), then times
each pair several times and reports the median and the ratio pipeline / bare. The bare pipelines are
what an operator would type (`tool | zstd -T0 -3 > file`, hashed afterwards with sha256sum); ours
stream the tool through zstd into a file and hash it in the same pass (module_utils/llmops_pipeline).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import ansible.module_utils  # noqa: E402

ansible.module_utils.__path__.append(str(REPO / "module_utils"))
from ansible.module_utils.llmops_exec import ExecTarget  # noqa: E402
from ansible.module_utils.llmops_pipeline import run_pipeline  # noqa: E402

MARIADB = ExecTarget("llmops-appdb-mariadb-1")
POSTGRES = ExecTarget("llmops-appdb-postgres-1", user="postgres")


def load(rows: int) -> None:
    have = MARIADB.text(["mariadb", "-N", "-e", "SELECT COUNT(*) FROM information_schema.tables "
                                                "WHERE table_schema='bench' AND table_name='t'"]).strip()
    if have == "0":
        print(f"bench: loading {rows} rows into MariaDB bench.t", flush=True)
        MARIADB.run(["mariadb"], stdin=(
            "CREATE DATABASE bench; USE bench; CREATE TABLE t (id INT PRIMARY KEY, k INT, c CHAR(120), pad CHAR(60)) "
            f"ENGINE=InnoDB; INSERT INTO t SELECT seq, seq % 1000, SHA2(seq, 256), MD5(seq) FROM seq_1_to_{rows};"
        ).encode(), timeout=3600)
    have = POSTGRES.text(["psql", "-Atc", "SELECT count(*) FROM pg_database WHERE datname='bench'"]).strip()
    if have == "0":
        print(f"bench: loading {rows} rows into PostgreSQL bench", flush=True)
        POSTGRES.run(["psql", "-q", "-c", "CREATE DATABASE bench"])
        POSTGRES.run(["psql", "-q", "-d", "bench", "-c",
                      "CREATE TABLE t AS SELECT g AS id, g % 1000 AS k, md5(g::text) || md5((g*7)::text) AS c "
                      f"FROM generate_series(1, {rows}) g; ALTER TABLE t ADD PRIMARY KEY (id);"], timeout=3600)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bare(argv: list[str], dest: Path) -> None:
    # what an operator types: tool | zstd > file, then sha256sum file
    cmd = " ".join(f"'{a}'" for a in argv)
    cmd += f" 2>/dev/null | zstd -q -T0 -3 > '{dest}' && sha256sum '{dest}' > /dev/null"
    subprocess.run(["bash", "-o", "pipefail", "-c", cmd], check=True)


def ours(argv: list[str], dest: Path) -> None:
    run_pipeline(argv, dest, zstd_level=3, zstd_threads=0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the benchmark databases for the next run")
    args = parser.parse_args()
    load(args.rows)
    cases = {
        "mariadb-backup --stream": MARIADB.argv(["mariadb-backup", "--backup", "--stream=mbstream",
                                                 "--target-dir=/tmp/bench-lsn", "--parallel=2"]),
        "pg_dump -Fc bench": POSTGRES.argv(["pg_dump", "-Fc", "-Z0", "-d", "bench"]),
    }
    print(f"{'pipeline':28} {'bare (s)':>9} {'ours (s)':>9} {'ratio':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, argv in cases.items():
            b, o = [], []
            for i in range(args.repeat):
                b.append(timed(lambda i=i, argv=argv: bare(argv, Path(tmp) / f"bare{i}.zst")))
                o.append(timed(lambda i=i, argv=argv: ours(argv, Path(tmp) / f"ours{i}.zst")))
            mb, mo = statistics.median(b), statistics.median(o)
            print(f"{name:28} {mb:9.2f} {mo:9.2f} {mo / mb:6.2f}")
    MARIADB.run(["rm", "-rf", "/tmp/bench-lsn"])
    if not args.keep:
        # the lab's other users (tests, demo) back up every database: leave none of ours behind
        MARIADB.run(["mariadb", "-e", "DROP DATABASE bench"])
        POSTGRES.run(["psql", "-q", "-c", "DROP DATABASE bench"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
