"""One layout of the backup root: module_utils/llmops_layout.py names every path, the roles read the same dict
through roles/common's `llmops_layout` filter, and no other code joins a layout name to the backup root."""

from __future__ import annotations

import importlib.util
import re

import pytest
from ansible.module_utils.llmops_layout import LAYOUT, backup_layout, layout_path

from tests.conftest import REPO

FILTER = REPO / "roles" / "common" / "filter_plugins" / "llmops_layout.py"


def load_filter():
    spec = importlib.util.spec_from_file_location("llmops_layout_filter", FILTER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.FilterModule().filters()["llmops_layout"]


def test_every_path_is_under_the_root_and_distinct():
    layout = backup_layout("/backup/")
    assert layout["root"] == "/backup" and layout["binlogs"] == "/backup/binlogs"
    assert layout["audit_log"] == "/backup/audit.log" and layout["state_file"] == "/backup/.backup_state.json"
    assert len(set(layout.values())) == len(LAYOUT)
    assert all(path == "/backup" or path.startswith("/backup/") for path in layout.values())
    with pytest.raises(ValueError, match="backup_root is empty"):
        backup_layout("")
    with pytest.raises(KeyError):
        layout_path("/backup", "nonsense")


def test_the_roles_filter_is_the_module_utils_layout(tmp_path):
    assert load_filter()(str(tmp_path)) == backup_layout(str(tmp_path))


def test_the_roles_read_the_layout_variable():
    defaults = (REPO / "roles" / "common" / "defaults" / "main.yml").read_text()
    assert 'backup_layout: "{{ backup_root | llmops_layout }}"' in defaults


NAMES = "|".join(re.escape(rel) for rel in LAYOUT.values() if rel)


@pytest.mark.parametrize("folder", ["library", "module_utils", "roles", "playbooks"])
def test_no_other_code_joins_a_layout_name_to_the_backup_root(folder):
    joined = re.compile(r"(backup_root\s*\}\}/|join\([^)\n]*root[^)\n]*,\s*[\"'])(" + NAMES + r")\b")
    found = []
    for path in sorted((REPO / folder).rglob("*")):
        if path.suffix not in (".py", ".yml", ".j2") or path.name == "llmops_layout.py":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if joined.search(line):
                found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert found == [], "ask module_utils/llmops_layout.py (backup_layout) instead:\n" + "\n".join(found)
