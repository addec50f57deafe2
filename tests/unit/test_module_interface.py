"""One interface for every module: shared argument specs and doc fragments, one error base, no KeyError messages.

Checks module_utils/llmops_common.py, module_utils/doc_fragments/llmops.py and the way library/*.py use them:
every module's argument spec against its documentation as `ansible-doc` builds it (fragments merged, through
ansible.cfg's doc_fragment_plugins), the same connection options for every store, the old option names as
aliases, and failures that say what to do instead of `failed: 'mariadb'`.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import json
import os
import subprocess
from functools import lru_cache

import pytest
from ansible.module_utils import llmops_common
from ansible.module_utils.llmops_backupset import BackupSetError, load_component, parse_time
from ansible.module_utils.llmops_common import InvalidValueError, LlmopsError, argument_spec, load_state
from ansible.module_utils.llmops_drill import DrillError, build_report
from ansible.module_utils.llmops_postgres import client_args
from ansible.module_utils.llmops_redis import cli_argv

from tests.conftest import REPO, VENV_BIN, ansible_env, run_module

MODULES = sorted(name[:-3] for name in os.listdir(REPO / "library") if name.endswith(".py"))
STORE_MODULES = ["mariadb_backup", "mariadb_restore", "postgres_backup", "postgres_restore", "redis_backup",
                 "redis_restore"]
CONNECTION = {"container", "container_user", "login_user", "login_password", "login_host", "login_port",
              "login_unix_socket"}


class _Captured(Exception):
    pass


def module_spec(name):
    """The keyword arguments a module's main() gives AnsibleModule (argument_spec, required_if...)."""
    spec = importlib.util.spec_from_file_location(f"llmops_test_{name}", REPO / "library" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def capture(**kwargs):
        raise _Captured(kwargs)

    module.AnsibleModule = capture
    with pytest.raises(_Captured) as caught:
        module.main()
    return caught.value.args[0]


@lru_cache(maxsize=1)
def documented():
    """`ansible-doc --json` of every module, run outside the repository: ansible.cfg must find the fragments."""
    proc = subprocess.run([str(VENV_BIN / "ansible-doc"), "-M", str(REPO / "library"), "--json", *MODULES],
                          cwd="/", env=ansible_env(), capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {name: doc["doc"] for name, doc in json.loads(proc.stdout).items()}


def _doc_field(option, key, default=None):
    return option.get(key, default)


@pytest.mark.parametrize("name", MODULES)
def test_every_option_is_documented_as_the_spec_says(name):
    spec = module_spec(name)["argument_spec"]
    options = documented()[name].get("options") or {}
    assert sorted(options) == sorted(spec), "documented options differ from the argument spec"
    for option, arg in spec.items():
        doc = options[option]
        where = f"{name}: option {option}"
        assert doc.get("description"), where + " has no description"
        assert _doc_field(doc, "type", "str") == arg.get("type", "str"), where
        assert _doc_field(doc, "default") == arg.get("default"), where
        assert bool(doc.get("required")) == bool(arg.get("required")), where
        assert sorted(doc.get("aliases") or []) == sorted(arg.get("aliases") or []), where
        assert (doc.get("choices") or None) == (arg.get("choices") or None), where
        assert doc.get("elements") == arg.get("elements"), where


@pytest.mark.parametrize("name", MODULES)
def test_every_module_has_the_shared_author_and_attributes(name):
    doc = documented()[name]
    assert doc["author"] == ["llmops contributors (!UNKNOWN)"]
    assert doc["attributes"]["diff_mode"]["support"] == "none"
    assert doc["attributes"]["check_mode"]["support"] == "full"


@pytest.mark.parametrize("name", STORE_MODULES)
def test_every_store_module_takes_the_same_connection_options(name):
    spec = module_spec(name)["argument_spec"]
    assert CONNECTION <= set(spec)
    assert spec["login_password"]["no_log"] is True
    assert {alias: option for option in CONNECTION for alias in spec[option].get("aliases") or []} == \
        {"host": "login_host", "port": "login_port", "password": "login_password"}
    assert "login_host" in documented()[name]["options"]


def test_the_stores_keep_their_defaults():
    defaults = {store: {key: value["default"] for key, value in llmops_common.connection_argument_spec(store).items()
                        if value.get("default") is not None} for store in llmops_common.STORE_DEFAULTS}
    assert defaults == {
        "mariadb": {"container": "llmops-appdb-mariadb-1", "login_user": "root", "login_port": 3306},
        "postgres": {"container": "llmops-appdb-postgres-1", "container_user": "postgres", "login_user": "postgres",
                     "login_port": 5432},
        "redis": {"container": "llmops-appdb-redis-1", "login_port": 6379},
    }


RESTORES = {"mariadb_restore": ["stage", "swap", "replay", "verify", "rollback", "cleanup"],
            "redis_restore": ["stage", "swap", "load", "verify", "rollback", "cleanup"],
            "postgres_restore": ["load", "verify", "rollback", "cleanup"],
            "qdrant_restore": ["stage", "load", "verify", "rollback", "cleanup"],
            "files_restore": ["swap", "rollback", "cleanup"]}


@pytest.mark.parametrize("name", sorted(RESTORES))
def test_restore_modules_share_one_step_vocabulary_and_one_safety_option(name):
    spec = module_spec(name)["argument_spec"]
    assert {"step", "set_path", "staging", "keep_safety_copy", "safety_tag"} <= set(spec), name
    assert spec["safety_tag"]["aliases"] == ["safety_suffix", "safety_name"]
    assert spec["step"]["choices"] == RESTORES[name]
    assert set(spec["step"]["choices"]) <= set(llmops_common.RESTORE_STEPS)
    assert documented()[name]["options"]["safety_tag"]["aliases"] == ["safety_suffix", "safety_name"]
    # one runner: no module dispatches on the step itself
    tree = ast.parse((REPO / "library" / f"{name}.py").read_text())
    compared = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Compare)
                and any(isinstance(x, (ast.Name, ast.Subscript)) and "step" in ast.unparse(x)
                        for x in [n.left, *n.comparators])]
    assert compared == [], f"{name} compares the step itself (lines {compared}): give run_restore_step a handler"


