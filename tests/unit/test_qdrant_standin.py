"""The Qdrant STAND-IN (compose/images/qdrant-standin/standin.py) driven over real HTTP by the bundle's
client (module_utils/llmops_qdrant.py), with every exchange validated against Qdrant's OpenAPI 1.19.0
document by openapi-core.  No mocks: the stand-in runs as a subprocess on a free 127.0.0.1 port."""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import io
import json
import os
import random
import tarfile
import urllib.request
import uuid
from functools import lru_cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from module_utils.llmops_qdrant import QdrantClient, QdrantError
from tests.unit.qdrant_fixtures import (
    STANDIN,
    Recorder,
    StandinProcess,
    free_port,
    openapi_spec,
    validate_exchange,
)

API_KEY = "test-key-Zq8vW3-never-log-me"
DIM = 8

# Every (method, path template) of the Qdrant API the bundle uses; the lifecycle must exercise all of them.
REQUIRED_OPERATIONS = {
    ("GET", "/"),
    ("GET", "/healthz"),
    ("GET", "/livez"),
    ("GET", "/readyz"),
    ("GET", "/collections"),
    ("GET", "/collections/{collection_name}"),
    ("PUT", "/collections/{collection_name}"),
    ("DELETE", "/collections/{collection_name}"),
    ("GET", "/collections/{collection_name}/exists"),
    ("PUT", "/collections/{collection_name}/points"),
    ("POST", "/collections/{collection_name}/points"),
    ("POST", "/collections/{collection_name}/points/count"),
    ("POST", "/collections/{collection_name}/points/scroll"),
    ("POST", "/collections/{collection_name}/snapshots"),
    ("GET", "/collections/{collection_name}/snapshots"),
    ("GET", "/collections/{collection_name}/snapshots/{snapshot_name}"),
    ("DELETE", "/collections/{collection_name}/snapshots/{snapshot_name}"),
    ("PUT", "/collections/{collection_name}/snapshots/recover"),
    ("POST", "/collections/{collection_name}/snapshots/upload"),
    ("POST", "/snapshots"),
    ("GET", "/snapshots"),
    ("GET", "/snapshots/{snapshot_name}"),
    ("DELETE", "/snapshots/{snapshot_name}"),
}


@pytest.fixture
def standin(tmp_path):
    proc = StandinProcess(tmp_path, API_KEY)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def recorded(standin):
    recorder = Recorder()
    return standin, standin.client(hook=recorder), recorder


def make_points(n: int, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)  # noqa: S311 - deterministic test data
    words = ["Grüße", "日本語のテキスト", "emoji 🚀✨", "Ελληνικά", "naïve café", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
             "tab\tnew\nline", '"quoted"']
    points = []
    for i in range(n):
        pid = str(uuid.UUID(int=rng.getrandbits(128), version=4)) if i % 2 else i * 3
        points.append({
            "id": pid,
            "vector": [round(rng.uniform(-1, 1), 6) for _ in range(DIM)],
            "payload": {"text": f"{rng.choice(words)} #{i}", "n": i, "tags": [rng.choice(words)], "nested": {"k": i}},
        })
    return points


def canonical(points) -> dict:
    return {str(p["id"]): (p["vector"], p["payload"]) for p in points}


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def validate_all(standin: StandinProcess, recorder: Recorder) -> set:
    covered = set()
    for ex in recorder.exchanges:
        covered.add(validate_exchange(standin.url, ex))
    return covered


# --------------------------------------------------------------------------- lifecycle + contract


