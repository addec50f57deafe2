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

The restore journal (``journal_*``): what each step of a restore run did to the live data, so that the next run of
restore.yml can say what a killed restore left (old data, new data, or a mix) and roll it back.

Stdlib only and free of Ansible imports; modules import it as
``from ansible.module_utils.llmops_common import LlmopsError``.
"""

from __future__ import annotations

import datetime
import json
import os
import secrets
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


def encryption_argument_spec():
    """``encrypt``, ``encrypt_to`` and ``age_identity`` (fragment ``llmops.encryption``); applied by
    ``use_encryption``."""
    return dict(encrypt=dict(type="bool", default=False), encrypt_to=dict(type="list", elements="str", default=[]),
                age_identity=dict(type="str", no_log=True))


def use_encryption(params):
    """Make this module process encrypt and decrypt as its ``encrypt`` / ``encrypt_to`` / ``age_identity`` say
    (``llmops_pipeline.configure_age``): with ``encrypt``, to the recipient of the identity's first key plus
    ``encrypt_to``.
    ``InvalidValueError`` when a recipient or the identity is not an age key, or ``encrypt`` has no identity (a
    backup reads back what it wrote)."""
    from ansible.module_utils.llmops_pipeline import configure_age, identity_recipients

    identity = params.get("age_identity") or None
    recipients = []
    if params.get("encrypt"):
        if not identity:
            raise InvalidValueError("encryption is on (backup_encryption) but no age identity was given: set "
                                    "backup_age_identity (the vault's vault_backup_age_identity, age-keygen's output)")
        # an identity may hold several keys (a rotation keeps the old one after the new): the first one's
        recipients = identity_recipients(identity)[:1] + [r for r in params.get("encrypt_to") or [] if r]
    configure_age(recipients, identity)


def timeout_argument_spec(default=0):
    """``timeout`` in seconds, V(0) = no limit (fragment ``llmops.timeout``)."""
    return dict(timeout=dict(type="int", default=default))


def argument_spec(store=None, compression=False, default_timeout=None, restore=None, encryption=None, **options):
    """A module's whole argument spec: its own ``options`` plus the shared ones it asks for, the connection
    options of ``store`` (``connection_argument_spec``), ``compression_argument_spec()``,
    ``encryption_argument_spec()`` (by default with ``compression`` or ``restore``: what a module compresses it
    encrypts, what a restore reads it decrypts), ``timeout`` with
    ``default_timeout`` as its default (``timeout_argument_spec``) and, for a restore,
    ``restore_argument_spec(**restore)``. An option defined twice is a bug: ``ValueError``."""
    spec = {}
    if encryption is None:
        encryption = bool(compression or restore)
    for part in (connection_argument_spec(store) if store else {}, compression_argument_spec() if compression else {},
                 encryption_argument_spec() if encryption else {},
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
        journal=dict(type="path"),
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
    journal = module.params.get("journal") if not module.check_mode else None

    def note(status):
        if journal:
            try:
                journal_step(journal, journal_component(store, module.params), step, status,
                             module.params.get("safety_tag"), verified=step in SELF_VERIFYING.get(store[:5], ()))
            except (LlmopsError, OSError) as exc:
                module.warn("cannot update the restore journal %s: %s" % (journal, exc))

    note("running")
    try:
        use_encryption(module.params)
        result = dict(handlers[step](module.params, module.check_mode))
    except StepFailed as exc:
        note("failed")
        module.fail_json(msg="%s restore step %s failed: %s. Next: %s" % (store, step, exc, NEXT_STEP[step]),
                         step=step, **exc.result)
    except (LlmopsError, OSError) as exc:
        note("failed")
        module.fail_json(msg="%s restore step %s failed: %s. Next: %s" % (store, step, exc, NEXT_STEP[step]),
                         step=step)
    note("done")
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


# --------------------------------------------------------------------------------------------
# durable file helpers


def write_file_atomic(path, data, mode=0o600):
    """Write ``data`` (bytes) to ``path`` via a 0600 temp file, fsync and rename."""
    tmp = "%s.tmp-%s" % (path, secrets.token_hex(6))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.rename(tmp, path)


def write_json(path, obj):
    """Write ``obj`` as sorted, indented JSON (0600, atomic)."""
    write_file_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))


# --------------------------------------------------------------------------------------------
# restore journal: <backup_root>/.restore-journal.json (LAYOUT restore_journal)
#
# One record per restore run: ``{version, run, set_id, set_path, safety_tag, started, components: {component:
# {step, status, live, safety_tag, time}}, original_tags: {component: tag}}``. restore.yml writes the run's header
# before the first step (``journal_begin``); ``run_restore_step`` updates the component's entry before a step
# (``running``) and after it (``done`` / ``failed``). ``live`` says what the store holds after that: the old data,
# the new data (verified or not), or a mix. A run that is killed leaves its journal as it was: the next restore.yml
# reads it (``journal_interrupted``, ``journal_summary``) and says what to do; ``-e step=rollback`` puts the safety
# copies back (``journal_rollback_plan``). ``original_tags`` keeps, across runs that were killed one after the other,
# the tag of the safety copy that holds each store's data from before the first of them.

JOURNAL_VERSION = 1
LIVE_OLD = "old"
LIVE_NEW = "new, not verified yet"
LIVE_VERIFIED = "new, verified"
LIVE_MIX = "partly replaced (a mix of old and new)"
LIVE_PUT_BACK = "old (the safety copy was put back)"
LIVE_PUTTING_BACK = "partly put back (a mix of old and new)"
LIVE_BAD = "new, but it FAILED verification"
# the steps that change the live data, and what it is after them
CHANGING_STEPS = ("swap", "replay", "load")
# steps that verify what they put in place before they end (files_restore's swap checks every tree hash)
SELF_VERIFYING = {"files": ("swap",)}
# run_restore_step's store names -> restore.yml's component names
JOURNAL_COMPONENTS = {"MariaDB": "mariadb", "PostgreSQL": "postgres", "Redis": "redis", "Qdrant": "qdrant",
                      "search": "search"}


def journal_component(store, params):
    """The component name restore.yml uses for ``store`` (files_restore: by its ``mode``)."""
    if store.startswith("files"):
        return {"tree": "uploads"}.get(params.get("mode"), params.get("mode") or "files")
    return JOURNAL_COMPONENTS.get(store, store.lower())


def journal_live(previous, step, status):
    """What the live data is after ``step`` ended with ``status`` (running, done, failed), given ``previous``."""
    if step in CHANGING_STEPS:
        if status == "done":
            return LIVE_NEW
        return LIVE_MIX  # running (killed in it) or failed part-way
    if step == "verify":
        return {"done": LIVE_VERIFIED, "failed": LIVE_BAD}.get(status, previous)
    if step == "rollback":
        return LIVE_PUT_BACK if status == "done" else LIVE_PUTTING_BACK
    return previous  # stage and cleanup leave the live data as it is


def _now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def read_journal(path):
    """The journal at ``path`` (None when there is none); ``LlmopsError`` when it cannot be read."""
    return load_state(path)


def write_journal(path, journal):
    """Write ``journal`` to ``path`` atomically (0600, fsynced, its folder too), so that a kill leaves the old or the
    new record."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, mode=0o700, exist_ok=True)
    write_json(path, journal)
    dirfd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)


