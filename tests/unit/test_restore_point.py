"""The composed restore point (``plan_restore`` with ``backup_id=newest``, issue 12): the schedule writes MariaDB and
the other stores into separate sets, so a restore of "everything" takes each component from the newest set holding
a good backup of it, says which and each one's RPO, and passes over a newer set that fails verification."""

from __future__ import annotations

import datetime
import hashlib
import os

import pytest
from ansible.module_utils import llmops_backupset as bs
from ansible.module_utils.llmops_restore import parse_composition, plan_restore

T0 = datetime.datetime(2026, 1, 31, 2, 0, 0, tzinfo=datetime.UTC)
NOW = T0 + datetime.timedelta(hours=7)
DAILY = ["postgres", "uploads", "configs"]


def make_set(root, when, components, chain=None, status=None, binlog=None):
    """A finalized set of ``components`` (one small artefact each); MariaDB a full, or an incremental on ``chain``,
    ending at ``binlog`` (``{file, position}``). ``status`` maps a component to its (failed) status."""
    partial = bs.begin_set(str(root), "llmops", when)
    entries, comps = [], {}
    for name in components:
        art = os.path.join(partial, name, "mariadb.mbstream.zst" if name == "mariadb" else f"{name}.zst")
        os.makedirs(os.path.dirname(art))
        with open(art, "wb") as handle:
            handle.write(f"{name} at {when}".encode() * 50)
        comps[name] = {"type": name, "status": (status or {}).get(name, "success"),
                       "started": bs.isoformat(when), "ended": bs.isoformat(when)}
    entries = bs.hash_set_files(partial)
    for name, comp in comps.items():
        comp["files"] = [e for e in entries if e["path"].startswith(name + "/")]
    if "mariadb" in comps:
        comps["mariadb"].update(backup_type="incremental" if chain else "full", chain=list(chain or []),
                                parent=(chain or [None])[-1], binlog=binlog)
    set_id = os.path.basename(partial)[1:-len(".partial")]
    bs.write_manifest(partial, {"id": set_id, "status": "success", "started": bs.isoformat(when),
                                "ended": bs.isoformat(when), "components": comps}, files=entries)
    return os.path.basename(bs.finalize_set(partial, str(root), "success"))


@pytest.fixture
def schedule(tmp_path):
    """A night of the default schedule: the MariaDB full and the daily set at 02:00, the incremental at 08:00."""
    root = tmp_path / "b"
    full = make_set(root, T0, ["mariadb"])
    daily = make_set(root, T0 + datetime.timedelta(minutes=3), DAILY)
    inc = make_set(root, T0 + datetime.timedelta(hours=6), ["mariadb"], chain=[full])
    return root, full, daily, inc


def test_newest_composes_every_component_from_its_newest_set(schedule):
    root, full, daily, inc = schedule
    latest = plan_restore(str(root), "latest", now=NOW)  # the last job's set holds MariaDB only
    assert latest["ok"] and latest["components"] == ["mariadb"] and not latest["composed"]
    plan = plan_restore(str(root), "newest", now=NOW)
    assert plan["ok"], plan["problems"]
    assert plan["components"] == ["mariadb", "postgres", "uploads", "configs"]
    assert plan["composed"] and plan["set_id"] == "composed"
    assert {c: s["set_id"] for c, s in plan["sources"].items()} == {"mariadb": inc, **{c: daily for c in DAILY}}
    assert plan["mariadb_chain"] == [full, inc]
    assert plan["sources"]["mariadb"]["rpo_s"] == 3600 and plan["sources"]["uploads"]["rpo_s"] == 7 * 3600 - 180
    assert plan["set_ended"] == bs.isoformat(T0 + datetime.timedelta(minutes=3))  # the oldest point: the RPO
    assert list(dict.fromkeys(s.split(":")[0] for s in plan["steps"])) == plan["components"]
    assert plan["backup_id"] == f"mariadb={inc},postgres={daily},uploads={daily},configs={daily}"
    # the plan's backup_id restores the same point later (a drill passes it to its restore)
    again = plan_restore(str(root), plan["backup_id"], now=NOW)
    assert again["ok"] and again["backup_id"] == plan["backup_id"]
    assert {c: (s["set_id"], s["point"]) for c, s in again["sources"].items()} == \
        {c: (s["set_id"], s["point"]) for c, s in plan["sources"].items()}
    # no binary log position recorded here: MariaDB is restored to its set, and the plan says why
    assert plan["mariadb_roll_forward"] is None and "binary log position" in plan["sources"]["mariadb"][
        "not_rolled_forward"]
    assert plan_restore(str(root), None, now=NOW)["sources"] == plan["sources"]  # newest is the default


