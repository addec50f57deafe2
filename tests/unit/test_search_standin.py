"""The Elasticsearch STAND-IN (compose/images/elasticsearch-standin/standin.py) driven over real HTTP by the bundle's
client (module_utils/llmops_search.py), with every exchange validated against Elasticsearch's own OpenAPI document
(8.15 branch, tests/data/elasticsearch-openapi-8.15.json) by openapi-core (tests/unit/openapi_contract.py).
No mocks: the stand-in runs as a subprocess on a free 127.0.0.1 port with its data and path.repo in tmp folders."""

from __future__ import annotations

import base64
import copy
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from functools import lru_cache
from pathlib import Path

import pytest
from ansible.module_utils.llmops_search import SearchClient, SearchError

from tests.unit.openapi_contract import Contract

REPO_ROOT = Path(__file__).resolve().parents[2]
STANDIN = REPO_ROOT / "compose" / "images" / "elasticsearch-standin" / "standin.py"
OPENAPI_DOC = REPO_ROOT / "tests" / "data" / "elasticsearch-openapi-8.15.json"
PASSWORD = "Es-pw-9f3K-never-log-me"  # noqa: S105 - the test server's password

# Every (method, path template) of the Elasticsearch API the bundle sends; the lifecycle must exercise all of them.
REQUIRED_OPERATIONS = {
    ("GET", "/"),
    ("GET", "/_cluster/health"),
    ("GET", "/_cluster/health/{index}"),
    ("PUT", "/{index}"),
    ("GET", "/{index}"),
    ("DELETE", "/{index}"),
    ("POST", "/{index}/_close"),
    ("POST", "/{index}/_open"),
    ("PUT", "/{index}/_doc/{id}"),
    ("GET", "/{index}/_doc/{id}"),
    ("POST", "/_bulk"),
    ("POST", "/{index}/_refresh"),
    ("GET", "/{index}/_count"),
    ("POST", "/{index}/_search"),
    ("GET", "/_cat/indices"),
    ("PUT", "/_snapshot/{repository}"),
    ("GET", "/_snapshot/{repository}"),
    ("POST", "/_snapshot/{repository}/_verify"),
    ("DELETE", "/_snapshot/{repository}"),
    ("PUT", "/_snapshot/{repository}/{snapshot}"),
    ("GET", "/_snapshot/{repository}/{snapshot}"),
    ("DELETE", "/_snapshot/{repository}/{snapshot}"),
    ("POST", "/_snapshot/{repository}/{snapshot}/_restore"),
}

HOSTILE_IDS = ['quote"d\'id', "emoji 🚀✨", "$(touch /tmp/pwned)", "new\nline", "slash/and%2F", "한국어 문서 1",
               "back\\slash", " lead space", "tab\tid", "`cmd`", "a,b", "?q=1&x#frag"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Recorder:
    """request_hook for SearchClient: keeps every exchange."""

    def __init__(self):
        self.exchanges: list[dict] = []

    def __call__(self, method, path, query, headers, json_body, status, response):
        self.exchanges.append({"method": method, "path": path, "query": query, "headers": headers,
                               "json_body": json_body, "status": status, "response": response})


class EsStandin:
    """standin.py on 127.0.0.1:<free port>, path.data and path.repo under ``base``, the elastic password in a file
    named by ELASTIC_PASSWORD_FILE (as the official image takes it)."""

    def __init__(self, base: Path, password: str | None = PASSWORD, path_repo: bool = True):
        self.base = base
        self.data = base / "data"
        self.repo = base / "snapshots"
        self.repo.mkdir(parents=True, exist_ok=True)
        self.password = password
        self.path_repo = path_repo
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base / "standin.log"
        self.password_file = base / "elastic_password"
        self.proc: subprocess.Popen | None = None
        self._log = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ELASTIC_", "path.", "xpack."))}
        if self.password is not None:
            self.password_file.write_text(self.password + "\n")
            env["ELASTIC_PASSWORD_FILE"] = str(self.password_file)
        argv = [sys.executable, str(STANDIN), "--network.host", "127.0.0.1", "--http.port", str(self.port),
                "--path.data", str(self.data)]
        if self.path_repo:
            argv += ["--path.repo", str(self.repo)]
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=self._log, env=env, cwd=str(self.base))
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("stand-in exited early:\n" + self.log_path.read_text(errors="replace"))
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("stand-in did not start:\n" + self.log_path.read_text(errors="replace"))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None
        if self._log:
            self._log.close()
            self._log = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def client(self, hook=None, password=None, **kwargs) -> SearchClient:
        kwargs.setdefault("timeout", 10)
        kwargs.setdefault("retries", 0)
        return SearchClient(self.url, password=password or self.password, request_hook=hook, **kwargs)


