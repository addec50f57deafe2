"""The restore journal's filters (module_utils/llmops_common.py ``journal_*``), for roles/restore.

``{{ old | restore_journal_begin(run, set_id, set_path, tag, components) }}`` the header of a new run's journal;
``{{ journal | restore_journal_summary }}`` one line per store a killed run left unfinished;
``{{ journal | restore_journal_rollback }}`` what ``-e step=rollback`` puts back. The logic lives once, in
module_utils, which this filter loads by path (as roles/common's ``llmops_layout`` filter does).
"""

from __future__ import annotations

import importlib.util
import os

_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "module_utils", "llmops_common.py")


def _load():
    spec = importlib.util.spec_from_file_location("llmops_common_journal", os.path.normpath(_SOURCE))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_COMMON = _load()


def restore_journal_begin(old, run, set_id, set_path, tag, components):
    """The header of a new restore run's journal (``journal_begin``)."""
    return _COMMON.journal_begin(old or None, run, set_id, set_path, tag, components)


def restore_journal_summary(journal):
    """What a killed restore left, per store, and what to do (``journal_summary``)."""
    return _COMMON.journal_summary(journal or None)


def restore_journal_rollback(journal):
    """The stores ``-e step=rollback`` puts back, newest first (``journal_rollback_plan``)."""
    return _COMMON.journal_rollback_plan(journal or None)


class FilterModule:
    """The restore journal's filters."""

    def filters(self):
        return {"restore_journal_begin": restore_journal_begin, "restore_journal_summary": restore_journal_summary,
                "restore_journal_rollback": restore_journal_rollback}