def archive_binlogs(root, names, when):
    """Archived binary logs (``<root>/binlogs/<name>.zst`` and its ``.sha256``), written at ``when``."""
    folder = root / "binlogs"
    folder.mkdir(exist_ok=True)
    for name in names:
        path = folder / f"{name}.zst"
        path.write_bytes(name.encode() * 10)
        path.with_name(path.name + ".sha256").write_text(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {name}\n")
        os.utime(path, (when.timestamp(), when.timestamp()))


def test_the_newest_point_rolls_mariadb_forward_to_the_end_of_the_archive(tmp_path):
    root = tmp_path / "b"
    full = make_set(root, T0, ["mariadb"], binlog={"file": "mysql-bin.000002", "position": 4711})
    end = T0 + datetime.timedelta(hours=6, minutes=55)
    archive_binlogs(root, ["mysql-bin.000001", "mysql-bin.000002", "mysql-bin.000003"], end)
    plan = plan_restore(str(root), "newest", now=NOW)
    assert plan["ok"], plan["problems"]
    rolled = bs.isoformat(end + datetime.timedelta(seconds=1))
    assert plan["mariadb_roll_forward"] == rolled and plan["sources"]["mariadb"]["point"] == rolled
    assert plan["sources"]["mariadb"]["rpo_s"] == 5 * 60 - 1
    assert any(s.startswith("mariadb: roll forward through 2 archived binary log(s) from mysql-bin.000002:4711")
               for s in plan["steps"])
    assert "rolled forward through the archived binary logs" in plan["restore_point"][0]
    # one set named, or a composition: restored as it is, never rolled forward unasked
    assert plan_restore(str(root), full, now=NOW)["mariadb_roll_forward"] is None
    assert plan_restore(str(root), f"mariadb={full}", now=NOW)["mariadb_roll_forward"] is None
    # a gap in the archive: restored to the set, and the plan says why
    (root / "binlogs" / "mysql-bin.000002.zst").unlink()
    gap = plan_restore(str(root), "newest", now=NOW)
    assert gap["ok"] and gap["mariadb_roll_forward"] is None
    assert "is not in the archive" in gap["sources"]["mariadb"]["not_rolled_forward"]


def test_a_damaged_newest_backup_refuses_and_names_the_older_point(schedule):
    """Never an older point without being asked: the plan refuses, names the damage and the composition that
    restores the older point, which then plans cleanly."""
    root, _, daily, _ = schedule
    newer = make_set(root, T0 + datetime.timedelta(hours=5), ["uploads"])
    art = root / newer / "uploads" / "uploads.zst"
    art.write_bytes(b"X" + art.read_bytes()[1:])  # a flipped byte
    plan = plan_restore(str(root), "newest", components=["uploads", "postgres"], now=NOW)
    assert not plan["ok"]
    damaged, hint = plan["problems"]
    assert damaged.startswith(f"uploads: its newest backup, in set {newer}, cannot be restored")
    assert "checksum mismatch uploads/uploads.zst" in damaged and f"the newest older set that verifies is {daily}" \
        in damaged
    assert hint == f"to restore the older point instead: -e backup_id=uploads={daily},postgres={daily}"
    older = plan_restore(str(root), hint.split("backup_id=")[1], now=NOW)
    assert older["ok"] and older["sources"]["uploads"]["set_id"] == daily


def test_a_folder_named_like_a_set_that_cannot_be_read_refuses_the_newest_point(schedule):
    root, full, _, _ = schedule
    (root / full / "backup_manifest.json").write_text("{}")
    plan = plan_restore(str(root), "newest", now=NOW)
    assert not plan["ok"] and plan["problems"][0].startswith(f"set {full} cannot be read")
    assert "unsupported schema_version" in plan["problems"][0]


def test_a_failed_component_and_a_point_in_time_choose_older_sets(schedule):
    root, full, daily, inc = schedule
    make_set(root, T0 + datetime.timedelta(hours=6, minutes=3), DAILY, status={"postgres": "failed"})
    plan = plan_restore(str(root), "newest", now=NOW)
    assert plan["ok"] and plan["sources"]["postgres"]["set_id"] == daily
    assert plan["sources"]["uploads"]["set_id"] != daily
    assert any(w.startswith("postgres: its backup failed in the newer set(s)") for w in plan["warnings"])
    # to a point in time before the incremental: MariaDB from the full (replayed to the point), the rest ended before
    target = bs.isoformat(T0 + datetime.timedelta(hours=1))
    timed = plan_restore(str(root), "newest", target_time=target, now=NOW)
    assert {c: s["set_id"] for c, s in timed["sources"].items()} == {"mariadb": full, **{c: daily for c in DAILY}}
    assert timed["sources"]["mariadb"]["point"] == target and timed["sources"]["mariadb"]["rpo_s"] == 6 * 3600
    assert any("mariadb: replay" in s for s in timed["steps"])
    # this root has no binary log archive: the replay's problem is the plan's, not a reason to pass the set over
    assert not timed["ok"] and not any(w.startswith("mariadb: passed over") for w in timed["warnings"])


def test_a_component_no_good_set_holds_is_a_problem(schedule):
    root = schedule[0]
    plan = plan_restore(str(root), "newest", components=["mariadb", "qdrant"], now=NOW)
    assert not plan["ok"] and any("no good set holds qdrant " in p for p in plan["problems"])
    assert plan["missing"] == ["qdrant"] and plan["sources"]["mariadb"]["set_id"] == schedule[3]
    (root / "nothing").mkdir()
    empty = plan_restore(str(root / "nothing"), "newest", now=NOW)
    assert not empty["ok"] and empty["problems"]


@pytest.mark.parametrize(("ref", "expected"), [
    ("latest", None), ("newest", None), ("llmops_20260131_020000", None),
    ("mariadb=llmops_a, uploads=llmops_b", {"mariadb": "llmops_a", "uploads": "llmops_b"}),
])
def test_parse_composition(ref, expected):
    assert parse_composition(ref) == expected


@pytest.mark.parametrize("ref", ["mariadb=", "=llmops_a", "mariadb=a,mariadb=b", "mariadb=../etc"])
def test_parse_composition_refuses_what_is_not_a_composition(ref):
    with pytest.raises(bs.BackupSetError):
        parse_composition(ref)