def test_lifecycle_and_openapi_contract(recorded, tmp_path):
    standin, client, recorder = recorded
    info = client.health()
    assert "qdrant - vector search engine" in info["title"] and "stand-in" in info["title"].lower()
    assert info["version"] == "1.19.0" and info["healthz"] == "healthz check passed"
    assert client.probe("livez") == "livez check passed"
    assert client.probe("readyz") == "readyz check passed"

    assert client.create_collection("docs", DIM, "Dot") is True
    assert client.collection_exists("docs") is True
    assert client.collection_exists("nope") is False
    points = make_points(1000)
    for start in range(0, len(points), 250):
        result = client.upsert_points("docs", points[start:start + 250])
        assert result["status"] == "completed"
    assert client.count("docs") == 1000
    coll = client.get_collection("docs")
    assert coll["status"] == "green" and coll["points_count"] == 1000
    assert coll["config"]["params"]["vectors"] == {"size": DIM, "distance": "Dot"}
    assert client.list_collections() == ["docs"]

    scrolled = list(client.scroll_all("docs", page=256))
    assert len(scrolled) == 1000
    assert canonical(scrolled) == canonical(points)
    ints = [p["id"] for p in scrolled if isinstance(p["id"], int)]
    assert ints == sorted(ints) and all(isinstance(p["id"], int) for p in scrolled[: len(ints)])
    got = client.retrieve("docs", [points[0]["id"], points[1]["id"], 999999])
    assert canonical(got) == canonical(points[:2])

    # collection snapshot: create -> list -> download -> checksum
    snap = client.create_snapshot("docs")
    assert snap["name"].startswith("docs-") and snap["name"].endswith(".snapshot")
    assert snap["size"] > 0 and len(snap["checksum"]) == 64
    assert [s["name"] for s in client.list_snapshots("docs")] == [snap["name"]]
    checksum_file = standin.snapshots / "docs" / (snap["name"] + ".checksum")
    assert checksum_file.read_text().strip() == snap["checksum"]
    dest = tmp_path / "dl" / snap["name"]
    dest.parent.mkdir()
    progress = []
    digest = client.download_snapshot("docs", snap["name"], str(dest), chunk=4096,
                                      progress=lambda done, total: progress.append((done, total)))
    assert digest == snap["checksum"] == sha256(dest)
    assert progress[-1] == (snap["size"], snap["size"]) and len(progress) > 1
    with tarfile.open(dest) as tar:
        assert {"STANDIN.txt", "config.json", "points.json"} <= set(tar.getnames())
        assert b"NOT a real Qdrant snapshot" in tar.extractfile("STANDIN.txt").read()
        assert canonical(json.loads(tar.extractfile("points.json").read())) == canonical(points)

    # upload into a new collection (multipart, priority=snapshot, checksum verified)
    assert client.upload_snapshot("restored", str(dest), priority="snapshot", checksum=digest) is True
    assert canonical(client.scroll_all("restored")) == canonical(points)

    # recover from a file:// location inside the snapshots directory (replaces the collection)
    client.upsert_points("docs", [{"id": 1, "vector": [0.0] * DIM, "payload": {"changed": True}}])
    assert client.count("docs") == 1001
    location = (standin.snapshots / "docs" / snap["name"]).as_uri()
    assert client.recover_snapshot("docs", location, priority="no_sync", checksum=digest) is True
    assert client.count("docs") == 1000 and canonical(client.scroll_all("docs")) == canonical(points)

    # checksum mismatch -> 400 (recover and upload)
    with pytest.raises(QdrantError) as err:
        client.recover_snapshot("docs", location, checksum="0" * 64)
    assert err.value.status == 400 and "checksum" in err.value.error.lower()
    with pytest.raises(QdrantError) as err:
        client.upload_snapshot("other", str(dest), checksum="f" * 64)
    assert err.value.status == 400
    assert client.collection_exists("other") is False

    # error responses are contract-checked too
    with pytest.raises(QdrantError) as err:
        client.get_collection("missing")
    assert err.value.status == 404 and "doesn't exist" in err.value.error
    with pytest.raises(QdrantError) as err:
        client.create_collection("docs", DIM, "Dot")
    assert err.value.status == 409
    with pytest.raises(QdrantError) as err:
        client.upsert_points("docs", [{"id": 5, "vector": [1.0, 2.0], "payload": {}}])
    assert err.value.status == 400 and "dimension" in err.value.error

    assert client.delete_snapshot("docs", snap["name"]) is True
    assert client.list_snapshots("docs") == [] and not checksum_file.exists()
    with pytest.raises(QdrantError) as err:
        client.download_snapshot("docs", snap["name"], str(tmp_path / "gone"))
    assert err.value.status == 404 and not (tmp_path / "gone").exists()

    # full-storage snapshot
    full = client.create_full_snapshot()
    assert full["name"].startswith("full-snapshot-") and full["name"].endswith(".snapshot")
    assert [s["name"] for s in client.list_full_snapshots()] == [full["name"]]
    full_dest = tmp_path / "full.snapshot"
    assert client.download_full_snapshot(full["name"], str(full_dest)) == full["checksum"] == sha256(full_dest)
    with tarfile.open(full_dest) as tar:
        names = set(tar.getnames())
    assert {"STANDIN.txt", "collections/docs/points.json", "collections/restored/points.json"} <= names
    assert client.delete_full_snapshot(full["name"]) is True
    assert client.list_full_snapshots() == []

    assert client.delete_collection("restored") is True
    assert client.delete_collection("restored") is False
    assert client.list_collections() == ["docs"]

    # ---- contract: every request and every response against Qdrant's OpenAPI document
    covered = validate_all(standin, recorder)
    missing = REQUIRED_OPERATIONS - covered
    assert not missing, f"operations not exercised/validated: {sorted(missing)}"
    assert {ex["status"] for ex in recorder.exchanges} >= {200, 400, 404, 409}
    for ex in recorder.exchanges:
        assert API_KEY not in json.dumps(ex, ensure_ascii=False)


