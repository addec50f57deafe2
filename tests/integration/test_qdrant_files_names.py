"""Hostile names and concurrent writers, end to end through the real modules, against the lab.

Qdrant collections with any name Qdrant allows (Korean, emoji, spaces, quotes, backticks, ``;``,
``$(...)``, a leading dash, a name long enough to be hash-capped by ``encode_name``) holding
hostile payload keys and values; uploads, models and configs trees whose file and folder names hold
Korean, emoji, spaces, quotes, backticks, backslashes, ``;``, ``$(touch /tmp/pwned)``, tabs,
newlines and leading dashes, with nested folders, symlinks, empty files and empty folders. They are
backed up into a set with ``qdrant_backup`` / ``files_backup`` / ``backup_set``, checked to lie
inside it (and nothing to have run), restored with ``qdrant_restore`` / ``files_restore`` and
compared exactly. A second pair of tests keeps a writer busy every 50 ms during the backup and
checks that the recorded fingerprint is the artefact's, that the restore verifies against it, and
that everything acknowledged before the backup started was kept.

Every collection is ``t_qn_<random>...`` / ``-<random>...`` (dropped at the end); the trees live in
``tmp_path``. ``LLMOPS_TEST_QDRANT_URL`` points the Qdrant half at another server with the lab's
API key (a real Qdrant, or a stand-in run from this checkout).
"""

from __future__ import annotations

import json
import os
import random
import secrets
import stat
import time
import uuid
from pathlib import Path

import pytest
from ansible.module_utils.llmops_backupset import encode_name, load_manifest
from ansible.module_utils.llmops_files import tree_hash
from ansible.module_utils.llmops_qdrant import QdrantClient, QdrantError
from ansible.module_utils.llmops_qdrant_backup import canonical_vector, snapshot_fingerprint

from tests.conftest import make_set, run_module
from tests.writer import Writer

pytestmark = [pytest.mark.lab, pytest.mark.slow]

DIM = 8
PWNED = Path("/tmp/pwned")  # noqa: S108 - the file a shell injection in these names would create
# File and folder names: everything but "/" and NUL.
NAMES = ["한국어 파일.txt", "emoji 🚀🧠.bin", "with  two spaces", "it's \"quoted\"", "back`tick`", "back\\slash",
         "semi;colon", "tab\there", "new\nline", "-leading-dash", "--rf", "~tilde", "*glob?[x]", "percent %41 %",
         "trailing space ", "...dots", "&amp|pipe>redir<", "#hash", "\\#012 not an rsync escape", "arrow -> x"]
DIRS = ["폴더 📁", "-dash dir", "new\nline dir", "quote ' dir"]
PAYLOAD = {"": "empty key", "a.b[0]": "dotted path", "$(touch /tmp/pwned)": "`touch /tmp/pwned`",
           "한국어 키": "값 🚀", "new\nline\ttab": "back\\slash \"double\" 'single'", "nul": "a\u0000b",
           "-dash": {"nested;": [1, 2.5, -0.0, None, True, {"deep 🧠": "$(id)"}]}, "big": 2 ** 53 + 1}


def pwn_paths(tok: str) -> list[str]:
    """Relative paths (nested folders) that spell shell commands which would create /tmp/pwned files."""
    return ["$(touch /tmp/pwned)", "`touch /tmp/pwned`", ";touch /tmp/pwned;", f"$(touch /tmp/pwned-{tok})"]


def collection_names(tok: str) -> list[str]:
    """As far as Qdrant allows: 1..255 characters, none of <>:"/\\|?*, NUL or control characters."""
    return [f"t_qn_{tok} 한국어 컬렉션 🚀", f"-{tok} leading dash",
            f"t_qn_{tok} it's `touch pwned` ; $(cd;cd ..;cd ..;cd tmp;touch pwned)",
            f"t_qn_{tok} 100% #hash &amp .. ~!@^()[]{{}}=+,", f"t_qn_{tok} " + "가" * 60]


# ------------------------------------------------------------------------------------------ helpers


def write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)