def journal_step(path, component, step, status, tag=None, verified=False):
    """Record that ``component``'s ``step`` is ``running`` / ``done`` / ``failed`` (a journal that does not exist yet
    is started: a module run outside restore.yml); ``verified``: the step checked the data it put in place."""
    journal = read_journal(path) or {"version": JOURNAL_VERSION, "run": None, "safety_tag": tag, "components": {},
                                     "original_tags": {}, "started": _now()}
    entry = journal.setdefault("components", {}).setdefault(component, {"live": LIVE_OLD})
    live = journal_live(entry.get("live", LIVE_OLD), step, status)
    entry.update(step=step, status=status, live=LIVE_VERIFIED if verified and live == LIVE_NEW else live,
                 safety_tag=(tag or "").lstrip("._") or journal.get("safety_tag"), time=_now())
    write_journal(path, journal)
    return journal


def _settled(entry):
    """Whether a component's entry needs nothing more: restored and verified, put back, or never changed."""
    return entry.get("live") in (LIVE_VERIFIED, LIVE_PUT_BACK, LIVE_OLD) and entry.get("status") != "running" \
        or entry.get("live") == LIVE_OLD and entry.get("step") == "stage"


def journal_interrupted(journal):
    """``{component: entry}`` of a journal's components whose restore did not end (killed, or failed without its
    rollback): live data new but not verified, a mix, or a step still marked running."""
    return {name: entry for name, entry in sorted(((journal or {}).get("components") or {}).items())
            if not _settled(entry) or (entry.get("status") == "running" and entry.get("step") != "cleanup")}