def test_validator_rejects_malformed_responses(recorded):
    """The same validation must fail on bodies that break the schema (proves it can fail)."""
    from openapi_core.validation.response.exceptions import InvalidData

    standin, client, recorder = recorded
    client.create_collection("c", DIM, "Cosine")
    client.get_collection("c")
    client.create_snapshot("c")
    client.count("c")
    good = {(ex["method"], ex["path"]): ex for ex in recorder.exchanges}
    for ex in recorder.exchanges:
        validate_exchange(standin.url, ex)

    broken = []
    ex = copy.deepcopy(good[("GET", "/collections/c")])
    del ex["response"]["result"]["config"]  # required by CollectionInfo
    broken.append(ex)
    ex = copy.deepcopy(good[("GET", "/collections/c")])
    ex["response"]["result"]["status"] = "purple"  # not a CollectionStatus
    broken.append(ex)
    ex = copy.deepcopy(good[("POST", "/collections/c/snapshots")])
    del ex["response"]["result"]["size"]  # required by SnapshotDescription
    broken.append(ex)
    ex = copy.deepcopy(good[("POST", "/collections/c/points/count")])
    ex["response"]["result"]["count"] = -1  # uint
    broken.append(ex)
    for ex in broken:
        with pytest.raises(InvalidData):
            validate_exchange(standin.url, ex)


def test_restart_keeps_data(standin):
    client = standin.client()
    points = make_points(50, seed=3)
    client.create_collection("persist", DIM, "Euclid")
    client.upsert_points("persist", points)
    snap = client.create_snapshot("persist")
    standin.restart()
    client = standin.client()
    assert client.count("persist") == 50
    assert canonical(client.scroll_all("persist", page=7)) == canonical(points)
    assert [s["name"] for s in client.list_snapshots("persist")] == [snap["name"]]
    assert client.get_collection("persist")["config"]["params"]["vectors"]["distance"] == "Euclid"
    second = client.create_snapshot("persist")
    assert second["name"] != snap["name"]
    # two snapshots in the same second get distinct names, both listed
    assert len(client.list_snapshots("persist")) == 2


