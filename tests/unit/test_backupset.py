"""Tests of module_utils/llmops_backupset.py: layout, SHA256SUMS, finalize, latest, verify."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import stat
import subprocess

import pytest

from module_utils import llmops_backupset as bs

T0 = datetime.datetime(2026, 1, 31, 2, 0, 0, tzinfo=datetime.UTC)


def make_set(root, now, status="success", name="llmops", files=None):
    partial = bs.begin_set(root, name, now)
    os.unlink(os.path.join(partial, bs.OWNER))
    os.rmdir(os.path.join(partial, bs.COMPONENTS_DIR))
    for rel, data in (files or {"mariadb/full.mbstream.zst": b"m" * 1000, "postgres/app.dump.zst": b"p"}).items():
        full = os.path.join(partial, rel)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as handle:
            handle.write(data)
    manifest = {"id": os.path.basename(partial)[1:-8], "status": status, "started": bs.isoformat(now),
                "ended": bs.isoformat(now), "components": {"mariadb": {"status": status, "backup_type": "full"}}}
    bs.write_manifest(partial, manifest)
    return bs.finalize_set(partial, root, status)


def test_begin_layout_and_modes(tmp_path):
    root = tmp_path / "backups"
    partial = bs.begin_set(root, "llmops", T0)
    assert os.path.basename(partial) == ".llmops_20260131_020000.partial"
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(partial).st_mode) == 0o700
    assert bs.new_set_id(T0) == "20260131_020000"
    assert bs.new_set_id(datetime.datetime(2026, 1, 31, 11, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=9)))) \
        == "20260131_020000"
    with pytest.raises(bs.BackupSetError):
        bs.begin_set(root, "llmops", T0)
    with pytest.raises(bs.BackupSetError):
        bs.begin_set(root, "../evil", T0)
    os.chmod(root, 0o750)  # noqa: S103 - an existing root readable by its group is set back to 0700
    bs.begin_set(root, "other", T0)
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o700


def test_sha256sum_accepts_set_and_latest(tmp_path):
    path = make_set(tmp_path, T0)
    assert os.path.basename(path) == "llmops_20260131_020000"
    check = subprocess.run(["sha256sum", "-c", "--strict", "SHA256SUMS"], cwd=path, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    listed = [line.split("  ", 1)[1] for line in open(os.path.join(path, "SHA256SUMS")).read().splitlines()]
    assert listed == sorted(listed) == ["backup_manifest.json", "mariadb/full.mbstream.zst", "postgres/app.dump.zst"]
    assert stat.S_IMODE(os.stat(os.path.join(path, "backup_manifest.json")).st_mode) == 0o600
    assert os.readlink(tmp_path / "latest") == "llmops_20260131_020000"
    manifest = bs.load_manifest(path)
    assert manifest["schema_version"] == 1 and manifest["totals"] == {"files": 2, "bytes": 1001}
    assert bs.verify_set(path)["ok"]
    sets = bs.list_sets(tmp_path)
    assert [s["id"] for s in sets] == ["llmops_20260131_020000"] and sets[0]["complete"] and sets[0]["latest"]


def test_abandoned_partial_is_not_listed_and_latest_unchanged(tmp_path):
    make_set(tmp_path, T0)
    partial = bs.begin_set(tmp_path, "llmops", T0 + datetime.timedelta(hours=6))
    (open(os.path.join(partial, "half.zst"), "wb")).write(b"x")
    assert [s["id"] for s in bs.list_sets(tmp_path)] == ["llmops_20260131_020000"]
    assert os.readlink(tmp_path / "latest") == "llmops_20260131_020000"
    assert bs.list_partials(tmp_path) == [partial]
    later = T0 + datetime.timedelta(hours=11)
    assert bs.cleanup_partials(tmp_path, 4 * 3600, now=later, dry_run=True) == [partial]
    assert bs.cleanup_partials(tmp_path, 4 * 3600, now=T0 + datetime.timedelta(hours=7)) == []
    assert bs.cleanup_partials(tmp_path, 4 * 3600, now=later) == [partial]
    assert not os.path.exists(partial)


def test_failed_set_never_latest(tmp_path):
    make_set(tmp_path, T0)
    failed = make_set(tmp_path, T0 + datetime.timedelta(days=1), status="failed")
    assert os.readlink(tmp_path / "latest") == "llmops_20260131_020000"
    assert bs.load_manifest(failed)["status"] == "failed"
    assert [s["id"] for s in bs.list_sets(tmp_path, complete_only=True)] == ["llmops_20260131_020000"]
    assert [s["status"] for s in bs.list_sets(tmp_path)] == ["success", "failed"]
    assert bs.resolve_set(tmp_path) == str(tmp_path / "llmops_20260131_020000")


def test_finalize_refuses_status_mismatch_and_missing_sums(tmp_path):
    partial = bs.begin_set(tmp_path, "llmops", T0)
    with pytest.raises(bs.BackupSetError):
        bs.finalize_set(partial, tmp_path, "success")
    bs.write_manifest(partial, {"status": "failed"})
    with pytest.raises(bs.BackupSetError, match="says status"):
        bs.finalize_set(partial, tmp_path, "success")


def test_folders_without_manifest_are_ignored(tmp_path):
    (tmp_path / "llmops_20250101_000000").mkdir()
    (tmp_path / "llmops_20250102_000000").mkdir()
    (tmp_path / "llmops_20250102_000000" / "backup_manifest.json").write_text("{not json")
    assert bs.list_sets(tmp_path) == []


def test_verify_detects_flip_missing_extra(tmp_path):
    path = make_set(tmp_path, T0)
    target = os.path.join(path, "mariadb/full.mbstream.zst")
    data = bytearray(open(target, "rb").read())
    data[10] ^= 0x01
    open(target, "wb").write(bytes(data))
    result = bs.verify_set(path)
    assert not result["ok"] and result["mismatched"] == ["mariadb/full.mbstream.zst"]
    os.unlink(os.path.join(path, "postgres/app.dump.zst"))
    open(os.path.join(path, "stray.txt"), "w").write("?")
    result = bs.verify_set(path)
    assert result["missing"] == ["postgres/app.dump.zst"] and result["extra"] == ["stray.txt"]
    os.unlink(os.path.join(path, "SHA256SUMS"))
    assert bs.verify_set(path)["errors"]
    assert not bs.verify_set(tmp_path / "nope")["ok"]


def test_verify_detects_manifest_tampering(tmp_path):
    path = make_set(tmp_path, T0)
    mpath = os.path.join(path, "backup_manifest.json")
    text = open(mpath).read().replace('"success"', '"succes2"', 1)
    open(mpath, "w").write(text)
    assert bs.verify_set(path)["mismatched"] == ["backup_manifest.json"]


def test_symbolic_links_are_recorded_by_target_and_verified(tmp_path):
    root = tmp_path / "backups"
    partial = bs.begin_set(root, "llmops", T0)
    os.unlink(os.path.join(partial, bs.OWNER))
    os.rmdir(os.path.join(partial, bs.COMPONENTS_DIR))
    os.makedirs(os.path.join(partial, "uploads", "docs"))
    with open(os.path.join(partial, "uploads", "docs", "a.txt"), "wb") as handle:
        handle.write(b"a")
    os.symlink("docs/a.txt", os.path.join(partial, "uploads", "link-to-a"))
    os.symlink("missing-target", os.path.join(partial, "uploads", "dangling"))
    os.symlink("docs", os.path.join(partial, "uploads", "docs-link"))
    manifest = {"id": "llmops_20260131_020000", "status": "success", "components": {}}
    bs.write_manifest(partial, manifest)
    path = bs.finalize_set(partial, str(root), "success")
    check = subprocess.run(["sha256sum", "-c", "--strict", "SHA256SUMS"], cwd=path, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert {link["path"]: link["target"] for link in bs.load_manifest(path)["links"]} == {
        "uploads/dangling": "missing-target", "uploads/docs-link": "docs", "uploads/link-to-a": "docs/a.txt"}
    assert bs.verify_set(path)["ok"]
    os.unlink(os.path.join(path, "uploads", "link-to-a"))
    os.symlink("elsewhere", os.path.join(path, "uploads", "link-to-a"))
    result = bs.verify_set(path)
    assert not result["ok"] and result["mismatched"] == ["uploads/link-to-a"]


@pytest.mark.parametrize(("expected", "actual", "only", "problems"), [
    ({"db": {"tables": {"t": {"rows": 1}}}}, {"db": {"tables": {"t": {"rows": 1}}}}, False, []),
    ({"db": {"tables": {"t": {"rows": 1}}}}, {"db": {"tables": {"t": {"rows": 2}}}}, False,
     ["db.tables.t.rows: 2, expected 1"]),
    ({"db": {"views": 1}}, {}, False, ['db: missing, expected {"views": 1}']),
    ({}, {"extra": {}}, False, ["extra: not in the backup"]),
    ({"db": {"views": 1}}, {"db": {"views": 1}, "other": {}}, True, []),
    ({"0": {"keys": 3}}, {"0": {"keys": 2}}, False, ["0.keys: 2, expected 3"]),
])
def test_diff_fingerprints(expected, actual, only, problems):
    assert bs.diff_fingerprints(expected, actual, only_expected=only) == problems


# --------------------------------------------------------------------------------------------
# SHA256SUMS escaping, read back at finalize

# File names as the file system holds them (bytes): every case GNU sha256sum escapes or writes raw.
HOSTILE = [
    b"plain.txt",
    b"new\nline",
    b"back\\slash",
    b"carriage\rreturn",
    b"both\\\nand\r",
    "한국어 문서.txt".encode(),
    "emoji 😀🚀".encode(),
    b"quote's \"double\"",
    b"$(touch pwned) `x`",
    b"with space",
    b"with\ttab",
    b"trailing space ",
    b"-leading-dash",
    b"not utf8 \xff\xfe",
    b"*star",
]


def _gnu_line(folder, name):
    proc = subprocess.run([b"sha256sum", b"--", name], cwd=folder, capture_output=True, check=True)
    return proc.stdout


def test_sums_line_is_byte_for_byte_gnu_sha256sum(tmp_path):
    version = subprocess.run(["sha256sum", "--version"], capture_output=True, text=True, check=True).stdout
    assert "GNU coreutils" in version
    gnu = b""
    for i, name in enumerate(HOSTILE):
        (tmp_path / os.fsdecode(name)).write_bytes(b"x" * i)
        digest = bs.hash_file(os.path.join(tmp_path, os.fsdecode(name)))[0]
        expected = _gnu_line(tmp_path, name)
        assert bs.sums_line(os.fsdecode(name), digest) == expected, name
        assert bs.sums_line(name, digest) == expected, name
        gnu += expected
    parsed = bs.parse_sums(gnu)
    assert set(parsed) == {os.fsdecode(n) for n in HOSTILE}
    ours = bs.format_sums(parsed)
    assert sorted(ours.split(b"\n")) == sorted(gnu.split(b"\n")) and bs.parse_sums(ours) == parsed
    (tmp_path / "SUMS").write_bytes(bs.format_sums(parsed))
    check = subprocess.run(["sha256sum", "-c", "--strict", "SUMS"], cwd=tmp_path, capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_parse_sums_forms():
    digest = "ab" * 32
    assert bs.parse_sums(f"{digest}  a b\n{digest} *star\n") == {"a b": digest, "star": digest}
    assert bs.parse_sums(f"\\{digest}  x\\\\y\\nz\\r\n".encode()) == {"x\\y\nz\r": digest}
    assert bs.parse_sums(f"{digest.upper()}  crlf\r\n") == {"crlf": digest}
    assert bs.parse_sums(f"{digest}  no newline at end") == {"no newline at end": digest}
    assert bs.parse_sums(f"{digest}  raw\\kept\n") == {"raw\\kept": digest}  # unescaped line: raw, as GNU
    assert bs.parse_sums(b"") == {}
    assert bs.parse_sums(f"{digest}  bad\xff".encode("utf-8", "surrogateescape") + b"\xff\n") == \
        {"bad\xff\udcff": digest}


ZERO, ONE = "0" * 64, "1" * 64


@pytest.mark.parametrize(("text", "match"), [
    (f"{ZERO}  a\n\n{ONE}  b\n", "line 2 is not"),
    (f"{ZERO} a\n", "line 1 is not"),
    (f"{ZERO}  \n", "line 1 is not"),
    (f"{ZERO[1:]}  a\n", "line 1 is not"),
    (f"{'g' * 64}  a\n", "line 1 is not"),
    (f" {ZERO}  a\n", "line 1 is not"),
    (f"\\{ZERO}  a\\tb\n", "bad escape"),
    (f"\\{ZERO}  a\\\n", "bad escape"),
    (f"{ZERO}  a\n{ONE}  a\n", "second time"),
    (f"{ZERO}  a\0b\n", "NUL"),
])
def test_parse_sums_rejects_malformed_lines(text, match):
    with pytest.raises(bs.SumsFormatError, match=match):
        bs.parse_sums(text.encode())
    with pytest.raises(ValueError):  # callers that catch ValueError keep working
        bs.parse_sums(text)


def test_sums_line_refuses_impossible_names():
    with pytest.raises(bs.BackupSetError, match="NUL"):
        bs.sums_line("a\0b", "0" * 64)
    with pytest.raises(bs.BackupSetError, match="not a name the file system gave"):
        bs.sums_line("lone \ud800 surrogate", "0" * 64)
    with pytest.raises(bs.BackupSetError, match="not a sha256"):
        bs.sums_line("a", "xyz")


def test_hostile_names_set_finalizes_and_sha256sum_accepts_it(tmp_path):
    """Files and folders with every hostile name, a symlink and an empty file: finalize, then the
    real `sha256sum -c` and verify_set both accept the set."""
    root = tmp_path / "backups"
    partial = bs.begin_set(root, "llmops", T0)
    os.unlink(os.path.join(partial, bs.OWNER))
    os.rmdir(os.path.join(partial, bs.COMPONENTS_DIR))
    base = os.fsencode(partial)
    os.makedirs(os.path.join(base, b"uploads"))
    for i, name in enumerate(HOSTILE):
        folder = os.path.join(base, b"uploads", b"dir " + name)
        os.makedirs(folder)
        with open(os.path.join(folder, name), "wb") as handle:
            handle.write(name * (i + 1))
        with open(os.path.join(base, b"uploads", name), "wb") as handle:
            handle.write(b"top " + name)
    open(os.path.join(base, b"uploads", b"empty"), "wb").close()
    os.symlink(b"dir new\nline/new\nline", os.path.join(base, b"uploads", b"link\nto \xff"))
    bs.write_manifest(partial, {"id": "llmops_20260131_020000", "status": "success", "components": {}})
    path = bs.finalize_set(partial, str(root), "success")
    manifest = bs.load_manifest(path)
    assert manifest["status"] == "success" and "problems" not in manifest
    assert os.readlink(root / "latest") == "llmops_20260131_020000"
    assert manifest["totals"]["files"] == 2 * len(HOSTILE) + 1
    assert manifest["links"] == [{"path": "uploads/link\nto \udcff", "target": "dir new\nline/new\nline"}]
    check = subprocess.run(["sha256sum", "-c", "--strict", "SHA256SUMS"], cwd=path, capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.count(b": OK\n") == 2 * len(HOSTILE) + 2
    sums = (open(os.path.join(path, "SHA256SUMS"), "rb")).read()
    assert sums.count(b"\n") == 2 * len(HOSTILE) + 2  # one line per file: newlines in names are escaped
    result = bs.verify_set(path)
    assert result["ok"], result
    assert result["checked"] == 2 * len(HOSTILE) + 2
    with open(os.path.join(base.replace(b".llmops_20260131_020000.partial", b"llmops_20260131_020000"),
                           b"uploads", b"dir new\nline", b"new\nline"), "ab") as handle:
        handle.write(b"!")
    assert bs.verify_set(path)["mismatched"] == ["uploads/dir new\nline/new\nline"]


def _partial_with_files(root, files):
    partial = bs.begin_set(root, "llmops", T0)
    os.unlink(os.path.join(partial, bs.OWNER))
    os.rmdir(os.path.join(partial, bs.COMPONENTS_DIR))
    for rel, data in files.items():
        full = os.path.join(partial, rel)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as handle:
            handle.write(data)
    return partial


def test_finalize_fails_a_set_whose_sums_do_not_read_back(tmp_path):
    root = tmp_path / "backups"
    partial = _partial_with_files(root, {"uploads/new\nline": b"n", "uploads/ok": b"o"})
    bs.write_manifest(partial, {"id": "llmops_20260131_020000", "status": "success", "components": {}})
    sums_path = os.path.join(partial, "SHA256SUMS")
    # What a writer without GNU escaping would produce: the name split over two lines.
    text = open(sums_path, "rb").read().replace(b"\\", b"", 1).replace(b"new\\nline", b"new\nline")
    open(sums_path, "wb").write(text)
    path = bs.finalize_set(partial, str(root), "success")
    manifest = bs.load_manifest(path)
    assert manifest["status"] == "failed"
    assert any("SHA256SUMS cannot be read back" in p for p in manifest["problems"]), manifest["problems"]
    assert not os.path.lexists(root / "latest")
    assert bs.list_sets(root, complete_only=True) == []
    # finalize rewrote SHA256SUMS with the failed manifest: the failed set is consistent, and says why it failed.
    assert bs.verify_set(path)["status"] == "failed"


def test_finalize_fails_a_set_with_unlisted_or_changed_files(tmp_path):
    root = tmp_path / "backups"
    partial = _partial_with_files(root, {"a/one": b"1", "a/two": b"22"})
    files = bs.hash_set_files(partial)
    bs.write_manifest(partial, {"status": "success", "components": {}},
                      files=[f for f in files if f["path"] == "a/one"])
    with open(os.path.join(partial, "a", "one"), "ab") as handle:  # changed after it was hashed
        handle.write(b"more")
    path = bs.finalize_set(partial, str(root), "success")
    manifest = bs.load_manifest(path)
    assert manifest["status"] == "failed" and not os.path.lexists(root / "latest")
    problems = "\n".join(manifest["problems"])
    assert "file 'a/two': in the set but neither in the manifest nor in SHA256SUMS" in problems
    assert "file 'a/one': 5 bytes on disk, the manifest says 1" in problems
    assert "run the backup again" in problems
    # The failed set's own SHA256SUMS still matches its (rewritten) manifest.
    assert bs.read_sums(path)["backup_manifest.json"] == bs.hash_file(os.path.join(path, "backup_manifest.json"))[0]


def test_finalize_refuses_reserved_verification_names(tmp_path):
    root = tmp_path / "backups"
    partial = _partial_with_files(root, {"verification.json": b"{}"})
    bs.write_manifest(partial, {"status": "success", "components": {}})
    path = bs.finalize_set(partial, str(root), "success")
    manifest = bs.load_manifest(path)
    assert manifest["status"] == "failed"
    assert any("reserved for the verification records" in p for p in manifest["problems"])


# --------------------------------------------------------------------------------------------
# paths read back from a set are confined to it


def test_confined_path(tmp_path):
    path = make_set(tmp_path, T0)
    assert bs.confined_path(path, "postgres/app.dump.zst") == os.path.join(path, "postgres/app.dump.zst")
    assert bs.confined_path(path, b"postgres/app.dump.zst") == os.path.join(path, "postgres/app.dump.zst")
    os.symlink("../postgres", os.path.join(path, "mariadb", "inside"))
    assert bs.confined_path(path, "mariadb/inside/app.dump.zst")  # a link that stays inside is fine
    os.symlink("/etc", os.path.join(path, "mariadb", "etc"))
    os.symlink("../../..", os.path.join(path, "mariadb", "up"))
    for bad, why in [("/etc/passwd", "is absolute"), ("../llmops_20260131_020000/x", "'..' component"),
                     ("mariadb/../../x", "'..' component"), ("a\0b", "NUL"), ("", "non-empty"),
                     ("./mariadb", "not canonical"), ("mariadb//full", "not canonical"),
                     ("mariadb/etc/passwd", "outside the set"), ("mariadb/up", "outside the set"),
                     ("mariadb/etc", "outside the set"), (None, "non-empty")]:
        with pytest.raises(bs.BackupSetError, match=why) as info:
            bs.confined_path(path, bad)
        assert repr(bad) in str(info.value)
    # A recorded link may point anywhere: with follow=False only its folder must be inside.
    assert bs.confined_path(path, "mariadb/etc", follow=False) == os.path.join(path, "mariadb/etc")
    with pytest.raises(bs.BackupSetError, match="outside the set"):
        bs.confined_path(path, "mariadb/up/x", follow=False)


def _rewrite_sums(path, extra_lines):
    sums = bs.read_sums(path)
    sums.update(extra_lines)
    with open(os.path.join(path, "SHA256SUMS"), "wb") as handle:
        handle.write(bs.format_sums(sums))


def test_verify_refuses_entries_that_escape(tmp_path):
    path = make_set(tmp_path, T0)
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"secret")
    digest = bs.hash_file(str(outside))[0]
    _rewrite_sums(path, {"../outside.txt": digest})
    result = bs.verify_set(path)
    assert not result["ok"] and any("'../outside.txt'" in e and "'..' component" in e for e in result["errors"])
    assert result["checked"] == 3  # the escaping entry was not read
    path2 = make_set(tmp_path, T0 + datetime.timedelta(days=1))
    os.symlink(str(tmp_path), os.path.join(path2, "mariadb", "escape"))
    _rewrite_sums(path2, {"mariadb/escape/outside.txt": digest})
    result = bs.verify_set(path2)
    assert not result["ok"] and any("outside the set" in e for e in result["errors"]), result


def test_load_manifest_refuses_absolute_and_escaping_paths(tmp_path):
    for bad in ["/etc/passwd", "../x", "a/../../x", "a\0b", ""]:
        path = make_set(tmp_path, T0)
        mpath = os.path.join(path, "backup_manifest.json")
        manifest = json.load(open(mpath))
        manifest["components"]["mariadb"]["files"] = [{"path": bad, "sha256": "0" * 64, "size": 1}]
        open(mpath, "w").write(json.dumps(manifest))
        with pytest.raises(bs.BackupSetError, match="lists paths outside the set") as info:
            bs.load_manifest(path)
        assert "do not restore" in str(info.value)
        assert not bs.verify_set(path)["ok"]
        assert bs.list_sets(tmp_path) == []  # an untrusted manifest is not offered for restore or retention
        shutil.rmtree(path)
        os.unlink(tmp_path / "latest")
    path = make_set(tmp_path, T0)
    mpath = os.path.join(path, "backup_manifest.json")
    manifest = json.load(open(mpath))
    manifest["links"] = [{"path": "/srv/x", "target": "y"}]
    open(mpath, "w").write(json.dumps(manifest))
    with pytest.raises(bs.BackupSetError, match="links: path '/srv/x' is absolute"):
        bs.load_manifest(path)


def test_write_manifest_refuses_non_relative_files(tmp_path):
    partial = _partial_with_files(tmp_path, {"a": b"1"})
    with pytest.raises(bs.BackupSetError, match="is absolute"):
        bs.write_manifest(partial, {"status": "success"}, files=[{"path": os.path.join(partial, "a"), "size": 1,
                                                                   "sha256": "0" * 64}])


# --------------------------------------------------------------------------------------------
# verification records


def test_verification_records(tmp_path):
    old = make_set(tmp_path, T0)
    path = make_set(tmp_path, T0 + datetime.timedelta(days=1))
    failed = make_set(tmp_path, T0 + datetime.timedelta(days=2), status="failed")
    assert bs.read_verification(path) == {"format": "llmops-verification", "schema_version": 1,
                                          "set_id": "llmops_20260201_020000", "records": []}
    assert bs.newest_restore_tested(tmp_path) is None
    item = bs.list_sets(tmp_path)[1]
    assert item["verification"] == {"restore_tested": False, "last_method": None, "last_result": None,
                                    "last_time": None, "last_details": None, "restore_tested_time": None,
                                    "error": None}
    manifest_before = open(os.path.join(path, "backup_manifest.json"), "rb").read()

    doc = bs.record_verification(path, {"method": "checksums", "result": "passed", "by": "test",
                                        "time": "2026-02-02T00:00:00Z"})
    assert doc["records"][0]["components"] == {} and doc["records"][0]["details"] == ""
    assert bs.record_verification(old, {"method": "restore", "result": "passed", "time": "2026-02-05T00:00:00Z"})
    assert bs.newest_restore_tested(tmp_path) == ("llmops_20260131_020000", "2026-02-05T00:00:00Z")
    bs.record_verification(path, {"method": "restore", "result": "passed", "components": {"mariadb": "passed"},
                                  "by": "drill", "details": "report.json", "time": "2026-02-03T00:00:00Z"})
    assert bs.newest_restore_tested(tmp_path) == ("llmops_20260201_020000", "2026-02-03T00:00:00Z")
    bs.record_verification(failed, {"method": "restore", "result": "passed"})
    assert bs.newest_restore_tested(tmp_path)[0] == "llmops_20260201_020000"  # failed sets never count

    doc = bs.read_verification(path)
    assert [r["method"] for r in doc["records"]] == ["checksums", "restore"]
    assert doc["records"][1] == {"time": "2026-02-03T00:00:00Z", "method": "restore", "result": "passed",
                                 "components": {"mariadb": "passed"}, "by": "drill", "details": "report.json"}
    assert stat.S_IMODE(os.stat(os.path.join(path, "verification.json")).st_mode) == 0o600
    check = subprocess.run(["sha256sum", "-c", "--strict", "verification.json.sha256"], cwd=path,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    # The set itself is unchanged and still verifies: the two files are not part of it.
    assert open(os.path.join(path, "backup_manifest.json"), "rb").read() == manifest_before
    assert bs.verify_set(path)["ok"]
    assert bs.hash_set_files(path) == bs.load_manifest(path)["files"]
    check = subprocess.run(["sha256sum", "-c", "--strict", "SHA256SUMS"], cwd=path, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    # ... but nothing else new is ignored.
    open(os.path.join(path, "verification.json.bak"), "w").write("x")
    assert bs.verify_set(path)["extra"] == ["verification.json.bak"]
    os.unlink(os.path.join(path, "verification.json.bak"))

    summary = {s["id"]: s["verification"] for s in bs.list_sets(tmp_path)}["llmops_20260201_020000"]
    assert summary["restore_tested"] and summary["restore_tested_time"] == "2026-02-03T00:00:00Z"
    assert summary["last_method"] == "restore" and summary["last_result"] == "passed"
    assert summary["last_details"] == "report.json"
    # A newer failed restore test withdraws the status; the last checksum pass does not restore it.
    bs.record_verification(path, {"method": "restore", "result": "failed", "components": {"redis": "failed"}})
    bs.record_verification(path, {"method": "checksums", "result": "passed"})
    summary = bs.verification_state(path)
    assert not summary["restore_tested"] and summary["restore_tested_time"] is None
    assert summary["last_method"] == "checksums" and summary["last_result"] == "passed"
    assert bs.newest_restore_tested(tmp_path) == ("llmops_20260131_020000", "2026-02-05T00:00:00Z")
    # Through the latest symlink: the set id is the real folder's.
    bs.record_verification(tmp_path / "latest", {"method": "checksums", "result": "passed"})
    assert bs.read_verification(tmp_path / "latest")["set_id"] == "llmops_20260201_020000"


def test_verification_dry_run_and_bad_input(tmp_path):
    path = make_set(tmp_path, T0)
    doc = bs.record_verification(path, {"method": "restore", "result": "passed"}, dry_run=True)
    assert len(doc["records"]) == 1 and not os.path.exists(os.path.join(path, "verification.json"))
    for record, match in [({"method": "eyeball", "result": "passed"}, "method must be one of"),
                          ({"method": "restore", "result": "ok"}, "result must be one of"),
                          ({"method": "restore", "result": "passed", "components": {"m": 1}}, "components must map"),
                          ({"method": "restore", "result": "passed", "time": "yesterday"}, "not an ISO 8601"),
                          ({"method": "restore", "result": "passed", "extra": 1}, "unknown verification record"),
                          ("passed", "is a mapping")]:
        with pytest.raises(bs.BackupSetError, match=match):
            bs.record_verification(path, record)
    partial = bs.begin_set(tmp_path, "other", T0)
    with pytest.raises(bs.BackupSetError, match="not a finalized backup set"):
        bs.record_verification(partial, {"method": "restore", "result": "passed"})
    assert not os.path.exists(os.path.join(path, "verification.json"))


def test_verification_tampering_is_detected(tmp_path):
    path = make_set(tmp_path, T0)
    bs.record_verification(path, {"method": "restore", "result": "failed"})
    doc_path = os.path.join(path, "verification.json")
    text = open(doc_path).read()
    open(doc_path, "w").write(text.replace('"failed"', '"passed"'))
    with pytest.raises(bs.BackupSetError, match="does not match verification.json.sha256"):
        bs.read_verification(path)
    with pytest.raises(bs.BackupSetError, match="does not match"):  # nothing is appended to tampered records
        bs.record_verification(path, {"method": "restore", "result": "passed"})
    state = bs.list_sets(tmp_path)[0]["verification"]
    assert not state["restore_tested"] and "does not match" in state["error"]
    assert bs.newest_restore_tested(tmp_path) is None
    assert bs.verify_set(path)["ok"]  # the set's artefacts are still what SHA256SUMS says
    os.unlink(os.path.join(path, "verification.json.sha256"))
    with pytest.raises(bs.BackupSetError, match="cannot read the verification records"):
        bs.read_verification(path)
    # Records copied from another set are refused.
    other = make_set(tmp_path, T0 + datetime.timedelta(days=1))
    bs.record_verification(other, {"method": "restore", "result": "passed"})
    for name in ("verification.json", "verification.json.sha256"):
        shutil.copy(os.path.join(other, name), os.path.join(path, name))
    with pytest.raises(bs.BackupSetError, match="copied from another set"):
        bs.read_verification(path)


def test_json_safe():
    assert bs.json_safe({"a\udcff": ["b\udcfe", ("ok 한",)], "n": 1, "x": None}) == \
        {"a\\xff": ["b\\xfe", ["ok 한"]], "n": 1, "x": None}
    assert bs.json_safe("lone \ud800") == "lone \\ud800"


def test_finalize_keeps_the_owner_record_until_the_rename(tmp_path):
    """The run's bookkeeping is not hashed, not listed and not in the set; it stays in the partial until just
    before the rename, so that a run killed in finalize still names its owner."""
    partial = bs.begin_set(tmp_path, "llmops", T0, owner={"pid": 1, "pid_start": 1})
    with open(os.path.join(partial, bs.COMPONENTS_DIR, "redis.json"), "w") as handle:
        handle.write("{}")
    os.makedirs(os.path.join(partial, "redis"))
    with open(os.path.join(partial, "redis", "dump.rdb.zst"), "wb") as handle:
        handle.write(b"r" * 10)
    files = bs.hash_set_files(partial)
    assert [f["path"] for f in files] == ["redis/dump.rdb.zst"]
    bs.write_manifest(partial, {"status": "success", "components": {}}, files=files)
    assert os.path.exists(os.path.join(partial, bs.OWNER))  # still there once manifest and SHA256SUMS exist
    assert bs.sums_problems(partial, bs.load_manifest(partial)) == []
    final = bs.finalize_set(partial, tmp_path, "success")
    assert sorted(os.listdir(final)) == ["SHA256SUMS", "backup_manifest.json", "redis"]
    assert bs.verify_set(final)["ok"] and bs.load_manifest(final)["status"] == "success"
    # a stray owner record in a finished set is not silently accepted
    shutil.copy(os.path.join(final, "SHA256SUMS"), os.path.join(final, bs.OWNER))
    assert bs.verify_set(final)["extra"] == [bs.OWNER]


def test_storage_full_metric_and_critical_alert(tmp_path):
    from ansible.module_utils import llmops_report as report

    disk = {"total": 1000, "used": 10, "free": 990, "free_pct": 99.0}
    full = {"root": "/backup", "set_id": "llmops_20260131_020000", "free_bytes": 990, "total_bytes": 1000,
            "needed_bytes": 3 * 1024 ** 3, "msg": "the backup volume /backup ran out of space"}
    failed = {"id": "llmops_20260131_020000", "status": "failed", "ended": "2026-01-31T02:10:00Z", "removed": True,
              "storage_full": full, "problems": [full["msg"]],
              "components": {"uploads": {"status": "failed", "error": "No space left on device"}}}
    state = report.update_state(tmp_path, failed)
    text = report.metrics(state, disk)
    assert "llmops_backup_storage_full 1.0" in text and f"llmops_backup_storage_needed_bytes {3.0 * 1024 ** 3}" in text
    found = report.alerts(failed, state, disk)
    critical = [a for a in found if a["severity"] == "critical" and "is FULL" in a["summary"]]
    assert len(critical) == 1
    assert "/backup" in critical[0]["summary"] and "3.0 GiB" in critical[0]["summary"]
    assert "run the backup again" in critical[0]["summary"]
    # a restore test does not clear it; the next run that gets past finalize does
    state = report.update_state(tmp_path, verification={"set_id": "x", "set_ended": "2026-01-30T02:00:00Z",
                                                        "result": "passed"})
    assert "llmops_backup_storage_full 1.0" in report.metrics(state, disk)
    ok = {"id": "llmops_20260201_020000", "status": "success", "ended": "2026-02-01T02:10:00Z",
          "components": {"uploads": {"status": "success", "files": []}}}
    state = report.update_state(tmp_path, ok)
    assert "llmops_backup_storage_full 0.0" in report.metrics(state, disk)
    assert "llmops_backup_storage_needed_bytes 0.0" in report.metrics(state, disk)
    assert not [a for a in report.alerts(ok, state, disk) if "FULL" in a["summary"]]


# --------------------------------------------------------------------------------------------
# issue 13 item 10 (c) and item 4: MariaDB chain entries are untrusted; a missing or damaged incremental refuses


def _chain_set(root, when, chain, key=None, data=b"m" * 100):
    """A finalized set whose mariadb component is a full (chain []) or an incremental on ``chain``."""
    from ansible.module_utils import llmops_backupset as abs_

    partial = abs_.begin_set(str(root), "llmops", when)
    art = os.path.join(partial, "mariadb", "mariadb.mbstream.zst")
    os.makedirs(os.path.dirname(art))
    with open(art, "wb") as handle:
        handle.write(data)
    entries = abs_.hash_set_files(partial)
    set_id = os.path.basename(partial)[1:-len(".partial")]
    comp = {"type": "mariadb", "status": "success", "backup_type": "incremental" if chain else "full",
            "chain": list(chain), "parent": chain[-1] if chain else None, "files": entries}
    abs_.write_manifest(partial, {"id": set_id, "status": "success", "started": abs_.isoformat(when),
                                  "ended": abs_.isoformat(when), "components": {"mariadb": comp}}, files=entries)
    return abs_.finalize_set(partial, str(root), "success", auth_key=key)


def _chain(tmp_path):
    root = tmp_path / "b"
    full = _chain_set(root, T0, [])
    inc1 = _chain_set(root, T0 + datetime.timedelta(hours=6), [os.path.basename(full)])
    inc2 = _chain_set(root, T0 + datetime.timedelta(hours=12), [os.path.basename(full), os.path.basename(inc1)])
    return root, full, inc1, inc2


def _set_chain(set_path, chain):
    """Rewrite the mariadb chain of a set's manifest (and its SHA256SUMS to match: a consistent forgery)."""
    path = os.path.join(set_path, bs.MANIFEST)
    with open(path, encoding="utf-8") as handle:
        manifest = json.load(handle)
    manifest["components"]["mariadb"]["chain"] = chain
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle)
    sums = {e["path"]: e["sha256"] for e in manifest["files"]}
    sums[bs.MANIFEST] = bs.hash_file(path)[0]
    with open(os.path.join(set_path, bs.SUMS), "wb") as handle:
        handle.write(bs.format_sums(sums))


