"""``llmops_layout``: the backup root's layout, as the modules see it (module_utils/llmops_layout.py).

``{{ backup_root | llmops_layout }}`` is a dict of absolute paths (binlogs, audit_log, state_file...);
roles/common's ``backup_layout`` variable is that dict. The layout is defined once, in module_utils,
which this filter loads by path: the controller does not import project module_utils by package name.
"""

from __future__ import annotations

import importlib.util
import os

_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "module_utils", "llmops_layout.py")


def _load():
    spec = importlib.util.spec_from_file_location("llmops_layout", os.path.normpath(_SOURCE))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_LAYOUT = _load()


def llmops_layout(backup_root):
    """The layout of ``backup_root`` (see module_utils/llmops_layout.py)."""
    return _LAYOUT.backup_layout(backup_root)


class FilterModule:
    """The llmops filters."""

    def filters(self):
        return {"llmops_layout": llmops_layout}