def test_auth_401_and_key_never_in_errors(standin, tmp_path):
    recorder = Recorder()
    anonymous = QdrantClient(standin.url, retries=0, timeout=5, request_hook=recorder)
    assert anonymous.probe("healthz") == "healthz check passed"  # health endpoints need no key
    assert anonymous.probe("readyz") == "readyz check passed"
    with pytest.raises(QdrantError) as err:
        anonymous.list_collections()
    assert err.value.status == 401
    wrong = QdrantClient(standin.url, api_key="wrong-" + API_KEY, retries=0, request_hook=recorder)
    with pytest.raises(QdrantError) as err:
        wrong.get_collection("x")
    assert err.value.status == 401
    assert API_KEY not in str(err.value) and API_KEY not in repr(err.value) and "wrong-" not in str(err.value)
    big = tmp_path / "big.snapshot"
    big.write_bytes(b"\0" * (3 << 20))
    with pytest.raises(QdrantError) as err:
        anonymous.upload_snapshot("x", str(big))  # answered 401, not a connection reset mid-upload
    assert err.value.status == 401
    for ex in recorder.exchanges:
        validate_exchange(standin.url, ex)
    # Bearer token works too
    req = urllib.request.Request(  # noqa: S310 - fixed http://127.0.0.1 URL
        standin.url + "/collections", headers={"Authorization": f"Bearer {API_KEY}"}
    )
    with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310
        assert json.loads(resp.read())["status"] == "ok"

    client = standin.client()
    assert API_KEY not in repr(client)
    for call in (lambda: client.get_collection("absent"), lambda: client.delete_snapshot("absent", "x.snapshot"),
                 lambda: client.recover_snapshot("absent", "file:///etc/passwd")):
        with pytest.raises(QdrantError) as err:
            call()
        assert API_KEY not in str(err.value) and API_KEY not in repr(err.value.args)
    # the server never logs the key
    assert API_KEY not in standin.log_path.read_text(errors="replace")


def test_recover_rejects_paths_outside_snapshots_and_foreign_archives(standin, tmp_path):
    client = standin.client()
    outside = tmp_path / "outside.snapshot"
    with tarfile.open(outside, "w") as tar:
        data = b"not qdrant"
        info = tarfile.TarInfo("segments/x")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(QdrantError) as err:
        client.recover_snapshot("x", outside.as_uri())
    assert err.value.status == 400 and "inside the snapshots directory" in err.value.error
    with pytest.raises(QdrantError) as err:
        client.upload_snapshot("x", str(outside))
    assert err.value.status == 400 and "stand-in" in err.value.error
    with pytest.raises(QdrantError) as err:
        client.upload_snapshot("x", str(outside), priority="bogus")
    assert err.value.status == 400
    assert client.collection_exists("x") is False


# Collection names as far as Qdrant allows them (1..255 characters; not <>:"/\\|?*, NUL or control characters):
# Korean, emoji, spaces, quotes, backticks, shell syntax, a leading dash, percent signs, dots.
HOSTILE_COLLECTIONS = ["한국어 컬렉션 🚀", "-leading dash", "it's `rm -rf` ; $(cd;cd ..;cd ..;cd tmp;touch pwned)",
                       "100% #hash &amp ..", "emoji 🧠🔥 " + "가" * 40]
HOSTILE_PAYLOAD = {"": "empty key", "a.b[0]": "dotted", "$(touch /tmp/pwned)": "`id`", "한국어": "값 🚀",
                   "new\nline\ttab": "back\\slash \"quoted\" 'single'", "nul": "a\u0000b",
                   "nested": {"-dash": [1, 2.5, None, True, {"deep": "🧠"}]}}


def test_hostile_collection_names_and_payloads_round_trip(recorded, tmp_path):
    """Snapshots of collections with any name Qdrant allows download (RFC 6266 Content-Disposition: HTTP headers
    are latin-1), and their fingerprint read from the snapshot file equals the live one, before and after an
    upload; names Qdrant refuses are refused with 422."""
    from ansible.module_utils.llmops_qdrant_backup import fingerprint_collection, snapshot_fingerprint

    standin, client, recorder = recorded
    for name in HOSTILE_COLLECTIONS:
        client.create_collection(name, DIM, "Cosine")
        client.upsert_points(name, [dict(p, payload=dict(p["payload"], **HOSTILE_PAYLOAD)) for p in make_points(30)])
        snap = client.create_snapshot(name)
        dest = tmp_path / uuid.uuid4().hex
        assert client.download_snapshot(name, snap["name"], str(dest)) == snap["checksum"]
        live = fingerprint_collection(client, name)
        assert live["counted"] == live["points_count"] == 30
        from_file = snapshot_fingerprint(str(dest), name)
        assert from_file == {k: live[k] for k in from_file}
        copy_name = name + " (copy)"
        assert client.upload_snapshot(copy_name, str(dest), checksum=snap["checksum"]) is True
        copied = fingerprint_collection(client, copy_name)
        assert {k: copied[k] for k in from_file} == from_file
        assert canonical(client.scroll_all(copy_name)) == canonical(client.scroll_all(name))
        client.delete_snapshot(name, snap["name"])
    for bad in ["tab\tname", "new\nline", "slash/name", 'double "quote"', "back\\slash", ".hidden", "x" * 256]:
        with pytest.raises(QdrantError) as err:
            client.create_collection(bad, DIM, "Cosine")
        assert err.value.status in (404, 422), bad
    expected = HOSTILE_COLLECTIONS + [n + " (copy)" for n in HOSTILE_COLLECTIONS]
    assert sorted(client.list_collections()) == sorted(expected)
    for ex in recorder.exchanges:
        validate_exchange(standin.url, ex)