def test_restore_chain_applies_full_then_incrementals_in_order(tmp_path):
    from ansible.module_utils.llmops_mariadb import restore_chain

    root, full, inc1, inc2 = _chain(tmp_path)
    chain = restore_chain(str(root), inc2)
    assert [c[0] for c in chain] == [os.path.basename(p) for p in (full, inc1, inc2)]
    assert chain[0][1] == os.path.join(full, "mariadb", "mariadb.mbstream.zst")


@pytest.mark.parametrize("entry, why", [
    ("../../etc", "not the id of another set"), ("/etc", "not the id of another set"),
    ("llmops_20260131_020000/../../x", "not the id of another set"), ("", "not the id of another set"),
    (None, "not the id of another set"), ("llmops_20260131_140000", "not the id of another set"),  # itself
])
def test_restore_chain_refuses_entries_that_are_not_set_ids(tmp_path, entry, why):
    from ansible.module_utils.llmops_mariadb import MariaDBError, restore_chain

    root, full, inc1, inc2 = _chain(tmp_path)
    assert os.path.basename(inc2) == "llmops_20260131_140000"
    _set_chain(inc2, [os.path.basename(full), entry])
    with pytest.raises(MariaDBError, match=why) as info:
        restore_chain(str(root), inc2)
    assert "do not restore from this set" in str(info.value)


