"""The config history (files_backup mode=configs) never holds a secret, and a config restore brings every file
back with the mode and owner it had: a real Git repository in tmp_path, the production stack's layout of secrets."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from ansible.module_utils.llmops_backupset import load_manifest
from ansible.module_utils.llmops_files import (
    CONFIGS_REF,
    FilesBackupError,
    GitRepo,
    SecretScanner,
    backup_configs,
    rewrite_config_history,
)
from ansible.module_utils.llmops_files_restore import restore_configs
from ansible.module_utils.llmops_layout import layout_path

from tests.conftest import run_module, run_playbook
from tests.unit.test_files_backup import finalize, new_partial

# The stack's secrets (what roles/stack renders from the vault), with characters that need escaping somewhere.
SECRETS = {
    "mariadb_root_password": "Mdb-root-7Qv2wX9zLp",
    "postgres_password": "pg p@ss/w%rd+3Kx8",
    "redis_password": 'r3dis "quoted" \\ back$lash #hash',
    "qdrant_api_key": "qd-key-5hJ2nB8vC1xZ",
}


def redis_quote(value: str) -> str:
    return '"{}"'.format(value.replace("\\", "\\\\").replace('"', '\\"'))


def write(path: Path, text: str, mode: int, owner: tuple[int, int] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    if owner and os.geteuid() == 0:
        os.chown(path, *owner)
    return path


def make_stack(base: Path) -> dict[str, Path]:
    """A rendered stack as roles/stack writes it (production layout) and an /etc/llmops folder."""
    stack = base / "opt" / "llmops" / "stack"
    for name in ["mariadb_root_password", "postgres_password", "redis_password"]:
        write(stack / "appdb" / "secrets" / name, SECRETS[name], 0o400, (999, 0))
    (stack / "appdb" / "secrets").chmod(0o700)
    qdrant_yaml = "service:\n  api_key: {}\n".format(json.dumps(SECRETS["qdrant_api_key"]))
    write(stack / "ai" / "secrets" / "qdrant.yaml", qdrant_yaml, 0o600)
    redis_conf = "port 6379\nrequirepass {}\n".format(redis_quote(SECRETS["redis_password"]))
    write(stack / "appdb" / "config" / "redis.conf", redis_conf, 0o600, (999, 0))
    write(stack / "appdb" / "config" / "mariadb.cnf", "[mariadbd]\nlog_bin = mysql-bin\n", 0o600, (999, 0))
    write(stack / "appdb" / "compose.yml", "services:\n  mariadb:\n    environment:\n"
          "      MARIADB_ROOT_PASSWORD_FILE: /run/secrets/mariadb_root_password\n", 0o640, (0, 4321))
    write(stack / "ai" / "compose.yml", "services: {}\n", 0o640)
    etc = base / "etc" / "llmops"
    write(etc / "app.yaml", "llm_url: http://llm:8000\nmax_upload_mb: 50\n", 0o640, (1234, 4321))
    # the PostgreSQL password inside a DSN (URL-encoded), and the Qdrant key in a script: learnt from the secret files
    write(etc / "db.yaml", "dsn: postgresql://app:{}@postgres/app\n".format("pg%20p%40ss%2Fw%25rd%2B3Kx8"), 0o600)
    write(etc / "probe.sh", "curl -H 'api-key: {}' http://qdrant:6333/\n".format(SECRETS["qdrant_api_key"]), 0o750)
    write(etc / "conf.d" / "logging.yaml", "level: info\n", 0o644)
    return {"stack": stack, "etc": etc}


def all_history(repo: Path) -> bytes:
    """Everything the repository holds: every commit's patch and every object's content (reachable or not)."""
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    base = ["git", "-c", f"safe.directory={repo}", "-C", str(repo)]
    out = subprocess.run(base + ["log", "-p", "--all", "--binary"], env=env, capture_output=True, check=True).stdout
    objects = subprocess.run(base + ["cat-file", "--batch-all-objects", "--batch"], env=env, capture_output=True,
                             check=True).stdout
    return out + objects


def secret_forms(value: str) -> list[bytes]:
    return [value.encode(), json.dumps(value)[1:-1].encode(), redis_quote(value).encode()]


def assert_no_secret(data: bytes, where: str) -> None:
    for name, value in SECRETS.items():
        for form in secret_forms(value):
            assert form not in data, f"{name} is in {where}"


def describe(path: Path) -> dict:
    out = {}
    for full in sorted([path, *path.rglob("*")]):
        st = os.lstat(full)
        out[str(full.relative_to(path))] = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                                             full.read_bytes() if full.is_file() else None)
    return out


def test_the_stack_secrets_never_reach_the_history(tmp_path):
    live = make_stack(tmp_path / "live")
    root = tmp_path / "backup"
    paths = [str(live["stack"]), str(live["etc"])]
    first = backup_configs(paths, tmp_path / "s1", root)
    repo = Path(layout_path(root, "config_repo"))

    excluded = {e["path"]: e["reason"] for e in first["excluded"]}
    stack, etc = live["stack"], live["etc"]
    assert excluded == {
        str(stack / "appdb" / "secrets"): "name matches secrets",
        str(stack / "ai" / "secrets"): "name matches secrets",
        str(stack / "appdb" / "config" / "redis.conf"): "holds a known secret value",
        str(etc / "db.yaml"): "holds a known secret value",
        str(etc / "probe.sh"): "holds a known secret value",
    }
    committed = set(first["config_files"])
    rel = lambda p: str(p).lstrip("/")  # noqa: E731
    assert {rel(stack / "appdb" / "compose.yml"), rel(stack / "appdb" / "config" / "mariadb.cnf"),
            rel(etc / "app.yaml"), rel(etc / "conf.d" / "logging.yaml")} <= committed
    assert not [f for f in committed if "/secrets/" in f or f.endswith(("redis.conf", "db.yaml", "probe.sh"))]
    assert any("kept out of the config history" in w and "redis.conf" in w for w in first["warnings"])

    # a password changed and rendered again: still never committed, in any form, in any commit or object
    new_password = 'n3w redis "pw" $x #y'  # noqa: S105 - a test value
    write(stack / "appdb" / "secrets" / "redis_password", new_password, 0o600)
    write(stack / "appdb" / "config" / "redis.conf", f"port 6379\nrequirepass {redis_quote(new_password)}\n", 0o600)
    (etc / "app.yaml").write_text("llm_url: http://llm:8001\n")
    second = backup_configs(paths, tmp_path / "s2", root)
    assert second["changed"] and second["commit"] != first["commit"]
    history = all_history(repo)
    assert b"llm:8001" in history and b"log_bin = mysql-bin" in history  # the history is there ...
    assert_no_secret(history, "the config history")  # ... without any secret
    assert not [form for form in secret_forms(new_password) if form in history]
    # nor in the worktree, the set's record or the module's result (names only)
    mirrored = b"".join(p.read_bytes() for p in repo.rglob("*") if p.is_file() and ".git" not in p.parts)
    assert_no_secret(mirrored, "the history's worktree")
    assert not (repo / rel(stack / "appdb" / "secrets")).exists()
    ref = (tmp_path / "s2" / CONFIGS_REF).read_bytes()
    assert_no_secret(ref + json.dumps(second).encode(), "configs_commit.json or the result")
    record = json.loads(ref)["paths"][str(stack)]
    assert ["appdb/secrets", "d", "name matches secrets"] in record["excluded"]


def test_secret_values_given_by_the_playbook_and_check_mode(tmp_path):
    etc = tmp_path / "etc" / "llmops"
    write(etc / "app.yaml", "search_url: http://search:9200\n", 0o644)
    write(etc / "api.ini", "[upstream]\nheader = X-Key Zx81-vault-only-value\n", 0o644)  # no pattern finds this
    write(etc / "short.txt", "abc\n", 0o644)
    root = tmp_path / "backup"
    checked = backup_configs([str(etc)], tmp_path / "s0", root, check_mode=True,
                             secret_values=["Zx81-vault-only-value", "abc"])
    assert checked["would_exclude"] == [{"path": str(etc / "api.ini"), "reason": "holds a known secret value"}]
    assert str(etc / "api.ini").lstrip("/") not in checked["would_commit"]
    assert str(etc / "app.yaml").lstrip("/") in checked["would_commit"]
    assert not root.exists()
    entry = backup_configs([str(etc)], tmp_path / "s1", root, secret_values=["Zx81-vault-only-value", "abc"])
    assert [e["path"] for e in entry["excluded"]] == [str(etc / "api.ini")]
    assert any("shorter than 8" in w for w in entry["warnings"])  # "abc" was not looked for
    assert str(etc / "short.txt").lstrip("/") in entry["config_files"]
    assert b"Zx81-vault-only-value" not in all_history(Path(entry["repo"]))


def test_rules_and_patterns_are_checked(tmp_path):
    etc = tmp_path / "etc"
    write(etc / "a.conf", "x = 1\n", 0o644)
    for bad in ["a/b", "..", "", "x\\y", "- secrets", "line\nbreak"]:
        with pytest.raises(FilesBackupError, match="not a file or folder name"):
            backup_configs([str(etc)], tmp_path / "d", tmp_path / "root", exclude=[bad])
    with pytest.raises(FilesBackupError, match="not a regular expression"):
        backup_configs([str(etc)], tmp_path / "d", tmp_path / "root", secret_patterns=["(unclosed"])
    # a config path that is itself a secret is left out whole; when nothing is left, the backup says so
    with pytest.raises(FilesBackupError, match="every config path is excluded"):
        backup_configs([str(write(tmp_path / "app" / ".env", "A=1\n", 0o600))], tmp_path / "d", tmp_path / "root")
    scanner = SecretScanner()
    scanner.harvest(str(write(tmp_path / "s" / "one", "LOG_LEVEL=information\n", 0o600)))
    two = write(tmp_path / "s" / "two", "A=1\nLOG_LEVEL=information\nAPI_TOKEN='tok-123456789'\n", 0o600)
    scanner.harvest(str(two))
    # a one-line file is one value; of several lines only those whose key names a secret are learnt
    assert b"LOG_LEVEL=information" in scanner.needles and b"information" not in scanner.needles
    assert b"tok-123456789" in scanner.needles


def git_out(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    return subprocess.run(["git", "-c", f"safe.directory={repo}", "-C", str(repo), *args], env=env,
                          capture_output=True, text=True, check=True).stdout


def old_history(tmp_path: Path) -> tuple[dict[str, Path], Path, list[str], Path]:
    """A history written before the rules (secrets committed in its first commit), then two commits of the rules:
    ``(live, backup root, config paths, repo)``."""
    live = make_stack(tmp_path / "live")
    root = tmp_path / "backup"
    paths = [str(live["stack"]), str(live["etc"])]
    old = backup_configs(paths, tmp_path / "s1", root, exclude=[], secret_patterns=[])  # the old behaviour
    repo = Path(old["repo"])
    assert SECRETS["mariadb_root_password"].encode() in all_history(repo)
    new = backup_configs(paths, tmp_path / "s2", root)
    # the tip no longer has them (the next commit deletes them) ...
    assert not [f for f in new["config_files"] if "/secrets/" in f or f.endswith("redis.conf")]
    assert new["changed"] and SECRETS["mariadb_root_password"].encode() in all_history(repo)  # ... the history does
    (live["etc"] / "app.yaml").write_text("llm_url: http://llm:8001\n")
    assert backup_configs(paths, tmp_path / "s3", root)["changed"]
    return live, root, paths, repo


def test_a_history_written_before_the_rules_is_cleaned_by_the_documented_rewrite(tmp_path):
    """files_backup mode=configs_rewrite (playbooks/config_history_rewrite.yml): no blob of the repository holds a
    secret afterwards, the other files keep their history, the next backup works on the new history."""
    live, root, paths, repo = old_history(tmp_path)
    stack, etc = live["stack"], live["etc"]
    rel = lambda p: str(p).lstrip("/")  # noqa: E731
    app_log = git_out(repo, "log", "--all", "--format=%H", "--", rel(etc / "app.yaml")).split()
    assert len(app_log) == 2
    checked = rewrite_config_history(str(root), secret_values=list(SECRETS.values()), check_mode=True)
    removed = {e["path"]: e["reason"] for e in checked["removed"]}
    assert removed == {
        rel(stack / "appdb" / "secrets" / name): "name matches secrets"
        for name in ["mariadb_root_password", "postgres_password", "redis_password"]} | {
        rel(stack / "ai" / "secrets" / "qdrant.yaml"): "name matches secrets",
        rel(stack / "appdb" / "config" / "redis.conf"): "holds a known secret value",
        rel(etc / "db.yaml"): "holds a known secret value",
        rel(etc / "probe.sh"): "holds a known secret value",
    }
    assert_no_secret(json.dumps(checked).encode(), "the check's result")
    assert SECRETS["mariadb_root_password"].encode() in all_history(repo)  # check mode changed nothing
    done = rewrite_config_history(str(root), secret_values=list(SECRETS.values()))
    assert done["changed"] and done["head_after"] != done["head_before"]
    history = all_history(repo)  # every commit's patch and every object, reachable or not
    assert_no_secret(history, "the rewritten history")
    loose = b"".join(p.read_bytes() for p in (repo / ".git").rglob("*") if p.is_file())
    assert SECRETS["mariadb_root_password"].encode() not in loose  # nor a file of .git (reflogs, packs, maps...)
    # the rest of the history is kept: both versions of app.yaml, mariadb.cnf from the first commit
    assert b"log_bin = mysql-bin" in history and b"llm:8000" in history and b"llm:8001" in history
    assert len(git_out(repo, "log", "--all", "--format=%H", "--", rel(etc / "app.yaml")).split()) == 2
    assert not [p for p in GitRepo(str(repo)).tracked() if "/secrets/" in p or p.endswith("redis.conf")]
    assert not (repo / rel(stack / "appdb" / "secrets")).exists()
    assert any("run a config backup now" in w for w in done["warnings"])
    again = rewrite_config_history(str(root), secret_values=list(SECRETS.values()))
    assert not again["changed"] and again["removed"] == []
    after = backup_configs(paths, tmp_path / "s4", root)  # and the next backup works on the rewritten history
    assert after["commit"] and not after["changed"]


def test_the_rewrite_refuses_a_planted_filter_and_runs_nothing(tmp_path):
    """A program planted in the history's .git/config is refused before Git runs (as every other Git call)."""
    _live, root, _paths, repo = old_history(tmp_path)
    marker = tmp_path / "ran"
    with open(repo / ".git" / "config", "a", encoding="utf-8") as handle:
        handle.write(f"[filter \"x\"]\n\tclean = touch {marker}\n")
    with pytest.raises(FilesBackupError, match="filter.x.clean"):
        rewrite_config_history(str(root))
    assert not marker.exists()


