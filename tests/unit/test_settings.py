"""No dead or shadowed settings.

Every variable an inventory sets (inventories/ and tests/inventories/) must be read by a role, a playbook,
a Compose template or another inventory variable; for a dict variable (backup_retention, stack_ports...)
every key must be read too. A play-level `vars:` (or a role's parameters in a play) must not set a name an
inventory or a role default sets: it would silently win over the inventory. Role defaults carry the one
definition of a setting, and each role's meta/argument_specs.yml documents every one of them (Ansible
validates the role's arguments from it; `ansible-doc -t role -r roles <role>` shows it).
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

INVENTORY_DIRS = [REPO / "inventories", REPO / "tests" / "inventories"]
# Where settings are read: the code that runs. Documentation (README, argument_specs, comments) is not a read.
CODE_GLOBS = ["roles/*/tasks/**/*.yml", "roles/*/handlers/*.yml", "roles/*/templates/**/*", "roles/*/vars/*.yml",
              "roles/*/defaults/*.yml", "roles/*/meta/main.yml", "roles/*/action_plugins/*.py", "playbooks/**/*.yml",
              "compose/*.j2", "library/*.py", "module_utils/*.py"]
ROLES = sorted(p.parent.parent.name for p in (REPO / "roles").glob("*/meta/main.yml"))
# Play keywords that are not role parameters (https://docs.ansible.com/ansible/latest/reference_appendices/playbooks_keywords.html#role)
ROLE_KEYWORDS = {"role", "name", "vars", "tags", "when", "become", "become_user", "become_method", "delegate_to",
                 "environment", "ignore_errors", "no_log", "any_errors_fatal", "check_mode", "diff", "collections",
                 "connection", "debugger", "module_defaults", "port", "remote_user", "run_once", "throttle", "timeout"}


def load(path: Path):
    return yaml.safe_load(path.read_text())


def inventory_files() -> list[Path]:
    """Every YAML file of the inventories: group_vars / host_vars files, hosts files, and the vault example
    (its names are the vault_* variables production's files read). Links are read where they point."""
    files = set()
    for base in INVENTORY_DIRS:
        for path in base.rglob("*"):
            if path.is_file() and (path.suffix in (".yml", ".yaml") or path.name.endswith(".yml.example")):
                files.add(path.resolve())
    return sorted(files)


def host_file_vars(node, found: dict) -> None:
    """Variables of an inventory hosts file: each host's and each group's `vars`."""
    if not isinstance(node, dict):
        return
    for host_vars in (node.get("hosts") or {}).values():
        found.update(host_vars or {})
    found.update(node.get("vars") or {})
    for child in (node.get("children") or {}).values():
        host_file_vars(child, found)


def file_vars(path: Path) -> dict:
    doc = load(path)
    if not isinstance(doc, dict):
        return {}  # empty, or an ansible-vault encrypted file (one string)
    if path.name in ("hosts.yml", "hosts.yaml"):
        found: dict = {}
        for group in doc.values():
            host_file_vars(group, found)
        return found
    return doc


@cache
def inventory_settings() -> dict[str, list[tuple[str, object]]]:
    """name -> [(file, value)] of every variable the inventories set."""
    settings: dict[str, list[tuple[str, object]]] = {}
    for path in inventory_files():
        for name, value in file_vars(path).items():
            settings.setdefault(name, []).append((str(path.relative_to(REPO)), value))
    return settings


def strip_comments(path: Path, text: str) -> str:
    if path.suffix == ".py":
        return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    if path.suffix == ".j2" or "templates" in path.parts:
        return re.sub(r"\{#.*?#\}", "", text, flags=re.S)  # a template's own # lines are output (and may read)
    # YAML: whole-line comments and trailing ` # ...` comments
    return "\n".join(re.sub(r"\s+#\s.*$", "", line) for line in text.splitlines() if not line.lstrip().startswith("#"))


@cache
def code_text() -> str:
    """What the code reads: every code file without its comments, plus the values (not the names) of the
    inventory files, where one setting can read another (vault_* in production, lab_state_dir in the lab)."""
    parts = []
    for pattern in CODE_GLOBS:
        for path in sorted(REPO.glob(pattern)):
            if path.is_file():
                parts.append(strip_comments(path, path.read_text()))
    for path in inventory_files():
        parts.append(strip_comments(path, path.read_text()))
    return "\n".join(parts)


def is_read(name: str, attribute: bool = False) -> bool:
    """`name` occurs in the code other than as a YAML key being set (`name:`). `attribute`: a dict key, which
    may be read as `.name` too."""
    before = r"(?<![\w-])" if attribute else r"(?<![\w.-])"
    return re.search(before + re.escape(name) + r"(?![\w-])(?!\s*:(?:\s|$))", code_text(), re.M) is not None


def test_every_inventory_setting_is_read():
    unread = []
    for name, where in sorted(inventory_settings().items()):
        if name.startswith("ansible_"):
            continue  # connection variables: Ansible itself reads them
        if not is_read(name):
            unread.append(f"{name} (set in {', '.join(sorted({f for f, _ in where}))})")
            continue
        for file, value in where:
            if isinstance(value, dict):
                unread += [f"{name}.{key} (set in {file})" for key in value if not is_read(str(key), attribute=True)]
    assert not unread, ("settings that no role, playbook, template or module reads (editing them changes nothing): "
                        + "; ".join(unread))


def test_the_check_finds_a_dead_setting():
    """The check itself: names the issue found dead, and a made-up one, are unread; real ones are read."""
    assert not is_read("backup_schedules") and not is_read("models_versions", attribute=True)
    assert not is_read("no_role_reads_this_setting")
    assert is_read("backup_retention") and is_read("daily_days", attribute=True)
    assert is_read("vault_redis_password") and is_read("lab_state_dir")


def role_defaults() -> dict[str, dict]:
    return {role: load(REPO / "roles" / role / "defaults" / "main.yml") or {}
            for role in ROLES if (REPO / "roles" / role / "defaults" / "main.yml").is_file()}


def play_level_vars(path: Path) -> list[tuple[str, str]]:
    """(play name, variable) for each play's `vars:` and each role's `vars:` / parameters in its `roles:`."""
    found = []
    for play in load(path) or []:
        if not isinstance(play, dict) or "hosts" not in play:
            continue
        label = play.get("name", "?")
        found += [(label, name) for name in play.get("vars") or {}]
        for role in play.get("roles") or []:
            if isinstance(role, dict):
                found += [(label, name) for name in role.get("vars") or {}]
                found += [(label, name) for name in role if name not in ROLE_KEYWORDS]
    return found


def test_no_play_level_vars_shadow_inventory_or_role_defaults():
    settings = set(inventory_settings())
    defaults = {name: role for role, names in role_defaults().items() for name in names}
    shadowed = []
    for path in sorted((REPO / "playbooks").glob("*.yml")):
        for play, name in play_level_vars(path):
            if name in settings or name in defaults:
                where = "an inventory" if name in settings else f"roles/{defaults[name]}/defaults"
                shadowed.append(f"playbooks/{path.name} ({play}): vars {name} overrides {where}")
    assert not shadowed, ("play-level vars win over the inventory, silently; move the default into the role's "
                          "defaults/main.yml: " + "; ".join(shadowed))


def test_role_vars_are_internal():
    """A role's vars/main.yml wins over the inventory too: its names must not be settings."""
    settings = set(inventory_settings())
    defaults = {name for names in role_defaults().values() for name in names}
    clashes = []
    for path in sorted((REPO / "roles").glob("*/vars/main.yml")):
        clashes += [f"{path.relative_to(REPO)}: {name}" for name in load(path) or {} if name in settings | defaults]
    assert not clashes, f"role vars that shadow a setting: {clashes}"


@pytest.mark.parametrize("role", ROLES)
def test_argument_specs_document_every_default(role):
    spec_path = REPO / "roles" / role / "meta" / "argument_specs.yml"
    assert spec_path.is_file(), f"roles/{role}: no meta/argument_specs.yml"
    specs = load(spec_path)["argument_specs"]
    assert "main" in specs, f"roles/{role}: argument_specs has no main entry point"
    for entry, spec in specs.items():
        assert spec.get("short_description"), f"roles/{role} {entry}: short_description"
        for name, option in spec.get("options", {}).items():
            where = f"roles/{role} {entry}: {name}"
            assert option.get("type") and option.get("description"), f"{where} needs type and description"
            assert not (option.get("required") and "default" in option), f"{where} is required and has a default"
    options = {name: option for spec in specs.values() for name, option in spec.get("options", {}).items()}
    defaults = role_defaults().get(role, {})
    undocumented = sorted(set(defaults) - set(options))
    assert not undocumented, f"roles/{role}: defaults not in meta/argument_specs.yml: {undocumented}"
    differ = [name for name, value in defaults.items() if options[name].get("default") != value]
    assert not differ, f"roles/{role}: argument_specs default differs from defaults/main.yml for {differ}"


def test_inventory_backup_components_are_components_the_backup_role_knows():
    known = set(load(REPO / "roles" / "backup" / "vars" / "main.yml")["backup_known_components"])
    wrong = [f"{file}: {sorted(set(value) - known)}"
             for file, value in inventory_settings().get("backup_components", []) if set(value) - known]
    assert not wrong, f"backup_components names what roles/backup has no job for (it knows {sorted(known)}): {wrong}"