def test_a_restore_module_refuses_steps_out_of_the_vocabulary():
    with pytest.raises(ValueError, match="each must be one of"):
        llmops_common.restore_argument_spec(["restore", "verify"])
    with pytest.raises(ValueError, match="in that order"):
        llmops_common.restore_argument_spec(["verify", "stage"])


@pytest.mark.parametrize(("given", "tag"), [("pre-restore", "pre-restore"), (".pre-restore-20260131_0300",
                                            "pre-restore-20260131_0300"), ("__hn_pre", "hn_pre")])
def test_the_old_safety_values_give_the_same_names(given, tag):
    assert llmops_common.safety_tag({"safety_tag": given}) == tag


@pytest.mark.parametrize("given", ["", "...", "a/b", "x\0y"])
def test_an_unusable_safety_tag_is_refused(given):
    with pytest.raises(InvalidValueError, match="safety_tag"):
        llmops_common.safety_tag({"safety_tag": given.replace("\\0", "\0")})


class FakeModule:
    """What run_restore_step uses of AnsibleModule; exit_json / fail_json end the run as they do."""

    def __init__(self, step, check=False):
        self.params, self.check_mode, self.warnings = {"step": step}, check, []

    def warn(self, text):
        self.warnings.append(text)

    def exit_json(self, **result):
        raise _Captured(dict(result, failed=False))

    def fail_json(self, **result):
        raise _Captured(dict(result, failed=True))


def run_step(step, handler, check=False):
    module = FakeModule(step, check)
    with pytest.raises(_Captured) as caught:
        llmops_common.run_restore_step(module, "Store", {step: handler})
    return caught.value.args[0], module.warnings


def test_the_runner_passes_check_mode_and_warnings_and_names_the_step():
    result, warnings = run_step("stage", lambda p, check: dict(changed=not check, warnings=["careful"]), check=True)
    assert result == {"changed": False, "step": "stage", "failed": False} and warnings == ["careful"]


@pytest.mark.parametrize(("step", "error", "next_step"), [
    ("stage", LlmopsError("the artefact is damaged"), "nothing live was changed"),
    ("swap", OSError(28, "No space left on device"), "run step=rollback"),
    ("rollback", LlmopsError("cannot rename"), "put it back by hand"),
])
def test_a_failed_step_says_what_to_do_next(step, error, next_step):
    def fail(p, check):
        raise error
    result, _w = run_step(step, fail)
    assert result["failed"] and result["step"] == step
    assert result["msg"].startswith(f"Store restore step {step} failed: ") and ". Next: " in result["msg"]
    assert next_step in result["msg"].split(". Next: ")[1]


def test_a_failed_verification_keeps_its_differences_and_a_bug_keeps_its_traceback():
    def differs(p, check):
        raise llmops_common.StepFailed("the data differs", differences=["t.rows: 1, expected 2"])
    result, _w = run_step("verify", differs)
    assert result["failed"] and result["differences"] == ["t.rows: 1, expected 2"]
    assert "restore another set" in result["msg"]
    with pytest.raises(KeyError):
        run_step("verify", lambda p, check: {}["missing"])


def test_a_shared_spec_refuses_an_option_defined_twice():
    with pytest.raises(ValueError, match="zstd_level"):
        argument_spec(compression=True, zstd_level=dict(type="int"))
    assert set(argument_spec(store="redis", default_timeout=600)) == CONNECTION | {"timeout"}


