"""The Qdrant STAND-IN (compose/images/qdrant-standin/standin.py) driven over real HTTP by the bundle's
client (module_utils/llmops_qdrant.py), with every exchange validated against Qdrant's OpenAPI 1.19.0
document by openapi-core.  No mocks: the stand-in runs as a subprocess on a free 127.0.0.1 port."""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import io
import json
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