def test_restore_chain_refuses_a_chain_set_that_resolves_outside_the_root(tmp_path):
    from ansible.module_utils.llmops_mariadb import MariaDBError, restore_chain

    root, full, inc1, inc2 = _chain(tmp_path)
    outside = tmp_path / "elsewhere"
    shutil.copytree(inc1, outside / "x")
    shutil.rmtree(inc1)
    os.symlink(outside / "x", inc1)  # a set id whose folder is a link out of the backup root
    with pytest.raises(MariaDBError, match="outside the backup root"):
        restore_chain(str(root), inc2)
    _set_chain(inc2, "not a list")
    with pytest.raises(MariaDBError, match="not a list"):
        restore_chain(str(root), inc2)


def test_restore_chain_refuses_an_artefact_link_that_escapes_its_set(tmp_path):
    from ansible.module_utils.llmops_mariadb import MariaDBError, restore_chain

    root, full, inc1, inc2 = _chain(tmp_path)
    art = os.path.join(inc1, "mariadb", "mariadb.mbstream.zst")
    os.unlink(art)
    os.symlink("/etc/passwd", art)
    with pytest.raises(MariaDBError, match="outside the set"):
        restore_chain(str(root), inc2)


def test_a_missing_or_damaged_incremental_refuses_the_restore_plan(tmp_path):
    from ansible.module_utils.llmops_restore import plan_restore

    root, full, inc1, inc2 = _chain(tmp_path)
    assert plan_restore(str(root), os.path.basename(inc2))["ok"]
    art = os.path.join(inc1, "mariadb", "mariadb.mbstream.zst")
    with open(art, "r+b") as handle:  # one flipped byte in the middle incremental
        handle.seek(50)
        handle.write(b"X")
    damaged = plan_restore(str(root), os.path.basename(inc2))
    assert not damaged["ok"]
    assert any(os.path.basename(inc1) in p and "checksum mismatch mariadb/mariadb.mbstream.zst" in p
               for p in damaged["problems"]), damaged["problems"]
    shutil.rmtree(inc1)
    missing = plan_restore(str(root), os.path.basename(inc2))
    assert not missing["ok"]
    assert any(f"needs set {os.path.basename(inc1)}, which is missing" in p for p in missing["problems"])
    assert missing["mariadb_chain"] == []


