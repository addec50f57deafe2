"""The fault matrix, generated from the test run so that it stays true.

Every test under tests/faults is one row: the scenario (its file's docstring, first sentence), the case (its
parameters), what is expected (its docstring's first sentence, else its name) and what was observed in this run
(passed, or the first line of the failure). The rows of each run go to `.state/faults/matrix.md`; with
`LLMOPS_FAULT_MATRIX=write` (`make fault-matrix`) they also replace tests/faults/MATRIX.md, the page the README
links. tests/unit/test_fault_matrix.py fails when a fault test is missing from that page.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

HERE = Path(__file__).parent
PAGE = HERE / "MATRIX.md"
STATE = HERE.parents[1] / ".state" / "faults" / "matrix.md"
ROWS: dict[str, dict] = {}


def first_sentence(text: str | None) -> str:
    text = " ".join((text or "").split())
    match = re.match(r"(.+?[.:])(\s|$)", text)
    return (match.group(1) if match else text).rstrip(":.").replace("|", "\\|")


def case_of(item) -> str:
    params = getattr(item, "callspec", None)
    return ", ".join(f"{k}={v}" for k, v in params.params.items()) if params else ""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not item.nodeid.startswith("tests/faults/") or (report.when == "setup" and report.passed):
        return
    if report.when == "teardown" and report.passed:
        return
    func = getattr(item, "function", None)
    row = ROWS.setdefault(item.nodeid, {
        "scenario": first_sentence(item.module.__doc__),
        "test": item.name,
        "case": case_of(item),
        "expected": first_sentence(func.__doc__) if func and func.__doc__ else
        item.originalname.removeprefix("test_").replace("_", " "),
        "observed": "passed",
        "seconds": 0.0,
    })
    row["seconds"] += report.duration
    if report.failed:
        cause = first_sentence(str(report.longrepr).splitlines()[-1])
        row["observed"] = f"FAILED at {report.when}: {cause}"
    elif report.skipped:
        row["observed"] = "skipped (counts as not passing)"


def render(rows: dict[str, dict]) -> str:
    lines = ["# Fault matrix", "",
             "Generated from the last run of `tests/faults/` (`make fault-matrix`); every row is a test that ran "
             "against the real lab or the real modules. Scenario: the test file; expected: what the test asserts.", "",
             "| scenario | test | case | expected | observed | s |", "| --- | --- | --- | --- | --- | ---: |"]
    for nodeid in sorted(rows):
        r = rows[nodeid]
        lines.append(f"| {r['scenario']} | `{r['test']}` | {r['case']} | {r['expected']} | {r['observed']} | "
                     f"{r['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def pytest_sessionfinish(session, exitstatus):
    if not ROWS:
        return
    text = render(ROWS)
    STATE.parent.mkdir(parents=True, exist_ok=True)
    STATE.write_text(text, encoding="utf-8")
    if os.environ.get("LLMOPS_FAULT_MATRIX") == "write":
        PAGE.write_text(text, encoding="utf-8")
