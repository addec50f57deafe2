"""The `make bench` harness (bench/run.py) in a tiny smoke run, so that it cannot rot (issue 14).

The smoke run measures every figure that leaves the lab's live data alone (the restore and the drill figures
replace live data or take the one drill slot, and run only in `make bench`), on a data set of about 24 MB, and
writes the same outputs as the real run. The figures themselves are not judged here (a two-core test machine
under a test session says nothing about speed): the test checks that each was measured on both sides, that the
ratios are the quotients of what was measured, that the outputs are complete, and that the lab is left clean.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO, ansible_env

SMOKE_FIGURES = {"overhead mariadb", "overhead postgres", "overhead redis", "overhead uploads", "concurrency",
                 "Ansible overhead", "against the seeds", "limit", "incremental size", "incremental time",
                 "unchanged uploads", "growth"}


def test_the_bench_smoke_run_measures_every_figure_and_leaves_the_lab_clean(lab, tmp_path):
    proc = subprocess.run([sys.executable, "bench/run.py", "--smoke", "--out", str(tmp_path)], cwd=REPO,
                          env=ansible_env(), capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = {p.suffix: p for p in tmp_path.iterdir()}
    assert set(results) == {".json", ".md", ".png"}
    assert results[".png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads(results[".json"].read_text())
    assert doc["smoke"] is True and doc["dataset"]["upload_files"] == 200 and doc["dataset"]["mariadb_rows"] > 0
    figures = {f["figure"]: f for f in doc["figures"]}
    assert set(figures) == SMOKE_FIGURES
    for name, f in figures.items():
        assert isinstance(f["ours"], (int, float)) and f["ours"] > 0, name
        if f["bare"] is not None:
            assert f["bare"] > 0 and abs(f["ratio"] - f["ours"] / f["bare"]) < 0.01, name
        if f["goal"] and f["ratio"] is not None:
            op, value = f["goal"].split()
            assert f["met"] == (f["ratio"] <= float(value) if op == "<=" else f["ratio"] >= float(value)), name
        else:
            assert f["met"] is None, name
    growth = figures["growth"]["table"]
    assert [row["files"] for row in growth] == [200, 1000] and all(row["changed"] == row["files"] // 100
                                                                   for row in growth)
    table = results[".md"].read_text()
    assert all(f"| {name} |" in table for name in SMOKE_FIGURES)
    # nothing of the data set stays in the lab (the other tests back up every database)
    assert lab.mariadb("SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name='bench'") == [["0"]]
    assert lab.psql("SELECT count(*) FROM pg_database WHERE datname='bench'") == [["0"]]
    assert lab.redis("--scan", "--pattern", "bench:*").strip() == ""
    assert not (REPO / ".state" / "bench" / "run").exists()
