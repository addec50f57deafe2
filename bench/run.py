"""`make bench`: whole runs of the bundle measured against the bare tools, side by side in the same run (issue 14).

Every figure is a ratio of two times (or sizes) measured in this run, on this machine, on the same data: the
bundle's ``ansible-playbook`` run against the commands an operator would type by hand. Nothing is compared with a
number from another day. Results: ``bench/results/<UTC date>.json``, ``.md`` (the table) and ``.png`` (the chart).

    python bench/run.py                       # about 2 GB of data, 20,000 upload files, 3 repetitions
    python bench/run.py --size-mb 200 --files 2000 --repeat 1
    python bench/run.py --smoke --out DIR     # the tiny run `make test` does so that the harness cannot rot

The data set stays in the lab between runs with ``--keep`` (built again only when its size changes).
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dataset import BENCH_STATE, Dataset  # noqa: E402
from lab import (  # noqa: E402
    LAB_STATE,
    REPO,
    BenchError,
    container,
    drop_caches,
    evict,
    latest_set,
    manifest,
    playbook,
    secret,
    sh,
    tree_bytes,
)
from report import write_results  # noqa: E402

MEASURED = ["mariadb", "postgres", "redis", "uploads"]  # the components with a bare tool to compare with
WHOLE = ["mariadb", "postgres", "redis", "uploads", "models", "configs"]  # stand-ins (qdrant, search) left out


def disk_read_bytes() -> int:
    """Bytes read so far from the block device that holds the lab's data (``/proc/diskstats``, 512-byte sectors)."""
    dev = subprocess.run(["df", "--output=source", str(LAB_STATE)], capture_output=True, text=True,
                         check=True).stdout.split()[-1].rsplit("/", 1)[-1]
    for line in Path("/proc/diskstats").read_text().splitlines():
        f = line.split()
        if f[2] == dev:
            return int(f[5]) * 512
    raise BenchError(f"device {dev} not in /proc/diskstats")


def figure(name: str, what: str, ours: float | None, bare: float | None, goal: str | None = None,
           unit: str = "s", **extra) -> dict:
    ratio = round(ours / bare, 3) if ours is not None and bare else None
    met = None
    if goal and ratio is not None:
        op, value = goal.split()
        met = ratio <= float(value) if op == "<=" else ratio >= float(value)
    return {"figure": name, "what": what, "ours": ours, "bare": bare, "unit": unit, "ratio": ratio, "goal": goal,
            "met": met, **extra}