def test_mariadb_chain_partial_restores_to_the_last_complete_point_and_says_so(tmp_path):
    from ansible.module_utils.llmops_mariadb import restore_chain
    from ansible.module_utils.llmops_restore import plan_restore

    root, full, inc1, inc2 = _chain(tmp_path)
    inc3 = _chain_set(root, T0 + datetime.timedelta(hours=18),
                      [os.path.basename(p) for p in (full, inc1, inc2)])
    ids = [os.path.basename(p) for p in (full, inc1, inc2, inc3)]
    whole = plan_restore(str(root), ids[3], mariadb_chain_partial=True)
    assert whole["ok"] and whole["mariadb_chain"] == ids and whole["mariadb_chain_partial"] is None
    with open(os.path.join(inc2, "mariadb", "mariadb.mbstream.zst"), "r+b") as handle:
        handle.write(b"X")  # the second incremental is damaged
    assert not plan_restore(str(root), ids[3])["ok"]  # refused unless told
    plan = plan_restore(str(root), ids[3], mariadb_chain_partial=True)
    assert plan["ok"], plan["problems"]
    assert plan["mariadb_chain"] == ids[:2]
    info = plan["mariadb_chain_partial"]
    assert info["restores_to"] == ids[1] and info["instead_of"] == ids[3] and info["skipped"] == ids[2:]
    assert "checksum mismatch" in info["why"]
    assert any(w.startswith(f"MARIADB IS RESTORED ONLY TO {ids[1]}") for w in plan["warnings"])
    assert "full and 1 incremental(s)" in plan["steps"][0]
    timed = plan_restore(str(root), ids[3], mariadb_chain_partial=True, target_time="2026-01-31T23:00:00Z")
    assert any("cannot be combined with target_time" in p for p in timed["problems"])
    shutil.rmtree(inc1)  # a missing set: the chain stops before it
    missing = plan_restore(str(root), ids[3], mariadb_chain_partial=True)
    assert missing["ok"] and missing["mariadb_chain"] == ids[:1]
    assert "is missing or unreadable" in missing["mariadb_chain_partial"]["why"]
    assert [c[0] for c in restore_chain(str(root), inc3, until=ids[0])] == ids[:1]
    with open(os.path.join(full, "mariadb", "mariadb.mbstream.zst"), "r+b") as handle:
        handle.write(b"X")  # a broken full refuses whatever the option says
    assert not plan_restore(str(root), ids[3], mariadb_chain_partial=True)["ok"]