def journal_begin(old, run, set_id, set_path, tag, components, sources=None):
    """The header of a new run's journal; the safety tags of the stores a killed run left changed (``old``) are kept
    in ``original_tags``, so that a rollback after this run too still finds the data from before them. ``sources``:
    the set each component is restored from (a composed restore point; its path, or the plan's source entry with
    ``set_path``), else ``set_path`` for all."""
    original = dict((old or {}).get("original_tags") or {})
    for name, entry in journal_interrupted(old).items():
        if entry.get("live") != LIVE_OLD:
            original.setdefault(name, entry.get("safety_tag") or (old or {}).get("safety_tag"))
    return {"version": JOURNAL_VERSION, "run": run, "set_id": set_id, "set_path": set_path,
            "safety_tag": (tag or "").lstrip("._"), "components_planned": list(components or []),
            "sources": {name: src.get("set_path") if isinstance(src, dict) else src
                        for name, src in (sources or {}).items()},
            "components": {}, "original_tags": original, "started": _now(),
            "previous": {k: (old or {}).get(k) for k in ("run", "set_id", "safety_tag")} if old else None}


def journal_rollback_plan(journal):
    """``[{component, safety_tag, set_path, step, live}]``: what ``-e step=rollback`` puts back, newest first - each
    component that a run changed and did not finish, with the tag of the safety copy that holds its old data."""
    journal = journal or {}
    out = []
    for name, entry in journal_interrupted(journal).items():
        if entry.get("live") == LIVE_OLD:
            continue  # killed before it changed anything
        tag = (journal.get("original_tags") or {}).get(name) or entry.get("safety_tag") or journal.get("safety_tag")
        set_path = (journal.get("sources") or {}).get(name) or journal.get("set_path")
        out.append({"component": name, "safety_tag": tag, "set_path": set_path,
                    "step": entry.get("step"), "live": entry.get("live"), "time": entry.get("time")})
    return sorted(out, key=lambda item: item.get("time") or "", reverse=True)


def journal_summary(journal):
    """One line per unfinished component of ``journal`` for the operator: what it holds now and what to do."""
    lines = []
    for name, entry in journal_interrupted(journal).items():
        tag = entry.get("safety_tag") or (journal or {}).get("safety_tag")
        when = "during" if entry.get("status") == "running" else "after"
        live = entry.get("live")
        if live == LIVE_OLD:
            what = "nothing live was changed yet (the store holds the OLD data); run the restore again to restore it"
        elif live in (LIVE_NEW, LIVE_BAD):
            what = ("the store holds the NEW data, %s; run the restore again to finish it, or roll back with "
                    "-e step=rollback to get the old data back" % ("not yet verified" if live == LIVE_NEW else live))
        else:
            what = ("the store's data is %s; do not use it as it is: run the restore again (new data), or roll back "
                    "with -e step=rollback (old data)" % live.upper())
        lines.append("a restore of %s (set %s, tag %s) was interrupted %s `%s`: %s (its service may be stopped: "
                     "either command starts it)" % (name, (journal or {}).get("set_id"), tag, when, entry.get("step"),
                                                    what))
    return lines