class Bench:
    def __init__(self, args):
        self.args = args
        self.work = BENCH_STATE / "run"
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        self.log = self.work / "bench.log"
        self.data = Dataset(args.size_mb, args.files)
        self.figures: list[dict] = []
        self.notes: list[str] = []
        self.walls: dict[str, list[float]] = {}
        self.bare_walls: dict[str, list[float]] = {}
        self.sets: dict[str, Path] = {}
        self.redis_env = {"REDISCLI_AUTH": secret("redis_password")}

    def say(self, msg: str) -> None:
        print(f"bench: {msg}", flush=True)

    def root(self, name: str) -> Path:
        path = self.work / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    # -- the bundle ------------------------------------------------------------------------------------------------
    def backup(self, root: Path, components, backup_type: str = "full",
               uploads: Path | None = None) -> tuple[float, Path]:
        extra = {"components": ",".join(components), "backup_type": backup_type, "backup_root": str(root),
                 "backup_metrics_dir": str(self.root("metrics")),
                 "app_uploads_path": str(uploads or self.data.uploads), "models_path": str(self.data.models)}
        wall = playbook("backup.yml", extra, self.log)
        return wall, latest_set(root)

    # -- the bare tools, typed by hand -----------------------------------------------------------------------------
    def bare_mariadb(self, dest: Path, compressor: str = "zstd -q -T0 -3", lsn: str = "/tmp/bench-bare",
                     incremental_from: str | None = None) -> float:
        inc = f" --incremental-basedir={incremental_from}" if incremental_from else ""
        return sh(f"docker exec {container('mariadb')} sh -c 'rm -rf {lsn} && mkdir -p {lsn} && "
                  f"mariadb-backup --backup --stream=mbstream --target-dir={lsn} --extra-lsndir={lsn} --parallel=2 "
                  f"--user=root{inc} 2>/dev/null' | {compressor} > '{dest}' && sha256sum '{dest}' > /dev/null",
                  log=self.log)

    def bare_postgres(self, dest: Path) -> float:
        c = container("postgres")
        dbs = subprocess.run(["docker", "exec", "-u", "postgres", c, "psql", "-Atc",
                              "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate"],
                             capture_output=True, text=True, check=True).stdout.split("\n")
        dest.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        sh(f"docker exec -u postgres {c} pg_dumpall --globals-only | zstd -q -T0 -3 > '{dest}/globals.sql.zst'",
           log=self.log)
        for i, db in enumerate(d for d in dbs if d):
            # each name is one argv element, exactly as given (test databases have hostile names)
            with open(dest / f"{i}.dump.zst", "wb") as out:
                dump = subprocess.Popen(["docker", "exec", "-u", "postgres", c, "pg_dump", "-Fc", "-Z0", "-d", db],
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
                subprocess.run(["zstd", "-q", "-T0", "-3"], stdin=dump.stdout, stdout=out, check=True)
                if dump.wait():
                    raise BenchError(f"bare pg_dump of database #{i} failed")
        sh(f"sha256sum '{dest}'/* > /dev/null")
        return time.perf_counter() - start

    def bare_redis(self, dest: Path) -> float:
        return sh(f"docker exec -e REDISCLI_AUTH {container('redis')} redis-cli --rdb - 2>/dev/null "
                  f"| zstd -q -T0 -3 > '{dest}' && sha256sum '{dest}' > /dev/null", env=self.redis_env, log=self.log)

    def bare_uploads(self, dest: Path, src: Path | None = None, link_dest: Path | None = None,
                     hash_: bool = True) -> float:
        link = f" --link-dest='{link_dest}'" if link_dest else ""
        script = f"rsync -a --delete{link} '{src or self.data.uploads}/' '{dest}/'"
        if hash_:
            script += f" && find '{dest}' -type f -print0 | xargs -0 -r sha256sum > /dev/null"
        return sh(script, log=self.log)

    def bare(self, component: str, dest: Path) -> float:
        return {"mariadb": lambda: self.bare_mariadb(dest), "postgres": lambda: self.bare_postgres(dest),
                "redis": lambda: self.bare_redis(dest), "uploads": lambda: self.bare_uploads(dest)}[component]()

    # -- the figures -----------------------------------------------------------------------------------------------
    def per_component(self) -> None:
        """The bundle's backup of one component (whole playbook) ÷ the bare tool pipeline, alternating order."""
        for component in MEASURED:
            ours, bare = [], []
            for i in range(self.args.repeat):
                dest = self.work / f"bare-{component}-{i}"
                for side in ("bare", "ours") if i % 2 == 0 else ("ours", "bare"):
                    if side == "bare":
                        bare.append(self.bare(component, dest))
                    else:
                        ours.append(self.backup(self.root(f"one-{component}-{i}"), [component])[0])
                shutil.rmtree(dest, ignore_errors=True) if dest.is_dir() else dest.unlink(missing_ok=True)
            self.walls[component], self.bare_walls[component] = ours, bare
            entry = manifest(latest_set(self.root(f"one-{component}-0")))["components"][component]
            self.figures.append(figure(
                f"overhead {component}", f"`backup.yml -e components={component}` ÷ the bare pipeline",
                round(statistics.median(ours), 2), round(statistics.median(bare), 2), "<= 1.10",
                component_s=entry.get("duration_s"), runs=len(ours)))
            self.say(f"{component}: ours {statistics.median(ours):.2f} s, bare {statistics.median(bare):.2f} s")

    def whole_run(self) -> None:
        """Concurrency (whole backup ÷ slowest single component) and the Ansible overhead (wall − the set's span)."""
        for component in WHOLE:
            if component not in self.walls:
                self.walls[component] = [self.backup(self.root(f"one-{component}"), [component])[0]]
        wall, set_path = self.backup(self.root("whole"), WHOLE)
        self.sets["whole"] = set_path
        self.walls["whole"] = [wall]
        slowest = max(WHOLE, key=lambda c: statistics.median(self.walls[c]))
        self.figures.append(figure("concurrency", f"whole `backup.yml` ({', '.join(WHOLE)}) ÷ its slowest single "
                                   f"component ({slowest})", round(wall, 2),
                                   round(statistics.median(self.walls[slowest]), 2), "<= 1.3"))
        m = manifest(set_path)
        span = m["duration_s"]
        self.figures.append(figure("Ansible overhead", "whole `backup.yml` wall time − the set's own span (begin to "
                                   "finalize: every tool's time, run concurrently)", round(wall - span, 2), None,
                                   None, wall_s=round(wall, 2), span_s=span))
        self.notes.append(f"Ansible overhead goal: ≤ 3 s; measured {wall - span:.2f} s "
                          f"({'met' if wall - span <= 3 else 'not met'}).")

    def seeds_and_limit(self) -> None:
        """Against the seeds' `| gzip -6`, and the throughput against the machine's limit."""
        gz = self.work / "seeds.gz"
        gzip_s = self.bare_mariadb(gz, compressor="gzip -6")
        gz.unlink()
        ours = statistics.median(self.walls["mariadb"])
        self.figures.append(figure("against the seeds", "the bundle's MariaDB backup ÷ the seeds' "
                                   "`mariadb-backup --stream | gzip -6`", round(ours, 2), round(gzip_s, 2), "<= 0.15"))
        datadir = LAB_STATE / "data" / "appdb" / "mariadb"
        size = tree_bytes(datadir)
        cold = drop_caches()
        read_s = sh(f"find '{datadir}' -type f -print0 | xargs -0 cat > /dev/null")
        zstd_s = sh(f"find '{datadir}' -type f -print0 | xargs -0 cat | zstd -q -T0 -3 > /dev/null")
        entry = manifest(latest_set(self.root("one-mariadb-0")))["components"]["mariadb"]
        ours_tp = entry.get("bytes_raw", size) / entry["duration_s"]
        limit_tp = min(size / read_s, size / zstd_s)
        self.figures.append(figure("limit", "MariaDB backup throughput ÷ min(sequential read"
                                   f"{'' if cold else ' (warm: drop_caches refused)'}, zstd -T0 -3) on the datadir",
                                   round(ours_tp / 1e6, 1), round(limit_tp / 1e6, 1), ">= 0.80", unit="MB/s"))

    def one_pass(self) -> None:
        """Bytes read from the disk during a MariaDB backup with the live datadir evicted from the page cache (and
        the rest warm), the bundle's ÷ the bare pipeline's: how often the live data is read. The artefact the
        bundle reads back to fingerprint it (in a scratch server) was just written and is still cached, as it is
        in production; its cost shows in the time figures, not here."""
        datadir = LAB_STATE / "data" / "appdb" / "mariadb"
        reads = {}
        for side in ("bare", "ours", "bare"):
            evict(datadir)
            before = disk_read_bytes()
            if side == "bare":
                self.bare_mariadb(self.work / "onepass.zst")
                (self.work / "onepass.zst").unlink()
            else:
                self.backup(self.root("onepass"), ["mariadb"])
            reads.setdefault(side, []).append(disk_read_bytes() - before)
        bare = min(reads["bare"])  # the first bare run also loads the tools' own files
        self.figures.append(figure(
            "one pass", "bytes read from the disk during a MariaDB backup, the live datadir "
            f"({tree_bytes(datadir) / 1e6:.0f} MB) evicted from the page cache, the bundle's ÷ the bare pipeline's",
            round(reads["ours"][0] / 1e6, 1), round(bare / 1e6, 1), "<= 1.10", unit="MB"))

    def incremental(self) -> None:
        """MariaDB incremental after a ~5 % change ÷ the full, the bundle's and the bare tool's."""
        root = self.root("incremental")
        full_s, full_set = self.backup(root, ["mariadb"], "full")
        bare_full = self.work / "bare-full.zst"
        bare_full_s = self.bare_mariadb(bare_full, lsn="/tmp/bench-bare-full")
        self.data.change_mariadb(0.05)
        inc_s, inc_set = self.backup(root, ["mariadb"], "incremental")
        bare_inc = self.work / "bare-inc.zst"
        bare_inc_s = self.bare_mariadb(bare_inc, lsn="/tmp/bench-bare-inc", incremental_from="/tmp/bench-bare-full")
        self.sets["mariadb_full"] = full_set
        size = (manifest(inc_set)["components"]["mariadb"]["bytes"]
                / manifest(full_set)["components"]["mariadb"]["bytes"])
        bare_size = bare_inc.stat().st_size / bare_full.stat().st_size
        self.bare_full_stream = bare_full
        bare_inc.unlink()
        self.figures.append(figure("incremental size", "MariaDB incremental after a 5 % change ÷ the full (bytes)",
                                   round(size, 3), 1.0, "<= 0.10", unit="ratio", bare_ratio=round(bare_size, 3)))
        self.figures.append(figure("incremental time", "MariaDB incremental ÷ the full (`backup.yml` wall time)",
                                   round(inc_s, 2), round(full_s, 2), "<= 0.45",
                                   bare_ratio=round(bare_inc_s / bare_full_s, 3)))

    def restore(self) -> None:
        """The bundle's MariaDB restore (restore.yml on the live lab) ÷ the bare tools into a scratch server, and the
        time each is down: for the bundle, as a client sees it (``mariadb-admin ping`` in a loop: the last answer
        before the stop to the first one after the start); bare, the copy-back of the prepared backup into an empty
        datadir and the start of a server on it, until it answers."""
        full = self.sets["mariadb_full"]
        c = container("mariadb")
        with Prober(["docker", "exec", c, "mariadb-admin", "ping", "--silent"]) as probe:
            ours = playbook("restore.yml", {"components": "mariadb", "backup_id": full.name,
                                            "backup_root": str(full.parent), "confirm": "yes"}, self.log)
        ours_down = probe.longest_outage()
        image = subprocess.run(["docker", "inspect", "-f", "{{.Config.Image}}", c], capture_output=True, text=True,
                               check=True).stdout.strip()
        stage, datadir = self.work / "bare-restore", self.work / "bare-datadir"
        name = "llmops-bench-bare-mariadb"
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)
        try:
            start = time.perf_counter()
            sh(f"mkdir -p '{stage}' '{datadir}' && zstd -dc '{self.bare_full_stream}' | docker run -i --rm "
               f"-v '{stage}:/stage' {image} mbstream -x -C /stage && docker run --rm -v '{stage}:/stage' {image} "
               "mariadb-backup --prepare --target-dir=/stage 2>/dev/null", log=self.log)
            down = time.perf_counter()
            sh(f"docker run --rm -v '{stage}:/stage' -v '{datadir}:/var/lib/mysql' {image} sh -c "
               "'mariadb-backup --copy-back --target-dir=/stage 2>/dev/null && chown -R mysql:mysql /var/lib/mysql' "
               f"&& docker run -d --name {name} --network none -v '{datadir}:/var/lib/mysql' {image} >/dev/null && "
               f"until docker exec {name} mariadb-admin ping --silent 2>/dev/null; do sleep 0.2; done", log=self.log)
            bare = time.perf_counter() - start
            bare_down = time.perf_counter() - down
        finally:
            subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)
            subprocess.run(["docker", "run", "--rm", "-v", f"{self.work}:/w", image, "rm", "-rf", "/w/bare-restore",
                            "/w/bare-datadir"], capture_output=True, check=False)
        self.figures.append(figure("restore overhead", "`restore.yml -e components=mariadb` ÷ the bare tools (unpack, "
                                   "prepare, copy back, start a server on it)", round(ours, 2), round(bare, 2),
                                   "<= 1.15"))
        self.figures.append(figure("downtime", "MariaDB not answering during the bundle's restore (last answer before "
                                   "the stop → first after the start) ÷ the bare copy-back and start",
                                   ours_down and round(ours_down, 2), round(bare_down, 2), "<= 1.2"))

    def uploads_unchanged(self) -> None:
        """A nightly uploads backup of an unchanged tree with a cold cache ÷ bare `rsync --link-dest`."""
        root = self.root("unchanged")
        self.backup(root, ["uploads"])
        cold = drop_caches()
        ours, _ = self.backup(root, ["uploads"])
        prev, new = self.work / "rsync-prev", self.work / "rsync-new"
        self.bare_uploads(prev, hash_=False)
        drop_caches()
        bare = self.bare_uploads(new, link_dest=prev, hash_=False)
        shutil.rmtree(prev), shutil.rmtree(new)
        self.figures.append(figure("unchanged uploads", f"uploads backup of an unchanged {self.args.files}-file tree, "
                                   f"{'cold' if cold else 'warm'} cache ÷ bare `rsync -a --delete --link-dest`",
                                   round(ours, 2), round(bare, 2), "<= 2"))

    def growth(self) -> None:
        """Uploads backups at several tree sizes with 1 % changed: time and metadata bytes of the nightly set."""
        rows = []
        for n in self.args.growth:
            tree = self.work / f"growth-{n}"
            for i in range(n):
                d = tree / f"{i % 256:03d}"
                d.mkdir(parents=True, exist_ok=True)
                (d / f"f{i:07d}").write_bytes(i.to_bytes(8, "big") * 128)
            root = self.root(f"growth-root-{n}")
            full_s, full_set = self.backup(root, ["uploads"], uploads=tree)
            for i in range(0, n, 100):
                (tree / f"{i % 256:03d}" / f"f{i:07d}").write_bytes(b"changed" + i.to_bytes(8, "big") * 127)
            night_s, night_set = self.backup(root, ["uploads"], uploads=tree)
            meta = sum((night_set / f).stat().st_size for f in ("backup_manifest.json", "SHA256SUMS"))
            full_meta = sum((full_set / f).stat().st_size for f in ("backup_manifest.json", "SHA256SUMS"))
            rows.append({"files": n, "changed": len(range(0, n, 100)), "full_s": round(full_s, 2),
                         "nightly_s": round(night_s, 2), "metadata_bytes": meta, "full_metadata_bytes": full_meta,
                         "metadata_per_changed_file": round(meta / max(1, len(range(0, n, 100))))})
            shutil.rmtree(tree)
        last = rows[-1]
        self.figures.append(figure("growth", "metadata bytes of a nightly uploads set with 1 % changed ÷ the full "
                                   f"set's (at {last['files']} files)", last["metadata_bytes"],
                                   last["full_metadata_bytes"], "<= 0.10", unit="bytes", table=rows))

    def drill(self) -> None:
        """Restore-testing a set (drill.yml) ÷ taking it, and the drill's RTO per component."""
        whole = self.sets["whole"]
        wall = playbook("drill.yml", {"drill_backup_id": whole.name, "backup_root": str(whole.parent)}, self.log)
        reports = sorted((whole.parent / "drills").glob("drill_*/report.json"))
        report = json.loads(reports[-1].read_text()) if reports else {}
        self.figures.append(figure("restore-test", "`drill.yml` of the whole set ÷ the whole `backup.yml`",
                                   round(wall, 2), round(self.walls["whole"][0], 2), None,
                                   rto_s=report.get("rto_seconds"), rto_by_component=report.get("rto_by_component")))