def test_mariadb_chain_partial_leaves_out_the_sets_own_broken_incremental(tmp_path):
    """The last incremental (the set restored) has lost its MariaDB artefact: refused unless told; with
    mariadb_chain_partial the chain stops at the incremental before it. Other damage of the set still refuses."""
    from ansible.module_utils.llmops_restore import plan_restore

    root, full, inc1, inc2 = _chain(tmp_path)
    ids = [os.path.basename(p) for p in (full, inc1, inc2)]
    os.unlink(os.path.join(inc2, "mariadb", "mariadb.mbstream.zst"))
    refused = plan_restore(str(root), ids[2])
    assert not refused["ok"]
    assert any(ids[2] in p and "missing mariadb/mariadb.mbstream.zst" in p for p in refused["problems"])
    plan = plan_restore(str(root), ids[2], mariadb_chain_partial=True)
    assert plan["ok"], plan["problems"]
    assert plan["mariadb_chain"] == ids[:2]
    info = plan["mariadb_chain_partial"]
    assert info["restores_to"] == ids[1] and info["skipped"] == ids[2:]
    assert "missing mariadb/mariadb.mbstream.zst" in info["why"]
    with open(os.path.join(inc2, "backup_manifest.json"), "a", encoding="utf-8") as handle:
        handle.write(" ")  # the manifest itself damaged too: not only the MariaDB artefact
    assert not plan_restore(str(root), ids[2], mariadb_chain_partial=True)["ok"]


