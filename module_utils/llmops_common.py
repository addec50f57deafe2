"""What every llmops module shares: the base of the errors module_utils raise, the argument specs of the
options that mean the same in every module, and the restores' step vocabulary with its one runner
(``RESTORE_STEPS``, ``run_restore_step``).

Errors: every exception class of ``module_utils`` derives from ``LlmopsError``, an operational failure
whose message says what went wrong and what to do. A module reports ``LlmopsError`` (and ``OSError``,
a file system that refuses) with ``fail_json``; anything else (``KeyError``, ``TypeError``...) is a
bug and keeps its traceback.

Options: each ``*_argument_spec`` below has a doc fragment of the same name in
``module_utils/doc_fragments/llmops.py`` (``extends_documentation_fragment: [llmops.connection]`` and so
on), so an option's name, type, default and text are written once. Connection options are the same
for every store: ``login_host``, ``login_port``, ``login_user``, ``login_password``,
``login_unix_socket``, and ``container`` / ``container_user`` for where the store's tools run. The
names the modules used before stay as aliases (``host``, ``port``, ``password``).

Stdlib only and free of Ansible imports; modules import it as
``from ansible.module_utils.llmops_common import LlmopsError``.
"""

from __future__ import annotations

import json
import os
import shutil


class LlmopsError(Exception):
    """Base of every error the llmops module_utils raise on purpose; the message tells the operator what to do."""


class InvalidValueError(LlmopsError, ValueError):
    """A value given to a module (an option, a time, a policy) is not acceptable (also a ``ValueError``)."""


# --------------------------------------------------------------------------------------------
# argument specs (the doc fragment of each is module_utils/doc_fragments/llmops.py, upper-cased name)

# Where each store's tools run and how they log in, by default (fragments llmops.mariadb, .postgres, .redis).
STORE_DEFAULTS = {
    "mariadb": {"container": "llmops-appdb-mariadb-1", "login_user": "root", "login_port": 3306},
    "postgres": {"container": "llmops-appdb-postgres-1", "container_user": "postgres", "login_user": "postgres",
                 "login_port": 5432},
    "redis": {"container": "llmops-appdb-redis-1", "login_port": 6379},
}


def connection_argument_spec(store):
    """The connection options of a store module (fragments ``llmops.connection`` + ``llmops.<store>``)."""
    defaults = STORE_DEFAULTS[store]
    return dict(
        container=dict(type="str", default=defaults["container"]),
        container_user=dict(type="str", default=defaults.get("container_user")),
        login_user=dict(type="str", default=defaults.get("login_user")),
        login_password=dict(type="str", no_log=True, aliases=["password"]),
        login_host=dict(type="str", aliases=["host"]),
        login_port=dict(type="int", default=defaults["login_port"], aliases=["port"]),
        login_unix_socket=dict(type="str"),
    )


def connection_params(params):
    """The ``conn`` dict the store's module_utils take (user, host, port, socket) from a module's params
    (``llmops_exec.connection_of`` adds where the tools run and the password)."""
    return {"user": params["login_user"], "host": params["login_host"], "port": params["login_port"],
            "socket": params["login_unix_socket"]}


def compression_argument_spec():
    """``zstd_level`` and ``zstd_threads`` (fragment ``llmops.compression``)."""
    return dict(zstd_level=dict(type="int", default=3), zstd_threads=dict(type="int", default=0))


def timeout_argument_spec(default=0):
    """``timeout`` in seconds, V(0) = no limit (fragment ``llmops.timeout``)."""
    return dict(timeout=dict(type="int", default=default))


def argument_spec(store=None, compression=False, default_timeout=None, restore=None, **options):
    """A module's whole argument spec: its own ``options`` plus the shared ones it asks for, the connection
    options of ``store`` (``connection_argument_spec``), ``compression_argument_spec()``, ``timeout`` with
    ``default_timeout`` as its default (``timeout_argument_spec``) and, for a restore,
    ``restore_argument_spec(**restore)``. An option defined twice is a bug: ``ValueError``."""
    spec = {}
    for part in (connection_argument_spec(store) if store else {}, compression_argument_spec() if compression else {},
                 timeout_argument_spec(default_timeout) if default_timeout is not None else {},
                 restore_argument_spec(**restore) if restore else {}, options):
        clash = sorted(set(spec) & set(part))
        if clash:
            raise ValueError("option(s) %s defined twice in one argument spec" % ", ".join(clash))
        spec.update(part)
    return spec


def qdrant_argument_spec():
    """How a Qdrant module reaches the server over HTTP and which collections (fragment ``llmops.qdrant``)."""
    return dict(
        url=dict(type="str", default="http://127.0.0.1:6333"),
        api_key=dict(type="str", no_log=True),
        collections=dict(type="list", elements="str"),
        retries=dict(type="int", default=3),
        **timeout_argument_spec(600),
    )


def search_argument_spec():
    """How a search (Elasticsearch) module reaches the server over HTTP and which indices (fragment
    ``llmops.search``)."""
    return dict(
        url=dict(type="str", default="http://127.0.0.1:9200"),
        login_user=dict(type="str", default="elastic"),
        login_password=dict(type="str", no_log=True, aliases=["password"]),
        indices=dict(type="list", elements="str"),
        retries=dict(type="int", default=3),
        **timeout_argument_spec(600),
    )