def test_the_documented_rewrite_command(tmp_path):
    """playbooks/config_history_rewrite.yml: refused without confirm=yes, a dry run lists, confirm=yes rewrites;
    the secrets come from the inventory's vault values, never on a command line or in the output."""
    _live, root, _paths, repo = old_history(tmp_path)
    base = ["-e", f"backup_root={root}"]
    refused = run_playbook("config_history_rewrite.yml", *base, check=False)
    assert refused.returncode != 0 and "Refusing to rewrite the config history" in refused.stdout
    dry = run_playbook("config_history_rewrite.yml", *base, "-e", "dry_run=true")
    assert "would remove from every commit" in dry.stdout and "redis_password" in dry.stdout
    assert SECRETS["mariadb_root_password"].encode() in all_history(repo)
    done = run_playbook("config_history_rewrite.yml", *base, "-e", "confirm=yes")
    assert "removed from every commit" in done.stdout and "playbooks/backup.yml -e components=configs" in done.stdout
    assert_no_secret(all_history(repo), "the history rewritten by the playbook")
    assert b"log_bin = mysql-bin" in all_history(repo)


def test_restore_brings_modes_and_owners_back_and_keeps_the_live_secrets(tmp_path):
    # the bundle runs as root (backups, restores); so do its tests (make test), which give files other owners
    assert os.geteuid() == 0, "run the tests as root, as make test does: restoring owners needs it"
    live = make_stack(tmp_path / "live")
    stack = live["stack"]
    root = tmp_path / "backup"
    partial = new_partial(root, "2026-01-01T02:00:00+00:00")
    entry = backup_configs([str(stack), str(live["etc"])], os.path.join(partial, "configs"), root)
    record = json.loads(Path(partial, "configs", CONFIGS_REF).read_text())["paths"][str(stack)]
    assert ["appdb/config/mariadb.cnf", "f", 0o600, 999, 0] in record["entries"]
    assert ["appdb/compose.yml", "f", 0o640, 0, 4321] in record["entries"]
    set_path = finalize(root, partial, {"configs": entry})
    before = {"stack": describe(stack), "etc": describe(live["etc"])}
    kept_out = {k for k in before["etc"] if k in ("db.yaml", "probe.sh")}

    # damage: modes, owners and content of config files; the live secrets stay (a config restore, not a rebuild)
    for path in [stack / "appdb" / "config" / "mariadb.cnf", stack / "appdb" / "compose.yml", live["etc"] / "app.yaml"]:
        path.write_text("damaged\n")
        path.chmod(0o644)
        os.chown(path, 0, 0)
    component = load_manifest(set_path)["components"]["configs"]
    checked = restore_configs(set_path, component, str(root), str(tmp_path / "st0"), ".pre", check_mode=True)
    assert checked["secrets_from_live"][str(stack)] == ["ai/secrets", "appdb/config/redis.conf", "appdb/secrets"]
    result = restore_configs(set_path, component, str(root), str(tmp_path / "st"), ".pre")
    assert describe(stack) == before["stack"]  # modes, owners, contents; secrets back from the replaced copy
    assert describe(live["etc"]) == before["etc"]
    by_path = {r["path"]: r for r in result["restored"]}
    assert by_path[str(stack)]["secrets_kept"] == ["ai/secrets", "appdb/config/redis.conf", "appdb/secrets"]
    assert sorted(by_path[str(live["etc"])]["secrets_kept"]) == sorted(kept_out)
    assert not result["warnings"]
    assert (Path(str(stack) + ".pre") / "appdb" / "config" / "mariadb.cnf").read_text() == "damaged\n"

    # a restore onto new hardware (nothing to replace): the secrets are reported, to be rendered from the vault
    fresh = restore_configs(set_path, component, str(root), str(tmp_path / "st2"), ".pre",
                            dest_root=str(tmp_path / "new"))
    new_stack = tmp_path / "new" / str(stack).lstrip("/")
    missing = {r["path"]: r["secrets_missing"] for r in fresh["restored"]}
    assert missing[str(stack)] == ["ai/secrets", "appdb/config/redis.conf", "appdb/secrets"]
    assert not (new_stack / "appdb" / "secrets").exists()
    assert any("playbooks/stack.yml" in w for w in fresh["warnings"])
    mariadb_cnf = os.lstat(new_stack / "appdb" / "config" / "mariadb.cnf")
    assert (stat.S_IMODE(mariadb_cnf.st_mode), mariadb_cnf.st_uid, mariadb_cnf.st_gid) == (0o600, 999, 0)
    app = os.lstat(tmp_path / "new" / str(live["etc"] / "app.yaml").lstrip("/"))
    assert (stat.S_IMODE(app.st_mode), app.st_uid, app.st_gid) == (0o640, 1234, 4321)