class Prober:
    """Runs ``argv`` in a loop in a thread while in the ``with`` block, noting when it succeeded and failed."""

    def __init__(self, argv: list[str]):
        self.argv, self.samples, self.stop = argv, [], threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                ok = subprocess.run(self.argv, capture_output=True, timeout=5, check=False).returncode == 0
            except subprocess.TimeoutExpired:
                ok = False
            self.samples.append((time.monotonic(), ok))
            time.sleep(0.05)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()

    def longest_outage(self) -> float | None:
        """Seconds from the last success before the longest run of failures to the first success after it."""
        longest, last_ok, failing = None, None, False
        for when, ok in self.samples:
            if not ok:
                failing = True
            elif failing and last_ok is not None:
                longest = max(longest or 0.0, when - last_ok)
                failing = False
            if ok:
                last_ok, failing = when, False
        return longest


FIGURES = ["per_component", "whole_run", "seeds_and_limit", "one_pass", "incremental", "restore", "uploads_unchanged",
           "growth", "drill"]
SMOKE = ["per_component", "whole_run", "seeds_and_limit", "incremental", "uploads_unchanged", "growth"]
# the sets a figure restores are taken by another figure's run: asked for alone, that one is measured too
NEEDS = {"restore": "incremental", "drill": "whole_run"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=2048)
    parser.add_argument("--files", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--growth", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--figures", nargs="+", choices=FIGURES, default=FIGURES)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--keep", action="store_true", help="keep the data set in the lab for the next run")
    parser.add_argument("--smoke", action="store_true",
                        help="a tiny run of the figures that leave the lab's live data alone (no restore, no drill)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.size_mb, args.files, args.repeat, args.growth = 24, 200, 1, [200, 1000]
        args.figures = [f for f in args.figures if f in SMOKE]
    args.figures = sorted(set(args.figures) | {NEEDS[f] for f in args.figures if f in NEEDS}, key=FIGURES.index)
    bench = Bench(args)
    started = datetime.datetime.now(datetime.UTC)
    signal.signal(signal.SIGTERM, _interrupted)  # `timeout` or a CI limit: the figures measured so far are kept
    dataset, failed, current = {}, None, "the data set"
    try:
        dataset = bench.data.build(log=bench.say)
        for current in (name for name in FIGURES if name in args.figures):
            bench.say(f"measuring {current}")
            getattr(bench, current)()
    except (BenchError, KeyboardInterrupt) as exc:
        failed = f"{type(exc).__name__}: {exc}"
        bench.notes.append(f"INCOMPLETE: stopped while measuring {current} ({failed}); the figures above were "
                           "measured before that, the others are missing")
    finally:
        if not args.keep:
            bench.data.drop()
    paths = write_results(args.out, started, dataset, bench.figures, bench.notes, smoke=args.smoke,
                          figures_run=args.figures)
    shutil.rmtree(bench.work, ignore_errors=True)
    for path in paths:
        bench.say(f"wrote {path}")
    print(paths[1].read_text())
    if failed:
        bench.say(f"FAILED: {failed}")
    return 1 if failed else 0


def _interrupted(*_):
    raise KeyboardInterrupt("terminated")


if __name__ == "__main__":
    sys.exit(main())