def hostile_tree(root: Path, tok: str, file_modes=(0o600, 0o640, 0o644, 0o755), dir_mode=0o750) -> Path:
    """Every hostile name as a file at the top and in nested folders, the shell-command paths, symlinks (to a
    file, to a folder, dangling, absolute), empty files and an empty folder."""
    root.mkdir(parents=True)
    for i, name in enumerate(NAMES):
        write(root / name, f"{name} #{i}\n".encode() * (i + 1), file_modes[i % len(file_modes)])
    for d, folder in enumerate(DIRS):
        for i, name in enumerate(NAMES[d::3]):
            write(root / folder / DIRS[(d + 1) % len(DIRS)] / name, os.urandom(64 + i), file_modes[i % len(file_modes)])
        (root / folder).chmod(dir_mode if d % 2 else 0o755)
    for rel in pwn_paths(tok):
        write(root / rel, b"names are data\n", 0o644)
    write(root / "empty file", b"", 0o644)
    write(root / DIRS[0] / "empty", b"", file_modes[0])
    (root / "empty dir 🕳").mkdir()
    os.symlink(NAMES[0], root / "link → 한국어")
    os.symlink(DIRS[0], root / "dirlink 📁")
    os.symlink("no such\nfile", root / "dangling\nlink")
    os.symlink("/etc/hostname", root / "-abs link")
    return root


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        for sub in sorted(path.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            sub.rmdir() if sub.is_dir() and not sub.is_symlink() else sub.unlink()
        path.rmdir()
    else:
        path.unlink()


def describe(root: Path, modes: bool = True) -> dict:
    """``{relative path: (kind, mode, content or link target)}`` of a tree, by Python's own walk."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            mode = stat.S_IMODE(st.st_mode) if modes else None
            if stat.S_ISLNK(st.st_mode):
                out[os.path.relpath(full, root)] = ("l", None, os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                out[os.path.relpath(full, root)] = ("d", mode, None)
            else:
                out[os.path.relpath(full, root)] = ("f", mode, Path(full).read_bytes())
    return out


def check_inside(set_path: Path) -> dict:
    """Every file the manifest lists is a plain relative path that resolves inside the set; returns the manifest."""
    manifest = load_manifest(set_path)
    real = os.path.realpath(set_path)
    for item in manifest["files"]:
        rel = item["path"]
        assert not os.path.isabs(rel) and ".." not in rel.split(os.sep), rel
        assert os.path.realpath(set_path / rel).startswith(real + os.sep), rel
        assert (set_path / rel).is_file() and not (set_path / rel).is_symlink(), rel
    return manifest


def nothing_ran(tok: str, pwned_before) -> None:
    assert not Path(f"/tmp/pwned-{tok}").exists()  # noqa: S108
    after = PWNED.stat().st_mtime_ns if PWNED.exists() else None
    assert after == pwned_before, f"{PWNED} was created or touched"


def pwned_state():
    return PWNED.stat().st_mtime_ns if PWNED.exists() else None


def points_of(client, name) -> dict:
    """``{id: (payload, float32 vector)}``: vectors at the precision Qdrant stores them."""
    return {json.dumps(p["id"]): (p["payload"], canonical_vector(p["vector"])) for p in client.scroll_all(name)}


def restore_qdrant(url: str, set_path: Path, staging: Path, names: list[str]) -> dict:
    common = {"set_path": str(set_path), "staging": str(staging), "url": url, "api_key": "{{ qdrant_api_key }}",
              "collections": names}
    for step in ("stage", "load"):
        result = run_module("qdrant_restore", dict(common, step=step))
        assert not result.get("failed"), result.get("msg")
    verified = run_module("qdrant_restore", dict(common, step="verify"))
    assert not verified.get("failed"), verified.get("msg")
    return verified


def restore_files(mode: str, set_path: Path, staging: Path, **args) -> dict:
    result = run_module("files_restore", {"mode": mode, "set_path": str(set_path), "staging": str(staging), **args})
    assert not result.get("failed"), result.get("msg")
    return result


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture
def qdrant_url(lab) -> str:
    return os.environ.get("LLMOPS_TEST_QDRANT_URL") or f"http://127.0.0.1:{lab.ports['qdrant']}"


@pytest.fixture
def qdrant(lab, qdrant_url):
    client = QdrantClient(qdrant_url, api_key=lab.secret("qdrant_api_key"), timeout=60)
    created: list[str] = []
    client.created = created
    yield client
    for name in created:
        try:
            client.delete_collection(name)
        except QdrantError:
            pass


def hostile_points(rng: random.Random, n: int, start: int = 1) -> list[dict]:
    points = []
    for i in range(n):
        pid = start + i if i % 3 else str(uuid.UUID(int=rng.getrandbits(128)))
        payload = dict(PAYLOAD, n=i, text=NAMES[i % len(NAMES)], score=rng.random())
        points.append({"id": pid, "vector": [rng.uniform(-1, 1) for _ in range(DIM)], "payload": payload})
    return points


# ------------------------------------------------------------------------------------------ hostile names


def require_unicode_snapshot_names(lab, qdrant, qdrant_url, tok, folder: Path):
    """Fail fast, and say why, on a stand-in that cannot send a snapshot whose name is not latin-1 (before the
    RFC 6266 Content-Disposition fix it answered with a broken response, and downloads hung until the timeout)."""
    probe = f"t_qn_{tok} 한"
    qdrant.created.append(probe)
    qdrant.create_collection(probe, DIM, "Cosine")
    snap = qdrant.create_snapshot(probe)
    quick = QdrantClient(qdrant_url, api_key=lab.secret("qdrant_api_key"), timeout=10, retries=0)
    try:
        quick.download_snapshot(probe, snap["name"], str(folder / "probe.snapshot"))
    except QdrantError as exc:
        pytest.fail(f"{qdrant_url} cannot send snapshots of collections with non-latin-1 names ({exc}): the Qdrant "
                    "stand-in image needs rebuilding (scripts/images.sh) and its lab container recreating")
    finally:
        qdrant.delete_snapshot(probe, snap["name"])


def set_folder(root: Path, components: dict) -> Path:
    """The folder of a finalized set holding ``components`` (tests/conftest.make_set)."""
    return Path(make_set(root, components, "names")["path"])


def test_hostile_names_back_up_and_restore_exactly(lab, qdrant, qdrant_url, tmp_path):
    tok = secrets.token_hex(4)
    require_unicode_snapshot_names(lab, qdrant, qdrant_url, tok, tmp_path)
    pwned_before = pwned_state()
    rng = random.Random(tok)
    names = collection_names(tok)
    for name in names:
        qdrant.created.append(name)
        qdrant.create_collection(name, DIM, "Cosine")
        qdrant.upsert_points(name, hostile_points(rng, 60))
    live = tmp_path / "live"
    uploads = hostile_tree(live / "uploads", tok)
    models = live / "models"
    for model in ["모델 🚀", "-dash model;$(id)"]:
        for version in ['v1 "q"', "v2\nnl"]:
            hostile_tree(models / model / version, tok, file_modes=(0o644,), dir_mode=0o755)
        os.symlink("v2\nnl", models / model / "current")
    models.chmod(0o755)
    for folder in models.iterdir():
        folder.chmod(0o755)
    etc = hostile_tree(live / "etc" / f"설정 'conf' $(touch {tok})", tok)
    write(etc / ".gitignore", b"*\n", 0o644)  # must hide nothing from the history
    write(etc / ".gitattributes", b"* text eol=crlf\n", 0o644)  # must not change a byte
    write(etc / "lf.txt", b"a\nb\n", 0o644)
    write(etc / "crlf.txt", b"a\r\nb\r\n", 0o600)
    single = live / "etc" / "-single ;$(id) `x` 'conf'.yaml"
    write(single, b"key: value\n", 0o640)
    before = {"qdrant": {n: points_of(qdrant, n) for n in names}, "uploads": describe(uploads),
              "models": describe(models), "etc": describe(etc), "single": describe(single.parent)[single.name]}

    root = tmp_path / "backups"
    set_path = set_folder(root, {
        "qdrant": ("qdrant_backup", {"url": qdrant_url, "api_key": "{{ qdrant_api_key }}", "collections": names}),
        "uploads": ("files_backup", {"mode": "tree", "src": str(uploads), "backup_root": str(root)}),
        "models": ("files_backup", {"mode": "models", "src": str(models), "backup_root": str(root)}),
        "configs": ("files_backup", {"mode": "configs", "paths": [str(etc), str(single)], "backup_root": str(root)}),
    })
    nothing_ran(tok, pwned_before)
    manifest = check_inside(set_path)
    comps = manifest["components"]
    verified_set = run_module("backup_set", {"command": "verify", "root": str(root), "path": set_path.name})
    assert not verified_set.get("failed"), verified_set.get("msg")  # SHA256SUMS copes with every name

    # Qdrant: one encoded file per collection, the mapping in the entry, the fingerprint read from the file
    qcomp = comps["qdrant"]
    assert sorted(p.name for p in (set_path / "qdrant").iterdir()) == sorted(
        encode_name(n) + ".snapshot" for n in names)
    for name in names:
        item = qcomp["collections"][name]
        assert item["file"] == encode_name(name) + ".snapshot" and len(item["file"]) <= 170
        assert item["fingerprint_source"] in ("snapshot", "server-unchanged")
        from_file = snapshot_fingerprint(str(set_path / "qdrant" / item["file"]), name)
        if from_file is not None:
            assert qcomp["fingerprint"][name] == from_file
        assert qcomp["fingerprint"][name]["points_count"] == 60
    assert "~" in qcomp["collections"][names[-1]]["file"]  # long: cut and suffixed with a hash

    # Files: the set keeps the real names; fingerprints are the copies'
    set_tree = set_path / comps["uploads"]["tree_dir"]
    assert describe(set_tree) == before["uploads"]
    assert comps["uploads"]["fingerprint"]["tree_sha256"] == tree_hash(set_tree) == tree_hash(uploads)
    for model, desc in comps["models"]["models"].items():
        assert desc["links"] == {"current": "v2\nnl"}
        for version, ver in desc["versions"].items():
            assert tree_hash(root / ver["store"], modes=False) == ver["sha256"]
            assert describe(root / ver["store"], modes=False) == describe(models / model / version, modes=False)
    assert set(comps["configs"]["fingerprint"]["paths"]) == {str(etc), str(single)}
    assert set(comps["configs"]["config_files"]) >= {
        str(etc / rel).lstrip("/") for rel, item in before["etc"].items() if item[0] != "d"}

    # damage everything, then restore with the real restore modules
    for name in names[:2]:
        qdrant.delete_collection(name)
    qdrant.upsert_points(names[2], [{"id": 1, "vector": [0.5] * DIM, "payload": {"damaged": True}},
                                    {"id": 999_999, "vector": [0.5] * DIM, "payload": {}}])
    for folder in (uploads, etc):
        for entry in sorted(folder.iterdir())[::2]:
            remove(entry)
        write(folder / "stray\nfile", b"not in the backup", 0o644)
    remove(models / "모델 🚀" / 'v1 "q"')
    (models / "-dash model;$(id)" / "v2\nnl" / NAMES[1]).write_bytes(b"corrupted weights")
    os.unlink(models / "-dash model;$(id)" / "current")
    os.symlink('v1 "q"', models / "-dash model;$(id)" / "current")
    single.write_bytes(b"broken: [\n")
    single.chmod(0o666)
    staging = tmp_path / "staging"
    verified = restore_qdrant(qdrant_url, set_path, staging / "qdrant", names)
    assert verified["differences"] == {} and verified["unverified"] == []
    restore_files("tree", set_path, staging / "uploads", path=str(uploads))
    restore_files("models", set_path, staging / "models", path=str(models), backup_root=str(root))
    configs = restore_files("configs", set_path, staging / "configs", backup_root=str(root))
    assert {item["checked_against"] for item in configs["restored"]} == {"fingerprint"}
    nothing_ran(tok, pwned_before)

    for name in names:
        assert points_of(qdrant, name) == before["qdrant"][name], name
    assert describe(uploads) == before["uploads"]
    assert {k: v for k, v in describe(models).items() if ".pre-restore" not in k} == before["models"]
    assert describe(etc) == before["etc"]
    assert describe(single.parent)[single.name] == before["single"]


# ------------------------------------------------------------------------------------------ concurrent writers


def test_qdrant_writer_during_backup(lab, qdrant, qdrant_url, tmp_path):
    tok = secrets.token_hex(4)
    name = f"t_qn_{tok} writer"
    qdrant.created.append(name)
    qdrant.create_collection(name, DIM, "Cosine")
    rng = random.Random(tok)
    qdrant.upsert_points(name, [{"id": i, "vector": [rng.uniform(-1, 1) for _ in range(DIM)],
                                 "payload": dict(PAYLOAD, n=i)} for i in range(1, 501)])
    writer_client = QdrantClient(qdrant_url, api_key=lab.secret("qdrant_api_key"), timeout=60)
    writer = Writer(lambda n: writer_client.upsert_points(
        name, [{"id": 1000 + n, "vector": [((n * 7 + k) % 13) - 6.0 for k in range(DIM)],
                "payload": {"writer": n, "text": NAMES[n % len(NAMES)]}}]))
    writer.start()
    time.sleep(0.5)
    backup_point = time.time()
    root = tmp_path / "backups"
    try:
        set_path = set_folder(root, {"qdrant": ("qdrant_backup", {"url": qdrant_url, "api_key": "{{ qdrant_api_key }}",
                                                                "collections": [name]})})
    finally:
        writer.stop()
    assert not writer.errors, writer.errors[:3]
    acked = writer.before(backup_point)
    assert len(writer.done) > len(acked) > 0  # the writer kept writing during the backup
    item = check_inside(set_path)["components"]["qdrant"]["collections"][name]
    snapshot = set_path / "qdrant" / item["file"]
    recorded = load_manifest(set_path)["components"]["qdrant"]["fingerprint"][name]
    from_file = snapshot_fingerprint(str(snapshot), name)
    if from_file is None:  # a real Qdrant: the fingerprint is the server's, kept only when it did not move
        assert item["fingerprint_source"] in ("server-unchanged", "unverifiable")
    else:
        assert item["fingerprint_source"] == "snapshot" and recorded == from_file
    # restore (the writer is stopped; its later points go) and verify against the artefact
    verified = restore_qdrant(qdrant_url, set_path, tmp_path / "staging", [name])
    assert verified["differences"] == {}
    if item["fingerprint_source"] != "unverifiable":
        assert verified["unverified"] == []
    ids = {p["id"] for p in qdrant.scroll_all(name, with_payload=False, with_vector=False)}
    written = sorted(i - 1000 for i in ids if i >= 1000)
    assert set(range(1, 501)) <= ids
    assert {1000 + n for n in acked} <= ids  # acknowledged before the backup started: kept
    assert written == list(range(len(written)))  # a point in time: no holes in the writer's sequence
    assert len(written) == recorded.get("points_count", len(ids)) - 500


def test_uploads_writer_during_backup(tmp_path):
    tok = secrets.token_hex(4)
    pwned_before = pwned_state()
    uploads = hostile_tree(tmp_path / "live" / "uploads", tok)
    content = {}

    def step(n):
        name = f"{n:05d} {NAMES[n % len(NAMES)]}"
        data = os.urandom(2048) + name.encode()
        path = uploads / DIRS[n % len(DIRS)] / name
        with open(path, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        content[n] = (path.relative_to(uploads), data)

    writer = Writer(step)
    writer.start()
    time.sleep(0.5)
    backup_point = time.time()
    root = tmp_path / "backups"
    try:
        set_path = set_folder(root, {"uploads": ("files_backup", {"mode": "tree", "src": str(uploads),
                                                                "backup_root": str(root)})})
    finally:
        writer.stop()
    assert not writer.errors, writer.errors[:3]
    acked = writer.before(backup_point)
    assert len(writer.done) > len(acked) > 0
    comp = check_inside(set_path)["components"]["uploads"]
    set_tree = set_path / comp["tree_dir"]
    assert comp["fingerprint"]["tree_sha256"] == tree_hash(set_tree)  # the copy's, not the moving source's
    assert tree_hash(uploads) != comp["fingerprint"]["tree_sha256"]  # the source moved on
    for n in acked:
        rel, data = content[n]
        assert (set_tree / rel).read_bytes() == data, rel
    kept = describe(set_tree)
    restore_files("tree", set_path, tmp_path / "staging", path=str(uploads))
    assert tree_hash(uploads) == comp["fingerprint"]["tree_sha256"]
    assert describe(uploads) == kept
    nothing_ran(tok, pwned_before)
