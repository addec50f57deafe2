"""The benchmark's outputs: ``<UTC date>.json`` (everything measured), ``.md`` (the table), ``.png`` (the ratios
against their goals)."""

from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path


def _fmt(value, unit: str) -> str:
    if value is None:
        return "–"
    return f"{value:,.2f} {unit}" if isinstance(value, float) else f"{value:,} {unit}"


def table(figures: list[dict]) -> str:
    lines = ["| figure | what it compares | the bundle | bare / reference | ratio | goal | met |",
             "| --- | --- | ---: | ---: | ---: | --- | --- |"]
    for f in figures:
        met = {True: "yes", False: "**no**", None: "reported"}[f["met"]]
        lines.append(f"| {f['figure']} | {f['what']} | {_fmt(f['ours'], f['unit'])} | {_fmt(f['bare'], f['unit'])} "
                     f"| {'–' if f['ratio'] is None else f['ratio']} | {f['goal'] or '–'} | {met} |")
    for f in figures:
        if f.get("table"):
            keys = list(f["table"][0])
            lines += ["", f"{f['figure']}:", "", "| " + " | ".join(keys) + " |", "|" + " ---: |" * len(keys)]
            lines += ["| " + " | ".join(str(row[k]) for k in keys) + " |" for row in f["table"]]
    return "\n".join(lines) + "\n"


def chart(figures: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [f for f in figures if f["ratio"] is not None and f["goal"]]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.5))
    names = [f["figure"] for f in rows]
    colours = ["tab:green" if f["met"] else "tab:red" for f in rows]
    ax.barh(names, [f["ratio"] for f in rows], color=colours)
    for i, f in enumerate(rows):
        ax.plot([float(f["goal"].split()[1])] * 2, [i - 0.4, i + 0.4], color="black", linewidth=2)
    ax.invert_yaxis()
    ax.set_xlabel("ratio (bar) and goal (black line); green: goal met")
    ax.set_title("make bench: the bundle against the bare tools, same run")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def machine() -> dict:
    cpu = subprocess.run(["nproc"], capture_output=True, text=True, check=False).stdout.strip()
    mem = next((line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), "?")
    return {"cpus": cpu, "mem_kib": mem, "kernel": platform.release(), "python": platform.python_version()}


def write_results(out: Path, started, dataset: dict, figures: list[dict], notes: list[str], smoke: bool,
                  figures_run: list[str]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    stem = out / started.strftime("%Y-%m-%dT%H%M%SZ")
    doc = {"started": started.strftime("%Y-%m-%dT%H:%M:%SZ"), "smoke": smoke, "machine": machine(),
           "dataset": dataset, "figures_run": figures_run, "figures": figures, "notes": notes}
    stem.with_suffix(".json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    md = [f"# make bench, {doc['started']}{' (smoke run)' if smoke else ''}", "",
          f"Machine: {doc['machine']['cpus']} CPUs, {int(doc['machine']['mem_kib']) // 1024} MiB. Data set: "
          + ", ".join(f"{k} {v}" for k, v in dataset.items()) + ".", "", table(figures)]
    md += [f"- {n}" for n in notes]
    stem.with_suffix(".md").write_text("\n".join(md) + "\n")
    chart(figures, stem.with_suffix(".png"))
    return [stem.with_suffix(".json"), stem.with_suffix(".md"), stem.with_suffix(".png")]