def test_finalize_reads_no_file_a_hard_link_proves_known_and_trusts_no_record_that_does_not_fit(tmp_path, monkeypatch):
    """A file of a new set that is a hard link to a file of an earlier set (rsync --link-dest) takes that set's
    recorded sha256; new files, and a linked file whose record does not fit it (another size), are read."""
    root = str(tmp_path / "b")
    first = make_set(root, datetime.datetime(2026, 1, 1, 2, tzinfo=datetime.UTC),
                     files={"u/same.txt": b"same", "u/odd size.txt": b"recorded wrong", "other.zst": b"x"})
    manifest_path = os.path.join(first, bs.MANIFEST)
    manifest = json.loads(open(manifest_path).read())
    next(e for e in manifest["files"] if e["path"] == "u/odd size.txt")["size"] += 1
    open(manifest_path, "w").write(json.dumps(manifest))
    known = bs.hashes_by_inode(first, "u")
    assert len(known) == 1  # other.zst is not below u/, and odd size.txt's record does not fit it

    partial = bs.begin_set(root, "llmops", datetime.datetime(2026, 1, 2, 2, tzinfo=datetime.UTC))
    os.makedirs(os.path.join(partial, "u"))
    for name in ("same.txt", "odd size.txt"):
        os.link(os.path.join(first, "u", name), os.path.join(partial, "u", name))
    with open(os.path.join(partial, "u", "new.txt"), "wb") as handle:
        handle.write(b"new")
    read = []
    real = bs.hash_file
    monkeypatch.setattr(bs, "hash_file", lambda path, *a, **k: read.append(os.path.basename(path)) or real(path))
    entries = bs.hash_set_files(partial, known=known)
    assert sorted(read) == ["new.txt", "odd size.txt"]
    assert {e["path"]: e["sha256"] for e in entries} == {
        rel: real(os.path.join(partial, rel))[0] for rel in ("u/same.txt", "u/odd size.txt", "u/new.txt")}
    assert bs.hashes_by_inode(str(tmp_path / "no such set")) == {}


def test_a_brief_manifest_reports_the_same_sizes_without_its_file_lists(tmp_path):
    from ansible.module_utils import llmops_report as report

    manifest = {"id": "llmops_20260201_020000", "status": "success", "ended": "2026-02-01T02:10:00Z",
                "files": [{"path": "u/a", "size": 5, "sha256": "0" * 64}] * 3,
                "totals": {"files": 3, "bytes": 15},
                "components": {"uploads": {"status": "success", "duration_s": 1.5,
                                           "files": [{"path": "u/a", "size": 5}, {"path": "u/b", "size": 7}]},
                               "redis": {"status": "success", "files": []}}}
    brief = bs.brief_manifest(manifest)
    assert "files" not in brief and brief["totals"] == manifest["totals"]
    assert brief["components"]["uploads"]["files_count"] == 2 and "files" not in brief["components"]["uploads"]
    assert manifest["components"]["uploads"]["files"]  # the manifest itself is left as it was
    assert report.summary_rows(brief) == report.summary_rows(manifest)
    assert report.summary_rows(brief)[1]["bytes"] == 12
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    assert report.update_state(tmp_path / "a", brief)["components"] == \
        report.update_state(tmp_path / "b", manifest)["components"]