def test_every_module_utils_error_derives_from_llmops_error():
    errors = {}
    for name in sorted(os.listdir(REPO / "module_utils")):
        if not name.endswith(".py"):
            continue
        module = importlib.import_module(f"ansible.module_utils.{name[:-3]}")
        errors.update({cls.__name__: cls for _n, cls in inspect.getmembers(module, inspect.isclass)
                       if issubclass(cls, Exception) and cls.__module__ == module.__name__})
    assert {"BackupSetError", "SumsFormatError", "ExecError", "FilesBackupError", "FilesRestoreError", "MariaDBError",
            "PipelineError", "PostgresError", "QdrantError", "QdrantBackupError", "QdrantRestoreError", "RedisError",
            "DrillError", "InvalidValueError"} <= set(errors)
    assert [name for name, cls in errors.items() if not issubclass(cls, LlmopsError) and cls is not LlmopsError] == []


def _caught(handler):
    names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type] if handler.type else []
    return {getattr(n, "id", getattr(n, "attr", None)) for n in names}


@pytest.mark.parametrize("name", MODULES)
def test_no_module_turns_a_programming_error_into_a_message(name):
    tree = ast.parse((REPO / "library" / f"{name}.py").read_text())
    for handler in (n for n in ast.walk(tree) if isinstance(n, ast.ExceptHandler)):
        bugs = _caught(handler) & {"KeyError", "TypeError", "AttributeError", "IndexError", "Exception"}
        reports = any(isinstance(n, ast.Attribute) and n.attr == "fail_json" for n in ast.walk(handler))
        assert not (bugs and reports), f"{name} line {handler.lineno} reports {sorted(bugs)} as a failure"


def test_the_dead_code_is_gone():
    from ansible.module_utils import llmops_backupset, llmops_drill, llmops_postgres

    assert not hasattr(llmops_backupset, "SetLock") and not hasattr(llmops_backupset, "stamp_time")
    assert not hasattr(llmops_drill, "new_drill_id") and not hasattr(llmops_postgres, "list_databases")


def _set(tmp_path, components):
    path = tmp_path / "llmops_20260131_020000"
    path.mkdir()
    (path / "backup_manifest.json").write_text(json.dumps({"schema_version": 1, "id": path.name,
                                                           "components": components}))
    return str(path)


def test_a_missing_or_failed_component_is_an_actionable_message(tmp_path):
    path = _set(tmp_path, {"postgres": {"status": "success"}, "redis": {"status": "failed", "error": "auth"}})
    assert load_component(path, "postgres") == {"status": "success"}
    with pytest.raises(BackupSetError, match=r"has no mariadb component \(it holds: postgres, redis\); restore"):
        load_component(path, "mariadb")
    with pytest.raises(BackupSetError, match="redis component of the set llmops_20260131_020000 did not succeed"):
        load_component(path, "redis")


def test_bad_values_are_llmops_errors_and_still_value_errors(tmp_path):
    with pytest.raises(InvalidValueError, match="'yesterday' is not an ISO 8601 time") as caught:
        parse_time("yesterday")
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, LlmopsError)
    state = tmp_path / "state.json"
    state.write_text("{half")
    with pytest.raises(LlmopsError, match="the record an earlier step of this restore left"):
        load_state(str(state))
    assert load_state(str(tmp_path / "none.json"), {}) == {}


def test_a_drill_without_its_facts_says_which_are_missing():
    with pytest.raises(DrillError, match="id is missing; .*set_ended is missing; rto_target_seconds is 'soon'"):
        build_report({"started": "2026-11-23T11:00:00Z", "ended": "2026-11-23T11:02:00Z", "set_id": "x",
                      "rto_target_seconds": "soon", "rpo_target_seconds": 60})


def test_every_store_client_honours_socket_and_user():
    assert cli_argv({"socket": "/run/redis.sock", "user": "backup"}, "PING") == [
        "redis-cli", "-s", "/run/redis.sock", "--user", "backup", "--json", "PING"]
    assert cli_argv({"host": "cache", "port": 6380, "socket": "/ignored"}, fmt=None) == [
        "redis-cli", "-h", "cache", "-p", "6380"]
    assert client_args({"socket": "/var/run/postgresql", "port": 5433, "user": "postgres"}) == [
        "--host=/var/run/postgresql", "--port=5433", "--username=postgres", "--no-password"]


def test_mariadb_restore_takes_tcp_options_and_names_a_missing_component(tmp_path):
    path = _set(tmp_path, {"postgres": {"status": "success"}})
    result = run_module("mariadb_restore", {"step": "verify", "set_path": path, "backup_root": str(tmp_path),
                                            "staging": str(tmp_path / "st"), "login_host": "127.0.0.1",
                                            "login_port": 3307, "login_user": "backup"})
    assert result.get("failed") and result["msg"].startswith("MariaDB restore step verify failed: the set "
                                                             "llmops_20260131_020000 has no mariadb component"), result


def test_the_old_option_names_still_work(tmp_path):
    result = run_module("redis_restore", {"step": "cleanup", "set_path": str(tmp_path), "staging": str(tmp_path / "st"),
                                          "datadir": str(tmp_path), "host": "127.0.0.1", "port": 6380,
                                          "password": "secret"}, check_mode=True)
    assert not result.get("failed") and result["changed"] is False, result
    assert "secret" not in json.dumps(result)