class OpaqueSnapshots:
    """The stand-in's client, but every collection snapshot it downloads is an opaque archive (segments, as a real
    Qdrant snapshot holds), and ``writer(name)`` runs while a snapshot is taken: what the backup sees of a real
    server, which it cannot read the snapshots of."""

    def __init__(self, client, writer=None):
        self._client = client
        self.writer = writer

    def __getattr__(self, name):
        return getattr(self._client, name)

    def create_snapshot(self, name):
        snap = self._client.create_snapshot(name)
        if self.writer:
            self.writer(name)
        return dict(snap, checksum=None, size=None)

    def download_snapshot(self, name, snapshot, dest_path, **kwargs):
        with tarfile.open(dest_path, "w") as tar:
            data = os.urandom(256)
            info = tarfile.TarInfo(f"0/segments/{uuid.uuid4()}.tar")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        return hashlib.sha256(open(dest_path, "rb").read()).hexdigest()


def test_backup_fingerprint_describes_the_snapshot(standin, tmp_path):
    """The recorded fingerprint is the snapshot's: read from the file when it can be (stand-in), else the server's
    when it did not change around the snapshot, else flagged unverifiable; a restore verifies against exactly that."""
    from ansible.module_utils.llmops_qdrant_backup import backup, fingerprint_collection, snapshot_fingerprint
    from ansible.module_utils.llmops_qdrant_restore import set_collections, verify_collections

    client = standin.client()
    names = ["quiet", "busy 🚀", "once"]
    for name in names:
        client.create_collection(name, DIM, "Cosine")
        client.upsert_points(name, make_points(40))
    writes = {"n": 10_000}
    times = {"once": 1, "busy 🚀": 99}

    def write(name):
        if times.get(name, 0) > 0:
            times[name] -= 1
            writes["n"] += 1
            client.upsert_points(name, [{"id": writes["n"], "vector": [0.5] * DIM, "payload": {"late": True}}])

    readable = backup(client, str(tmp_path / "a"), collections=names)
    for name in names:
        item = readable["collections"][name]
        assert item["fingerprint_source"] == "snapshot" and item["snapshot_attempts"] == 1
        from_file = snapshot_fingerprint(str(tmp_path / "a" / item["file"]), name)
        assert readable["fingerprint"][name] == from_file
        assert from_file["points_count"] == 40 and from_file == {k: v for k, v in item.items() if k in from_file}
    assert readable["collections"]["busy 🚀"]["file"] == "busy%20%F0%9F%9A%80.snapshot"
    assert readable["fingerprint_stable"] is True

    opaque = backup(OpaqueSnapshots(client, write), str(tmp_path / "b"), collections=names)
    quiet, once, busy = (opaque["collections"][n] for n in ("quiet", "once", "busy 🚀"))
    assert quiet["fingerprint_source"] == "server-unchanged" and quiet["snapshot_attempts"] == 1
    assert once["fingerprint_source"] == "server-unchanged" and once["snapshot_attempts"] == 2
    assert busy["fingerprint_source"] == "unverifiable" and busy["snapshot_attempts"] == 3
    assert opaque["fingerprint"]["busy 🚀"] == {"vectors": {"size": DIM, "distance": "Cosine"}}
    assert opaque["fingerprint_stable"] is False
    for name in ("quiet", "once"):
        live = fingerprint_collection(client, name)
        assert opaque["fingerprint"][name] == {k: live[k] for k in opaque["fingerprint"][name]}
    assert any("cannot be read here" in w for w in opaque["warnings"])
    assert any("busy 🚀" in w and "unverifiable" in w for w in opaque["warnings"])

    # what a restore verifies against: the manifest's, or nothing for the unverifiable one (said, never passed)
    entry = dict(opaque, files=[dict(f, path=os.path.relpath(f["path"], tmp_path)) for f in opaque["files"]])
    result = verify_collections(client, set_collections(str(tmp_path), entry))
    assert result["differences"] == {} and result["unverified"] == ["busy 🚀"]
    client.upsert_points("quiet", [{"id": 0, "vector": [0.25] * DIM, "payload": {"changed": True}}])  # same count
    result = verify_collections(client, set_collections(str(tmp_path), entry))
    assert list(result["differences"]) == ["quiet"] and "points_sha256" in result["differences"]["quiet"][0]