def restore_argument_spec(steps, default_step=None):
    """``step`` (one of ``steps``, a part of ``RESTORE_STEPS`` in its order), ``set_path``, ``staging``,
    ``keep_safety_copy`` (fragment ``llmops.restore``) and ``safety_tag`` (fragment ``llmops.safety``; its old
    names ``safety_suffix`` and ``safety_name`` are aliases). With a ``default_step``, ``step`` and ``set_path``
    are optional (the module says when it needs the set)."""
    unknown = [s for s in steps if s not in RESTORE_STEPS]
    if unknown or list(steps) != [s for s in RESTORE_STEPS if s in steps]:
        raise ValueError("restore steps %s: each must be one of %s, in that order" % (steps, RESTORE_STEPS))
    step = dict(type="str", choices=list(steps), required=True) if default_step is None else \
        dict(type="str", choices=list(steps), default=default_step)
    return dict(
        step=step,
        set_path=dict(type="path", required=default_step is None),
        staging=dict(type="path", required=True),
        keep_safety_copy=dict(type="bool", default=True),
        safety_tag=dict(type="str", default="pre-restore", aliases=["safety_suffix", "safety_name"]),
    )


# --------------------------------------------------------------------------------------------
# restore steps: one vocabulary, one runner

# The steps of every restore, in order; each restore module runs those its store needs (its description
# says which) and the restore role calls them in this order:
#   stage     unpack and prepare the set's artefacts in ``staging``, checksums checked; nothing live changes
#   swap      keep a safety copy of what is replaced and put the staged data in place (service stopped)
#   replay    roll forward on top of the restored data (MariaDB: archived binary logs up to target_time)
#   load      load the set into the running store (its safety copy is kept inside the store)
#   verify    compare the live data with the set's fingerprint
#   rollback  put the safety copy back
#   cleanup   remove the staging folder, and the safety copy unless keep_safety_copy
RESTORE_STEPS = ("stage", "swap", "replay", "load", "verify", "rollback", "cleanup")

# What the operator does next when a step fails (restore.yml and drill.yml run rollback themselves after a
# failed swap, replay, load or verify).
NEXT_STEP = {
    "stage": "nothing live was changed; fix the cause, then run the restore again",
    "swap": "run step=rollback to put the safety copy back (restore.yml does), then fix the cause",
    "replay": "run step=rollback to put the safety copy back (restore.yml does), or restore without target_time",
    "load": "run step=rollback to put the safety copy back (restore.yml does), then fix the cause",
    "verify": "the restored data is not the set's: run step=rollback (restore.yml does) and restore another set",
    "rollback": "the safety copy was not put back: it is still where the message says; put it back by hand "
                "before starting the service",
    "cleanup": "the restore itself is done; remove the staging folder (and the safety copy) by hand",
}


class StepFailed(LlmopsError):
    """A step that ran and found a failure, with the result that shows it (``differences``...)."""

    def __init__(self, msg, **result):
        super().__init__(msg)
        self.result = result


def safety_tag(params):
    """The restore's safety-copy tag: ``safety_tag`` (or an old ``safety_suffix`` / ``safety_name`` value, whose
    leading ``.`` or ``_`` is dropped). Each store names its safety copy from it (``<datadir>.<tag>``,
    ``<database>__<tag>``...), so that one restore gives every store the same tag."""
    tag = (params.get("safety_tag") or "").lstrip("._")
    if not tag or "/" in tag or "\0" in tag or tag in (".", ".."):
        raise InvalidValueError("safety_tag %r is not usable as a name: give a word such as pre-restore-20260131_0300"
                                % params.get("safety_tag"))
    return tag


def run_restore_step(module, store, handlers):
    """Run the step ``module.params["step"]`` names and exit the module.

    ``handlers[step](params, check_mode)`` returns the module's result: ``changed`` and the step's values
    (``warnings``: messages for ``module.warn``); in check mode it changes nothing and says what it would do.
    ``StepFailed``, ``LlmopsError`` and ``OSError`` fail the module with the store, the step and what to do
    next (``NEXT_STEP``); any other exception is a bug and keeps its traceback."""
    step = module.params["step"]
    try:
        result = dict(handlers[step](module.params, module.check_mode))
    except StepFailed as exc:
        module.fail_json(msg="%s restore step %s failed: %s. Next: %s" % (store, step, exc, NEXT_STEP[step]),
                         step=step, **exc.result)
    except (LlmopsError, OSError) as exc:
        module.fail_json(msg="%s restore step %s failed: %s. Next: %s" % (store, step, exc, NEXT_STEP[step]),
                         step=step)
    for warning in result.pop("warnings", None) or []:
        module.warn(warning)
    module.exit_json(step=step, **result)


# --------------------------------------------------------------------------------------------
# what restores do alike


def load_state(path, default=None):
    """The JSON a step left for the next ones (``default`` when there is none); ``LlmopsError`` when damaged."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return default
    except ValueError as exc:
        raise LlmopsError("cannot read %s, the record an earlier step of this restore left (%s): inspect it, then "
                          "remove the staging folder and run the restore again" % (path, exc)) from exc


def remove_paths(paths, dry_run=False):
    """Remove each of ``paths`` that exists (folders with what they hold); return those (that would be) removed."""
    removed = [path for path in paths if path and os.path.lexists(path)]
    if not dry_run:
        for path in removed:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
    return removed
