"""The restore journal (module_utils/llmops_common.py ``journal_*``): what each step did to the live data, what the
next restore.yml says about a run that was killed, and what ``-e step=rollback`` puts back."""

from __future__ import annotations

import json
import os

import pytest
from ansible.module_utils import llmops_common as c
from ansible.module_utils.llmops_layout import layout_path


def test_each_step_records_what_the_live_data_is(tmp_path):
    path = layout_path(tmp_path, "restore_journal")
    assert path == str(tmp_path / ".restore-journal.json")
    c.write_journal(path, c.journal_begin(None, "20260101_000000", "s1", "/b/s1", "pre-restore-1", ["mariadb"]))
    c.journal_step(path, "mariadb", "stage", "done", "pre-restore-1")
    assert c.read_journal(path)["components"]["mariadb"]["live"] == c.LIVE_OLD
    assert c.journal_interrupted(c.read_journal(path)) == {}  # killed after stage: nothing live changed
    c.journal_step(path, "mariadb", "swap", "running", "pre-restore-1")
    journal = c.read_journal(path)
    assert journal["components"]["mariadb"]["live"] == c.LIVE_MIX
    assert list(c.journal_interrupted(journal)) == ["mariadb"]
    [line] = c.journal_summary(journal)
    assert "a restore of mariadb (set s1, tag pre-restore-1) was interrupted during `swap`" in line
    assert "PARTLY REPLACED" in line and "-e step=rollback" in line
    c.journal_step(path, "mariadb", "swap", "done", "pre-restore-1")
    [line] = c.journal_summary(c.read_journal(path))
    assert "interrupted after `swap`" in line and "holds the NEW data, not yet verified" in line
    c.journal_step(path, "mariadb", "verify", "done", "pre-restore-1")
    c.journal_step(path, "mariadb", "cleanup", "done", "pre-restore-1")
    assert c.journal_interrupted(c.read_journal(path)) == {}
    assert c.journal_rollback_plan(c.read_journal(path)) == []
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"


def test_a_failed_step_and_a_rollback(tmp_path):
    path = str(tmp_path / "j.json")
    c.journal_step(path, "redis", "swap", "done", ".pre-restore-2")  # no header yet: started by the step
    assert c.read_journal(path)["components"]["redis"]["safety_tag"] == "pre-restore-2"
    c.journal_step(path, "redis", "verify", "failed", "pre-restore-2")
    assert c.read_journal(path)["components"]["redis"]["live"] == c.LIVE_BAD
    c.journal_step(path, "redis", "rollback", "running", "pre-restore-2")
    assert "PARTLY PUT BACK" in c.journal_summary(c.read_journal(path))[0]
    c.journal_step(path, "redis", "rollback", "done", "pre-restore-2")
    assert c.read_journal(path)["components"]["redis"]["live"] == c.LIVE_PUT_BACK
    assert c.journal_interrupted(c.read_journal(path)) == {}
    c.journal_step(path, "uploads", "swap", "done", "pre-restore-2", verified=True)  # files_restore checks itself
    assert c.read_journal(path)["components"]["uploads"]["live"] == c.LIVE_VERIFIED


def test_a_second_killed_run_keeps_the_tag_of_the_oldest_data(tmp_path):
    """Killed twice: the rollback still puts back the safety copy from before the first run."""
    path = str(tmp_path / "j.json")
    c.write_journal(path, c.journal_begin(None, "r1", "s1", "/b/s1", "pre-restore-1", ["mariadb", "postgres"]))
    c.journal_step(path, "mariadb", "swap", "running", "pre-restore-1")
    c.journal_step(path, "postgres", "load", "done", "pre-restore-1")
    first = c.read_journal(path)
    second = c.journal_begin(first, "r2", "s1", "/b/s1", "pre-restore-2", ["mariadb", "postgres"])
    assert second["original_tags"] == {"mariadb": "pre-restore-1", "postgres": "pre-restore-1"}
    c.write_journal(path, second)
    c.journal_step(path, "mariadb", "swap", "done", "pre-restore-2")
    plan = c.journal_rollback_plan(c.read_journal(path))
    assert [(p["component"], p["safety_tag"], p["set_path"]) for p in plan] == [("mariadb", "pre-restore-1", "/b/s1")]
    # a run killed before it changed anything: nothing to put back, and nothing carried
    third = c.journal_begin(None, "r3", "s1", "/b/s1", "pre-restore-3", ["redis"])
    assert third["original_tags"] == {} and third["previous"] is None
    assert json.loads(json.dumps(third)) == third


def test_the_component_names_are_restore_ymls():
    assert c.journal_component("MariaDB", {}) == "mariadb"
    assert c.journal_component("files (mode=tree)", {"mode": "tree"}) == "uploads"
    assert c.journal_component("files (mode=configs)", {"mode": "configs"}) == "configs"
    assert c.journal_component("Qdrant", {}) == "qdrant"


@pytest.mark.parametrize("killed_after", ["journal_entry", "rename", "moved_saved", "placed"])
def test_a_file_swap_killed_at_any_point_rolls_back_to_the_old_tree(tmp_path, killed_after):
    """files_restore's swap (``swap_in``) replayed up to each point a SIGKILL can land between two of its writes;
    ``undo`` must give the old tree back every time (the rename is atomic: the disk says whether it happened)."""
    from ansible.module_utils.llmops_files_restore import Journal, undo

    live, safety, staging = tmp_path / "uploads", tmp_path / "uploads.pre-restore-1", tmp_path / "staging"
    live.mkdir()
    (live / "old.txt").write_text("old\n")
    journal = Journal(str(staging))
    entry = journal.add(op="swap", path=str(live), safety=str(safety), existed=True, moved=False, placed=False)
    if killed_after != "journal_entry":
        os.rename(live, safety)
    if killed_after in ("moved_saved", "placed"):
        entry["moved"] = True
        journal.save()
    if killed_after == "placed":
        live.mkdir()
        (live / "new.txt").write_text("new\n")
    assert undo(Journal.load(str(staging))) == ([] if killed_after == "journal_entry" else [str(live)])
    assert sorted(p.name for p in live.iterdir()) == ["old.txt"] and not safety.exists()
    assert Journal.load(str(staging)).entries == []
