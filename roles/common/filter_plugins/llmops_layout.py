"""The filters of the bundle's roles, over logic defined once in module_utils (loaded by path: the controller does not
import project module_utils by package name).

``{{ backup_root | llmops_layout }}`` is a dict of absolute paths (binlogs, audit_log, state_file...);
roles/common's ``backup_layout`` variable is that dict (module_utils/llmops_layout.py).

The restore journal (module_utils/llmops_common.py ``journal_*``), for roles/restore:
``{{ old | restore_journal_begin(run, set_id, set_path, tag, components, sources) }}`` a new run's journal header;
``{{ journal | restore_journal_summary }}`` one line per store a killed run left unfinished;
``{{ journal | restore_journal_rollback }}`` what ``-e step=rollback`` puts back.
"""

from __future__ import annotations

import importlib.util
import os

_MODULE_UTILS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "module_utils")


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.normpath(os.path.join(_MODULE_UTILS, name + ".py")))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_LAYOUT = _load("llmops_layout")
_COMMON = _load("llmops_common")


def llmops_layout(backup_root):
    """The layout of ``backup_root`` (see module_utils/llmops_layout.py)."""
    return _LAYOUT.backup_layout(backup_root)


def restore_journal_begin(old, run, set_id, set_path, tag, components, sources=None):
    """The header of a new restore run's journal (``journal_begin``)."""
    return _COMMON.journal_begin(old or None, run, set_id, set_path, tag, components, sources)


def restore_journal_summary(journal):
    """What a killed restore left, per store, and what to do (``journal_summary``)."""
    return _COMMON.journal_summary(journal or None)


def restore_journal_rollback(journal):
    """The stores ``-e step=rollback`` puts back, newest first (``journal_rollback_plan``)."""
    return _COMMON.journal_rollback_plan(journal or None)


class FilterModule:
    """The llmops filters."""

    def filters(self):
        return {"llmops_layout": llmops_layout,
                "restore_journal_begin": restore_journal_begin,
                "restore_journal_summary": restore_journal_summary,
                "restore_journal_rollback": restore_journal_rollback}