@lru_cache(maxsize=1)
def contract() -> Contract:
    # Elasticsearch's document fails openapi-spec-validator (duplicate enum values in ML _cat parameters) and writes
    # its unions as overlapping oneOf with unmapped discriminators: see Contract.
    return Contract(OPENAPI_DOC, validate_spec=False, error_schema="_types:ErrorResponseBase", union_as_any_of=True)


def validate_all(standin: EsStandin, recorder: Recorder) -> set:
    return {contract().validate_exchange(standin.url, ex) for ex in recorder.exchanges}


@pytest.fixture
def standin(tmp_path):
    proc = EsStandin(tmp_path)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def seed(client: SearchClient, n: int = 40) -> dict:
    """Two indices with Korean text and hostile ids; returns ``{index: {id: source}}``."""
    client.create_index("docs_ko", settings={"number_of_shards": 1, "number_of_replicas": 0},
                        mappings={"properties": {"title": {"type": "text"}, "n": {"type": "integer"}}})
    docs = {"docs_ko": {}, "faq": {}}
    for i in range(n):
        doc_id = HOSTILE_IDS[i % len(HOSTILE_IDS)] + (f" #{i}" if i >= len(HOSTILE_IDS) else "")
        docs["docs_ko"][doc_id] = {"title": f"검색 엔진 백업 문서 {i}", "body": "한국어 텍스트와 emoji 🚀 \"따옴표\"",
                                   "n": i, "tags": ["운영", "복구"], "nested": {"k": i / 3}}
    for i in range(n // 4):
        docs["faq"][f"q-{i}"] = {"question": f"백업은 언제 하나요? {i}", "answer": "매일 02:00"}
    client.bulk([("index", index, doc_id, source) for index, items in docs.items() for doc_id, source in
                 items.items()])
    return docs


def all_docs(client: SearchClient, index: str, page: int = 7) -> dict:
    return dict(client.iter_docs(index, page=page))


# --------------------------------------------------------------------------- lifecycle + contract


def test_lifecycle_and_openapi_contract(standin, tmp_path):
    recorder = Recorder()
    client = standin.client(hook=recorder)
    info = client.info()
    assert info["version"]["number"] == "8.15.3" and "STAND-IN" in info["tagline"]
    docs = seed(client)
    assert client.health()["status"] == "yellow"  # faq was auto-created with one replica on a single node
    assert client.health(["docs_ko"])["status"] == "green"
    timed_out = client.health(["faq"], wait_for_status="green", timeout_s=1)
    assert timed_out["timed_out"] is True and timed_out["status"] == "yellow"
    got = client.get_index("docs_ko")["docs_ko"]
    assert got["mappings"]["properties"]["title"] == {"type": "text"}
    assert got["settings"]["index"]["number_of_replicas"] == "0"
    with pytest.raises(SearchError) as err:
        client.create_index("docs_ko")
    assert err.value.status == 400 and err.value.etype == "resource_already_exists_exception"
    with pytest.raises(SearchError) as err:
        client.get_index("absent")
    assert err.value.status == 404 and err.value.etype == "index_not_found_exception"

    for doc_id in HOSTILE_IDS:
        assert client.get_doc("docs_ko", doc_id) == docs["docs_ko"][doc_id]
    assert client.get_doc("docs_ko", "no such id") is None
    assert client.put_doc("docs_ko", "새 문서", {"title": "추가"})["result"] == "created"
    assert client.put_doc("docs_ko", "새 문서", {"title": "수정"})["result"] == "updated"
    client.refresh(["docs_ko"])
    assert client.count("docs_ko") == len(docs["docs_ko"]) + 1
    paged = all_docs(client, "docs_ko", page=3)
    assert paged == {**docs["docs_ko"], "새 문서": {"title": "수정"}}
    client.bulk([("delete", "docs_ko", "새 문서", None), ("create", "tmp", "1", {"a": 1})])
    with pytest.raises(SearchError) as err:
        client.bulk([("create", "tmp", "1", {"a": 2})])
    assert "version_conflict_engine_exception" in str(err.value)
    assert {row["index"] for row in client.cat_indices()} == {"docs_ko", "faq", "tmp"}
    client.close_index("tmp")
    assert [r["status"] for r in client.cat_indices() if r["index"] == "tmp"] == ["close"]
    with pytest.raises(SearchError) as err:
        client.count("tmp")
    assert err.value.etype == "index_closed_exception"
    client.open_index("tmp")
    client.delete_index("tmp")

    client.put_repository("backups", "backups")
    assert client.get_repository("backups") == {"type": "fs", "settings": {"location": "backups"}}
    assert client.get_repository("absent") is None
    assert client.verify_repository("backups")["nodes"]
    snap = client.create_snapshot("backups", "snap-1", ["docs_ko", "faq"])
    assert snap["state"] == "SUCCESS" and sorted(snap["indices"]) == ["docs_ko", "faq"]
    assert client.get_snapshot("backups", "snap-1")["uuid"] == snap["uuid"]
    repo_files = sorted(os.listdir(standin.repo / "backups"))
    assert f"snap-{snap['uuid']}.dat" in repo_files and "index.latest" in repo_files and "indices" in repo_files
    with pytest.raises(SearchError) as err:
        client.restore_snapshot("backups", "snap-1", ["docs_ko"])  # over an open index: refused like ES
    assert err.value.etype == "snapshot_restore_exception" and "open index with same name" in err.value.reason
    renamed = client.restore_snapshot("backups", "snap-1", ["docs_ko"], rename_pattern="(.+)",
                                      rename_replacement="restored_$1")
    assert renamed["indices"] == ["restored_docs_ko"]
    assert all_docs(client, "restored_docs_ko") == docs["docs_ko"]
    client.delete_index("docs_ko")
    assert client.restore_snapshot("backups", "snap-1", ["docs_ko"])["indices"] == ["docs_ko"]
    assert all_docs(client, "docs_ko") == docs["docs_ko"]
    client.delete_snapshot("backups", "snap-1")
    with pytest.raises(SearchError) as err:
        client.get_snapshot("backups", "snap-1")
    assert err.value.status == 404 and err.value.etype == "snapshot_missing_exception"
    assert not os.listdir(standin.repo / "backups" / "indices")  # its blobs went with it
    with pytest.raises(SearchError) as err:
        client.put_repository("outside", str(tmp_path / "elsewhere"))
    assert err.value.etype == "repository_exception" and "path.repo" in err.value.reason
    client.delete_repository("backups")

    covered = validate_all(standin, recorder)
    missing = REQUIRED_OPERATIONS - covered
    assert not missing, f"operations not exercised: {sorted(missing)}"
    assert {ex["status"] for ex in recorder.exchanges} >= {200, 201, 400, 404, 408, 500}
    assert contract().fixes["oneOf"] > 100  # the document really was read with its unions as anyOf


def test_validator_rejects_malformed_exchanges(standin):
    """The same validation must fail on bodies that break the schema (proves it can fail)."""
    from openapi_core.validation.request.exceptions import InvalidRequestBody
    from openapi_core.validation.response.exceptions import InvalidData

    recorder = Recorder()
    client = standin.client(hook=recorder)
    client.create_index("c")
    client.health()
    client.put_repository("r", "r")
    client.create_snapshot("r", "s", ["c"])
    with pytest.raises(SearchError):
        client.get_index("absent")
    good = {(ex["method"], ex["path"]): ex for ex in recorder.exchanges}
    validate_all(standin, recorder)

    broken = []
    ex = copy.deepcopy(good[("GET", "/_cluster/health")])
    del ex["response"]["status"]  # required by HealthResponseBody
    broken.append((ex, InvalidData))
    ex = copy.deepcopy(good[("GET", "/_cluster/health")])
    ex["response"]["status"] = "purple"  # not a HealthStatus
    broken.append((ex, InvalidData))
    ex = copy.deepcopy(good[("PUT", "/_snapshot/r/s")])
    ex["response"]["snapshot"]["shards"] = {"total": "many"}  # ShardStatistics
    broken.append((ex, InvalidData))
    ex = copy.deepcopy(good[("PUT", "/c")])
    del ex["response"]["index"]  # required by indices.create
    broken.append((ex, InvalidData))
    ex = copy.deepcopy(good[("PUT", "/_snapshot/r/s")])
    ex["json_body"]["include_global_state"] = "maybe"  # boolean
    broken.append((ex, InvalidRequestBody))
    for ex, error in broken:
        with pytest.raises(error):
            contract().validate_exchange(standin.url, ex)
    from jsonschema.exceptions import ValidationError

    ex = copy.deepcopy(good[("GET", "/absent")])
    del ex["response"]["error"]["type"]  # ErrorCause requires type
    ex["response"]["error"] = {"reason": "x"}
    with pytest.raises(ValidationError):
        contract().validate_exchange(standin.url, ex)
    with pytest.raises(AssertionError):
        contract().path_template("GET", "/_nothing/like/this/at/all")


def test_restart_keeps_documents_mappings_and_repositories(standin):
    client = standin.client()
    docs = seed(client, n=30)
    client.put_repository("keep", "keep")
    snap = client.create_snapshot("keep", "before-restart", ["docs_ko"])
    standin.restart()
    client = standin.client()
    assert all_docs(client, "docs_ko") == docs["docs_ko"] and all_docs(client, "faq") == docs["faq"]
    assert client.get_index("docs_ko")["docs_ko"]["mappings"]["properties"]["n"] == {"type": "integer"}
    assert client.get_repository("keep")["settings"]["location"] == "keep"
    assert client.get_snapshot("keep", "before-restart")["uuid"] == snap["uuid"]
    client.delete_index("docs_ko")
    client.restore_snapshot("keep", "before-restart", ["docs_ko"])
    assert all_docs(client, "docs_ko") == docs["docs_ko"]


def test_search_after_pages_through_every_id(standin):
    client = standin.client()
    ops = [("index", "big", f"id-{i:05d}-{HOSTILE_IDS[i % len(HOSTILE_IDS)]}", {"i": i}) for i in range(2500)]
    client.bulk(ops)
    client.bulk([("delete", "big", op[2], None) for op in ops[::10]])
    read = list(client.iter_docs("big", page=333))
    assert len(read) == len({doc_id for doc_id, _ in read}) == 2250 == client.count("big")
    assert {doc_id for doc_id, _ in read} == {op[2] for i, op in enumerate(ops) if i % 10}


def _raw(url, path, auth=None):
    req = urllib.request.Request(url + path, headers={"Authorization": auth} if auth else {})  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310 - fixed http://127.0.0.1 URL
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


def test_basic_auth_401_and_password_never_in_errors(standin):
    status, headers, body = _raw(standin.url, "/")
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic realm=")
    assert body["error"]["type"] == "security_exception" and body["status"] == 401
    assert "missing authentication credentials" in body["error"]["reason"]
    contract().validate_schema(body, "_types:ErrorResponseBase")
    token = base64.b64encode(f"elastic:{PASSWORD}".encode()).decode()
    assert _raw(standin.url, "/", "Basic " + token)[0] == 200
    other_user = base64.b64encode(f"kibana:{PASSWORD}".encode()).decode()
    assert _raw(standin.url, "/", "Basic " + other_user)[0] == 401

    recorder = Recorder()
    wrong = standin.client(hook=recorder, password="wrong-" + PASSWORD)
    with pytest.raises(SearchError) as err:
        wrong.cat_indices()
    assert err.value.status == 401 and err.value.etype == "security_exception"
    assert "login_password" in str(err.value)
    for text in (str(err.value), repr(err.value.args), repr(wrong), json.dumps(recorder.exchanges)):
        assert PASSWORD not in text and base64.b64encode(f"elastic:wrong-{PASSWORD}".encode()).decode() not in text
    assert recorder.exchanges[0]["headers"]["Authorization"] == "Basic <redacted>"
    validate_all(standin, recorder)
    assert PASSWORD not in standin.log_path.read_text(errors="replace")


def test_empty_path_repo_gives_repository_exception(tmp_path):
    proc = EsStandin(tmp_path, path_repo=False)
    proc.start()
    try:
        recorder = Recorder()
        with pytest.raises(SearchError) as err:
            proc.client(hook=recorder).put_repository("r", "r")
        assert err.value.status == 500 and err.value.etype == "repository_exception"
        assert "path.repo because this setting is empty" in err.value.reason
        validate_all(proc, recorder)
    finally:
        proc.stop()


def test_client_retries_connection_errors_with_backoff_and_not_4xx(standin):
    client = SearchClient(f"http://127.0.0.1:{free_port()}", password="x",  # noqa: S106
                          retries=3, backoff=0.5, timeout=2)
    sleeps = []
    client._sleep = sleeps.append
    with pytest.raises(SearchError) as err:
        client.info()
    assert err.value.status is None and sleeps == [0.5, 1.0, 2.0]
    client = standin.client(retries=3)
    client._sleep = sleeps.append
    sleeps.clear()
    with pytest.raises(SearchError):
        client.get_index("absent")
    assert sleeps == []  # a 404 is final
    with pytest.raises(Exception, match="must not carry credentials"):
        SearchClient("http://elastic:pw@127.0.0.1:9200")