def test_restore_refuses_records_that_escape_or_give_bad_owners(tmp_path):
    from ansible.module_utils.llmops_files_restore import FilesRestoreError, apply_record, keep_secrets

    dest = tmp_path / "dest"
    (dest / "sub").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", dest / "escape")
    for entries in ([["../x", "f", 0o600, 0, 0]], [["escape/x", "d", 0o700, 0, 0]], [["sub", "d", 0o700, -1, 0]],
                    [["sub", "d", 0o700, "0", 0]], [["sub", "d", 0o700, True, 0]]):
        with pytest.raises(FilesRestoreError):
            apply_record(str(dest), {"kind": "d", "mode": 0o700, "entries": entries})
    assert not (tmp_path / "outside" / "x").exists()
    safety = tmp_path / "safety"
    (safety / "secrets").mkdir(parents=True)
    (safety / "secrets" / "pw").write_text("live secret")
    for rel in ["../outside/pw", "/etc/passwd", "escape/pw"]:
        with pytest.raises(FilesRestoreError):
            keep_secrets(str(dest), str(safety), {"kind": "d", "excluded": [[rel, "f", "name matches secrets"]]})
    kept, missing = keep_secrets(str(dest), str(safety), {"kind": "d", "excluded": [["secrets", "d", "x"],
                                                                                  ["sub/gone", "f", "x"]]})
    assert (kept, missing) == (["secrets"], ["sub/gone"]) and (dest / "secrets" / "pw").read_text() == "live secret"


def test_files_backup_module_keeps_secrets_out_of_its_output(tmp_path):
    etc = tmp_path / "etc" / "llmops"
    write(etc / "app.yaml", "endpoint: http://api:8000\n", 0o644)
    write(etc / "vendor.ini", "key = Yv42-only-the-vault-knows\n", 0o600)
    args = {"mode": "configs", "paths": [str(etc)], "dest": str(tmp_path / "s1"), "backup_root": str(tmp_path / "b"),
            "secret_values": ["{{ cfg_secret }}"]}
    result = run_module("files_backup", args, extra_vars={"cfg_secret": "Yv42-only-the-vault-knows"})
    assert not result.get("failed"), result
    reason = "holds a known secret value"
    assert result["component"]["excluded"] == [{"path": str(etc / "vendor.ini"), "reason": reason}]
    assert "Yv42-only-the-vault-knows" not in json.dumps(result)
    assert any("vendor.ini" in w for w in result.get("warnings", []))
    assert b"Yv42-only-the-vault-knows" not in all_history(Path(result["component"]["repo"]))
    assert GitRepo(result["component"]["repo"]).tracked() == [str(etc / "app.yaml").lstrip("/")]