def test_restore_treats_manifest_paths_as_untrusted(tmp_path):
    from ansible.module_utils.llmops_qdrant_restore import QdrantRestoreError, set_collections

    (tmp_path / "set" / "qdrant").mkdir(parents=True)
    (tmp_path / "outside.snapshot").write_bytes(b"x")
    os.symlink(tmp_path / "outside.snapshot", tmp_path / "set" / "qdrant" / "link.snapshot")
    good = {"file": "c.snapshot", "sha256": "0" * 64}
    cases = [
        ({"c": good}, [{"path": "../outside.snapshot", "sha256": "0" * 64}]),
        ({"c": good}, [{"path": str(tmp_path / "outside.snapshot"), "sha256": "0" * 64}]),
        ({"c": dict(good, file="../c.snapshot")}, [{"path": "qdrant/../c.snapshot", "sha256": "0" * 64}]),
        ({"c": dict(good, file="link.snapshot")}, [{"path": "qdrant/link.snapshot", "sha256": "0" * 64}]),
        ({"c": dict(good, file="c")}, [{"path": "qdrant/c", "sha256": "0" * 64}]),
    ]
    for collections, files in cases:
        with pytest.raises(QdrantRestoreError):
            set_collections(str(tmp_path / "set"), {"collections": collections, "files": files})
    ok = set_collections(str(tmp_path / "set"), {"collections": {"c": good},
                                                 "files": [{"path": "qdrant/c.snapshot", "sha256": "0" * 64}]})
    assert ok["c"]["path"] == str(tmp_path / "set" / "qdrant" / "c.snapshot") and ok["c"]["source"] == "legacy"


def test_client_retries_connection_errors_with_backoff():
    client = QdrantClient(f"http://127.0.0.1:{free_port()}", api_key=API_KEY, retries=3, backoff=0.5, timeout=2)
    sleeps = []
    client._sleep = sleeps.append
    with pytest.raises(QdrantError) as err:
        client.list_collections()
    assert sleeps == [0.5, 1.0, 2.0]
    assert err.value.status is None and API_KEY not in str(err.value)


def test_client_does_not_retry_4xx(standin):
    client = standin.client(retries=3, backoff=10)
    sleeps = []
    client._sleep = sleeps.append
    with pytest.raises(QdrantError):
        client.get_collection("missing")
    assert sleeps == []


# --------------------------------------------------------------------------- streaming multipart parser


@lru_cache(maxsize=1)
def _load_standin_module():
    spec = importlib.util.spec_from_file_location("qdrant_standin_under_test", STANDIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _TrickleReader:
    """Hands out the body in small, awkward pieces to hit every buffer boundary."""

    def __init__(self, data: bytes, piece: int):
        self.stream = io.BytesIO(data)
        self.piece = piece

    def read(self, size=None):
        return self.stream.read(min(self.piece, size or self.piece))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.binary(max_size=3000), piece=st.integers(min_value=1, max_value=700),
       before=st.booleans())
def test_multipart_parser_streams_exact_bytes(tmp_path, payload, piece, before):
    standin = _load_standin_module()
    boundary = "b-" + uuid.uuid4().hex
    other = (f'--{boundary}\r\nContent-Disposition: form-data; name="other"\r\n\r\n'
             f"--{boundary[:-1]} not a boundary\r\n").encode()
    part = (f'--{boundary}\r\nContent-Disposition: form-data; name="snapshot"; filename="a.snapshot"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode() + payload + b"\r\n"
    body = (other + part if before else part + other) + f"--{boundary}--\r\n".encode()
    reader = standin.BodyReader(_TrickleReader(body, piece), len(body))
    path = standin.parse_multipart_to_file(reader, boundary.encode(), "snapshot", str(tmp_path))
    with open(path, "rb") as fh:
        assert fh.read() == payload


def test_openapi_document_loads():
    assert openapi_spec() is not None


# --------------------------------------------------------------------------- the API key from a mounted config file


def standin_module():
    spec = importlib.util.spec_from_file_location("standin_for_config", STANDIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_api_key_comes_from_config_local_yaml_as_qdrant_reads_it(tmp_path):
    """roles/stack mounts <stack_root>/ai/secrets/qdrant.yaml at /qdrant/config/local.yaml (the key is then not in
    the container's environment, which docker inspect shows): the stand-in reads the same file from the same path."""
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "local.yaml").write_text(f"# rendered\nservice:\n  api_key: {json.dumps(API_KEY)}\n")
    proc = StandinProcess(tmp_path, None)  # no QDRANT__SERVICE__API_KEY in its environment
    proc.start()
    try:
        for what in ("environ", "cmdline"):
            with open(f"/proc/{proc.proc.pid}/{what}", "rb") as handle:
                assert API_KEY.encode() not in handle.read()
        with pytest.raises(QdrantError) as err:
            QdrantClient(proc.url, retries=0, timeout=5).list_collections()
        assert err.value.status == 401
        with pytest.raises(QdrantError) as err:
            QdrantClient(proc.url, api_key="wrong-key-0123456789", retries=0, timeout=5).list_collections()
        assert err.value.status == 401
        assert QdrantClient(proc.url, api_key=API_KEY, retries=0, timeout=5).list_collections() == []
        log = proc.log_path.read_text()
        assert "api_key=set" in log and "config/local.yaml" in log and API_KEY not in log
    finally:
        proc.stop()


def test_config_files_merge_like_qdrant_and_a_bad_one_refuses_to_start(tmp_path):
    mod = standin_module()
    config = tmp_path / "config"
    config.mkdir()
    (config / "config.yaml").write_text("service:\n  host: 127.0.0.2\n  http_port: 6333\nstorage:\n"
                                        "  storage_path: ./storage  # comment\n")
    (config / "production.yaml").write_text("service:\n  api_key: 'from production, it''s quoted'\n")
    (config / "local.yaml").write_text('service:\n  api_key: "from local \\"escaped\\" \\\\ $x #y"\n')
    settings, read = mod.load_settings(env={"RUN_MODE": "production"}, workdir=str(tmp_path))
    assert [os.path.basename(p) for p in read] == ["config.yaml", "production.yaml", "local.yaml"]
    assert settings["service"] == {"host": "127.0.0.2", "http_port": 6333, "api_key": 'from local "escaped" \\ $x #y'}
    assert settings["storage"] == {"storage_path": "./storage"}
    # the environment outranks the files, as QDRANT__SERVICE__API_KEY does in Qdrant
    settings, _ = mod.load_settings(env={"RUN_MODE": "production", "QDRANT__SERVICE__API_KEY": "from-env-0123"},
                                    workdir=str(tmp_path))
    assert settings["service"]["api_key"] == "from-env-0123"
    (config / "local.yaml").unlink()
    settings, _ = mod.load_settings(env={"RUN_MODE": "production"}, workdir=str(tmp_path))
    assert settings["service"]["api_key"] == "from production, it's quoted"
    for bad in ["service:\n  api_key: [a, b]\n", "service:\n\tapi_key: x\n", "- a\n- b\n",
                "service:\n  api_key: x\n  api_key: y\n", 'service:\n  api_key: "\\x41"\n']:
        with pytest.raises(mod.ConfigError):
            mod.load_config_text(bad, "local.yaml")
    # a configuration the stand-in cannot read: it exits, it never serves without the key it was given
    (config / "local.yaml").write_text("service:\n  api_key: &anchor x\n")
    proc = StandinProcess(tmp_path, None)
    with pytest.raises(RuntimeError, match="cannot read the configuration"):
        proc.start()
    proc.stop()
