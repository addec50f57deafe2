"""Streaming backup pipeline: ``tool | zstd`` into a checksummed, atomically renamed file.

This is the one place where backup modules start external tools (``mariadb-backup``,
``pg_dump``, ``redis-cli --rdb``...) and turn their output into an artefact of a backup set.

``run_pipeline`` starts the tool from an argv list (never a shell), relays its stdout through a
small Python thread (which counts the uncompressed bytes) into ``zstd -q -T<n> -<level> -c``,
and reads the compressor's output in this process: every chunk updates ``hashlib.sha256`` and is
written to ``<dest>.tmp-<random>`` (created 0600 with ``O_EXCL``). The temp file is fsynced and
renamed onto ``dest`` only when every stage exited 0; otherwise it is removed and
``PipelineError`` names the failing stage, its exit code and the tail of its stderr.

``decompress_to`` is the reverse (``file -> zstd -d -> consumer``), verifying the sha256 of the
compressed file while it streams. ``hash_file`` hashes a file the same way.

Encryption at rest (``configure_age``): with recipients set, ``run_pipeline`` adds ``age -r <recipient>...``
after zstd (``tool | zstd | age``), so the artefact is an age file and its sha256 (the set's SHA256SUMS) is the
ciphertext's: checksums and HMACs are verified without the key. ``decompress_to`` sees the age header and
decrypts with ``age -d`` before zstd; the identity (the private key) reaches age through a pipe
(``-i /dev/fd/N``), never a file or a command line. A module process runs one task, so the module sets this once
from its options (``llmops_common.use_encryption``).

Stdlib only and free of Ansible imports so that tests can import it directly; modules import it as
``from ansible.module_utils.llmops_pipeline import run_pipeline``.
"""

from __future__ import annotations

import collections
import errno
import fcntl
import hashlib
import os
import re
import secrets
import signal
import subprocess
import threading
import time

try:
    from ansible.module_utils.llmops_common import InvalidValueError, LlmopsError
except ImportError:  # imported directly (tests) rather than through Ansible
    from module_utils.llmops_common import InvalidValueError, LlmopsError

CHUNK_SIZE = 1024 * 1024
STDERR_TAIL_BYTES = 2048
REDACTED = "********"
_F_SETPIPE_SZ = 1031  # Linux; larger pipes mean fewer, larger reads.
_SECRET_ENV_RE = re.compile(r"PASS|PWD|AUTH|TOKEN|SECRET|KEY|CREDENTIAL", re.IGNORECASE)


class PipelineError(LlmopsError):
    """A pipeline stage failed, timed out or the output could not be written.

    Attributes: ``stage`` (name of the failing stage), ``rc`` (its exit code, or None),
    ``stderr_tail`` (redacted), ``timed_out`` and ``result`` (a partial ``PipelineResult``).
    """

    def __init__(self, message, stage=None, rc=None, stderr_tail="", timed_out=False, result=None):
        super().__init__(message)
        self.stage = stage
        self.rc = rc
        self.stderr_tail = stderr_tail
        self.timed_out = timed_out
        self.result = result


class StageResult:
    """Outcome of one stage: its name, exit code and (redacted) stderr tail."""

    __slots__ = ("name", "rc", "stderr_tail")

    def __init__(self, name, rc=None, stderr_tail=""):
        self.name = name
        self.rc = rc
        self.stderr_tail = stderr_tail

    def as_dict(self):
        """Return a JSON-serialisable dict."""
        return {"name": self.name, "rc": self.rc, "stderr_tail": self.stderr_tail}


class PipelineResult:
    """What a pipeline moved: byte counts, sha256, duration and per-stage outcomes.

    For ``run_pipeline``: ``bytes_in`` is the tool's raw output, ``bytes_out`` and ``sha256``
    describe the file written. For ``decompress_to``: ``bytes_in`` and ``sha256`` describe the
    compressed file read, ``bytes_out`` the decompressed bytes handed to the consumer.
    """

    def __init__(self, path, compressed):
        self.path = path
        self.compressed = compressed
        self.encrypted = False
        self.bytes_in = 0
        self.bytes_out = 0
        self.sha256 = None
        self.duration = 0.0
        self.stages = []

    def as_dict(self):
        """Return a JSON-serialisable dict (suitable for ``exit_json``)."""
        return {
            "path": self.path,
            "compressed": self.compressed,
            "encrypted": self.encrypted,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "sha256": self.sha256,
            "duration": round(self.duration, 3),
            "stages": [s.as_dict() for s in self.stages],
        }


AGE_HEADER = b"age-encryption.org/v1\n"
_AGE_RECIPIENT_RE = re.compile(r"age1[02-9ac-hj-np-z]{58}")
_AGE = {"recipients": [], "identity": None, "age_path": "age"}


def configure_age(recipients=None, identity=None, age_path="age"):
    """Encrypt what ``run_pipeline`` compresses to ``recipients`` (age X25519 public keys, ``age1...``), and
    decrypt age artefacts in ``decompress_to`` with ``identity`` (the text of an age identity file,
    ``AGE-SECRET-KEY-1...``). Empty: artefacts are written in the clear, and an encrypted one cannot be read."""
    recipients = [str(r).strip() for r in (recipients or []) if str(r).strip()]
    bad = [r for r in recipients if not _AGE_RECIPIENT_RE.fullmatch(r)]
    if bad:
        raise InvalidValueError("not an age recipient (age1 followed by 58 characters): %s" % ", ".join(bad))
    if identity is not None and "AGE-SECRET-KEY-1" not in str(identity):
        raise InvalidValueError("the age identity holds no AGE-SECRET-KEY-1... line (age-keygen's output)")
    _AGE.update(recipients=recipients, identity=str(identity) if identity else None, age_path=age_path)


def identity_recipients(identity, age_keygen="age-keygen"):
    """The recipients (public keys) of an age identity's text (``age-keygen -y``, the key on stdin)."""
    proc = subprocess.run([age_keygen, "-y"], input=str(identity).encode(), capture_output=True,  # noqa: S603
                          check=False, timeout=30)
    if proc.returncode != 0:
        raise InvalidValueError("age-keygen -y could not read the age identity (exit %d)" % proc.returncode)
    return proc.stdout.decode().split()


def age_recipients():
    """The recipients ``run_pipeline`` encrypts to now (``[]``: no encryption)."""
    return list(_AGE["recipients"])


def is_encrypted(path):
    """Whether the file at ``path`` starts with the age header."""
    with open(path, "rb") as handle:
        return handle.read(len(AGE_HEADER)) == AGE_HEADER


def _identity_fd():
    """A pipe's read end holding the configured identity (``PipelineError``, stage ``decrypt``, without one)."""
    if not _AGE["identity"]:
        raise PipelineError("the artefact is encrypted (age) and no identity was given: set backup_age_identity "
                            "(the vault's vault_backup_age_identity) for this run", stage="decrypt")
    data = _AGE["identity"].encode()
    if len(data) > 60000:
        raise InvalidValueError("the age identity is too long (%d bytes)" % len(data))
    rfd, wfd = os.pipe()
    try:
        _write_all(wfd, data if data.endswith(b"\n") else data + b"\n")
    finally:
        os.close(wfd)
    return rfd


def redact_text(text, redact):
    """Replace every non-empty string of ``redact`` in ``text`` by ``********``."""
    if not text:
        return text
    for secret in sorted({s for s in (redact or ()) if s}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def hash_file(path, chunk_size=CHUNK_SIZE):
    """Return ``(sha256_hex, size)`` of the file at ``path``, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    size = 0
    buf = bytearray(chunk_size)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as handle:
        while True:
            n = handle.readinto(buf)
            if not n:
                break
            digest.update(view[:n])
            size += n
    return digest.hexdigest(), size


def zstd_argv(zstd_path="zstd", level=3, threads=0, decompress=False):
    """Return the compressor (or decompressor) argv used by the pipelines."""
    if decompress:
        return [zstd_path, "-q", "-d", "-c"]
    if not isinstance(level, int) or isinstance(level, bool) or not 1 <= level <= 19:
        raise InvalidValueError("zstd_level must be an integer from 1 to 19, got %r" % (level,))
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 0:
        raise InvalidValueError("zstd_threads must be an integer >= 0 (0 = one per core), got %r" % (threads,))
    return [zstd_path, "-q", "-T%d" % threads, "-%d" % level, "-c"]


# --------------------------------------------------------------------------------------------
# internals


class _Tail:
    """Bounded buffer keeping the last bytes of a stream (stderr), drained by a thread."""

    def __init__(self, limit):
        self.limit = limit
        self.chunks = collections.deque()
        self.size = 0
        self.lock = threading.Lock()

    def add(self, data):
        with self.lock:
            self.chunks.append(data)
            self.size += len(data)
            while self.size - len(self.chunks[0]) >= self.limit:
                self.size -= len(self.chunks.popleft())

    def text(self, redact, max_chars):
        raw = b"".join(self.chunks)[-self.limit:]
        text = redact_text(raw.decode("utf-8", "replace"), redact)
        return text[-max_chars:]


class _Stage:
    """A started process with a drained stderr."""

    def __init__(self, name, proc, tail_limit):
        self.name = name
        self.proc = proc
        self.tail = _Tail(tail_limit)
        self.thread = None
        if proc.stderr is not None:
            self.thread = threading.Thread(target=_drain, args=(proc.stderr, self.tail), daemon=True)
            self.thread.start()


def _drain(stream, tail):
    """Read ``stream`` to EOF into ``tail`` (never blocks the producer)."""
    try:
        while True:
            data = stream.read(65536)
            if not data:
                break
            tail.add(data)
    except (OSError, ValueError):
        pass
    finally:
        _close(stream)


def _close(stream):
    """Close ``stream``; an ``OSError`` (the other end is gone) does not matter any more."""
    try:
        stream.close()
    except OSError:
        pass


def _grow_pipe(fileobj):
    """Best effort: enlarge a pipe to 1 MiB so reads come in bigger chunks."""
    try:
        fcntl.fcntl(fileobj.fileno(), _F_SETPIPE_SZ, CHUNK_SIZE)
    except (OSError, AttributeError, ValueError):
        pass


def _write_all(fd, data):
    """Write all of ``data`` to ``fd``."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class _Relay(threading.Thread):
    """Copy ``src`` to ``dst`` counting bytes; closes both ends when done.

    A downstream stage that exits early gives EPIPE here: the relay stops and closes ``src`` so
    the upstream stage gets SIGPIPE; the stage exit codes then tell which stage failed.
    """

    def __init__(self, src, dst, downstream, hasher=None):
        super().__init__(daemon=True)
        self.src = src
        self.dst = dst
        self.downstream = downstream
        self.hasher = hasher
        self.count = 0
        self.error = None
        self.broken_pipe = False

    def run(self):
        try:
            src_fd = self.src.fileno()
            dst_fd = self.dst.fileno()
            while True:
                data = os.read(src_fd, CHUNK_SIZE)
                if not data:
                    break
                if self.hasher is not None:
                    self.hasher.update(data)
                self.count += len(data)
                _write_all(dst_fd, data)
        except BrokenPipeError:
            self.broken_pipe = True
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                self.broken_pipe = True
            else:
                self.error = exc
        except Exception as exc:  # pragma: no cover - defensive
            self.error = exc
        finally:
            for stream in (self.dst, self.src):
                try:
                    stream.close()
                except OSError:
                    pass


def _popen(argv, env, stdin, stdout, cwd=None, pass_fds=()):
    """Start one stage in its own process group (so a timeout can kill its children too)."""
    if not argv or not all(isinstance(a, str) for a in argv):
        raise ValueError("argv must be a non-empty list of strings, got %r" % (argv,))
    return subprocess.Popen(  # noqa: S603 - argv list from the calling module, never a shell
        argv,
        stdin=stdin,
        stdout=stdout,
        stderr=subprocess.PIPE,
        env=env,
        cwd=cwd,
        bufsize=0,
        close_fds=True,
        pass_fds=pass_fds,
        start_new_session=True,
    )


def _signal_group(proc, sig):
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            proc.send_signal(sig)
        except OSError:
            pass


def _kill_all(stages, grace=2.0):
    """SIGTERM every still-running stage (and its process group), SIGKILL after ``grace``."""
    running = [s for s in stages if s.proc.poll() is None]
    for stage in running:
        _signal_group(stage.proc, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for stage in running:
        try:
            stage.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(stage.proc, signal.SIGKILL)
    for stage in running:
        try:
            stage.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - unkillable process
            pass


def _stage_env(env):
    if not env:
        return None
    merged = dict(os.environ)
    merged.update({str(k): str(v) for k, v in env.items()})
    return merged


def _secrets_of(env, redact):
    """The strings to redact: ``redact`` plus values of secret-looking variables of ``env``."""
    values = [s for s in (redact or ()) if s]
    for key, value in (env or {}).items():
        if _SECRET_ENV_RE.search(str(key)) and value and len(str(value)) >= 4:
            values.append(str(value))
    return values


def _is_sigpipe(rc):
    return rc in (-signal.SIGPIPE, 128 + signal.SIGPIPE)


class _Run:
    """Shared machinery of both pipelines: stages, watchdog, progress and failure reporting."""

    def __init__(self, result, redact, progress, progress_interval, timeout):
        self.result = result
        self.redact = redact
        self.progress = progress
        self.progress_interval = progress_interval
        self.timeout = timeout
        self.stages = []
        self.relays = []
        self.start = time.monotonic()
        self.last_progress = self.start
        self.timed_out = False
        self.watchdog = None
        if timeout is not None:
            self.watchdog = threading.Timer(timeout, self._on_timeout)
            self.watchdog.daemon = True
            self.watchdog.start()

    def _on_timeout(self):
        self.timed_out = True
        _kill_all(self.stages, grace=1.0)

    def add(self, name, argv, env, stdin, stdout, cwd=None, pass_fds=()):
        """Start a stage; a tool that cannot be started raises ``PipelineError`` naming it."""
        try:
            proc = _popen(argv, env, stdin, stdout, cwd, pass_fds)
        except OSError as exc:
            reason = redact_text(str(exc), self.redact)
            raise PipelineError("cannot start stage '%s' (%s): %s" % (name, argv[0], reason),
                                stage=name, result=self.result) from exc
        stage = _Stage(name, proc, STDERR_TAIL_BYTES * 2)
        self.stages.append(stage)
        return stage

    def tick(self, bytes_in, bytes_out):
        if self.progress is None:
            return
        now = time.monotonic()
        if now - self.last_progress >= self.progress_interval:
            self.last_progress = now
            self.progress(bytes_in, bytes_out, now - self.start)

    def remaining(self):
        if self.timeout is None:
            return None
        return max(0.1, self.timeout - (time.monotonic() - self.start))

    def wait_all(self):
        """Wait for every stage and helper thread; kill stages still running at the deadline."""
        for stage in self.stages:
            try:
                stage.proc.wait(timeout=self.remaining())
            except subprocess.TimeoutExpired:
                self.timed_out = True
                _kill_all(self.stages, grace=1.0)
        for relay in self.relays:
            relay.join(timeout=10)
        for stage in self.stages:
            if stage.thread is not None:
                stage.thread.join(timeout=10)

    def abort(self):
        """Kill everything (used on exceptions and timeouts)."""
        if self.watchdog is not None:
            self.watchdog.cancel()
        _kill_all(self.stages, grace=1.0)
        for stage in self.stages:
            for stream in (stage.proc.stdin, stage.proc.stdout):
                if stream is not None:
                    try:
                        stream.close()
                    except OSError:
                        pass
        self.wait_all()

    def finish(self):
        """Record stage outcomes; raise ``PipelineError`` if anything failed."""
        if self.watchdog is not None:
            self.watchdog.cancel()
        self.result.duration = time.monotonic() - self.start
        self.result.stages = [
            StageResult(s.name, s.proc.returncode, s.tail.text(self.redact, STDERR_TAIL_BYTES)) for s in self.stages
        ]
        if self.timed_out:
            names = ", ".join(s.name for s in self.result.stages)
            raise PipelineError(
                "pipeline (%s) timed out after %ss; all stages were killed" % (names, self.timeout),
                stage=self.result.stages[0].name if self.result.stages else None,
                timed_out=True,
                result=self.result,
            )
        failed = [s for s in self.result.stages if s.rc != 0]
        if failed:
            # A stage whose reader went away first (the relay saw EPIPE) is the cause; an upstream
            # stage killed by SIGPIPE (or failing on EPIPE) is a consequence.
            early = {r.downstream for r in self.relays if r.broken_pipe}
            primary = next((s for s in failed if s.name in early), None)
            if primary is None:
                primary = next((s for s in failed if not _is_sigpipe(s.rc)), failed[0])
            message = "stage '%s' exited with code %s" % (primary.name, primary.rc)
            if primary.stderr_tail.strip():
                message += ": %s" % primary.stderr_tail.strip()
            others = [s for s in failed if s is not primary]
            if others:
                message += " (also failed: %s)" % ", ".join("%s rc=%s" % (s.name, s.rc) for s in others)
            raise PipelineError(message, stage=primary.name, rc=primary.rc, stderr_tail=primary.stderr_tail,
                                result=self.result)
        for relay in self.relays:
            if relay.error is not None:
                raise PipelineError("relay failed: %s" % redact_text(str(relay.error), self.redact),
                                    stage="relay", result=self.result)


def fsync_dir(path):
    """fsync a directory so that renames and creations in it are durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------
# public pipelines


def run_pipeline(source_argv, dest_path, *, compress=True, zstd_level=3, zstd_threads=0, zstd_path="zstd",
                 env=None, stdin_data=None, progress=None, progress_interval=5.0, timeout=None, redact=None,
                 source_name=None, cwd=None):
    """Run ``source_argv | zstd`` into ``dest_path`` atomically; return a ``PipelineResult``.

    ``env`` holds variables added to the current environment of the tool only (secrets such as
    PGPASSFILE, REDISCLI_AUTH, MYSQL_PWD go here, never into argv); values of secret-looking
    variables are redacted from stderr tails like the strings of ``redact``. ``stdin_data``
    (bytes) is written to the tool's stdin. ``progress(bytes_in, bytes_out, elapsed)`` is called
    at most every ``progress_interval`` seconds from this thread; an exception it raises aborts
    the pipeline. ``timeout`` (seconds) kills all stages. With ``compress=False`` the tool's
    output is written as is. ``dest_path`` is replaced only when every stage exited 0.
    """
    if not isinstance(source_argv, (list, tuple)):
        raise ValueError("source_argv must be a list of strings (no shell), got %r" % (source_argv,))
    source_argv = list(source_argv)
    comp_argv = zstd_argv(zstd_path, zstd_level, zstd_threads) if compress else None
    dest_path = os.fspath(dest_path)
    dest_dir = os.path.dirname(os.path.abspath(dest_path))
    tmp_path = "%s.tmp-%s" % (dest_path, secrets.token_hex(6))
    redact = _secrets_of(env, redact)
    result = PipelineResult(dest_path, bool(compress))
    name = source_name or (os.path.basename(source_argv[0]) if source_argv else "source")

    fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    run = None
    try:
        run = _Run(result, redact, progress, progress_interval, timeout)
        stdin = subprocess.PIPE if stdin_data is not None else subprocess.DEVNULL
        source = run.add(name, source_argv, _stage_env(env), stdin, subprocess.PIPE, cwd).proc
        _grow_pipe(source.stdout)
        if stdin_data is not None:
            feeder = threading.Thread(target=_feed, args=(source.stdin, stdin_data), daemon=True)
            feeder.start()
        if compress:
            comp_name = os.path.basename(zstd_path)
            comp = run.add(comp_name, comp_argv, None, subprocess.PIPE, subprocess.PIPE).proc
            _grow_pipe(comp.stdout)
            relay = _Relay(source.stdout, comp.stdin, comp_name)
            run.relays.append(relay)
            relay.start()
            out = comp.stdout
            if _AGE["recipients"]:
                argv = [_AGE["age_path"]]
                for recipient in _AGE["recipients"]:
                    argv += ["-r", recipient]
                out = run.add("age", argv, None, comp.stdout, subprocess.PIPE).proc.stdout
                comp.stdout.close()  # age holds it now; zstd gets SIGPIPE if age dies
                _grow_pipe(out)
                result.encrypted = True
        else:
            relay = None
            out = source.stdout

        digest = hashlib.sha256()
        out_fd = out.fileno()
        written = 0
        while True:
            data = os.read(out_fd, CHUNK_SIZE)
            if not data:
                break
            digest.update(data)
            try:
                _write_all(fd, data)
            except OSError as exc:
                raise PipelineError("writing %s failed: %s" % (tmp_path, exc), stage="write", result=result) from exc
            written += len(data)
            result.bytes_out = written
            result.bytes_in = relay.count if relay is not None else written
            run.tick(result.bytes_in, written)
        out.close()
        run.wait_all()
        result.bytes_in = relay.count if relay is not None else written
        result.bytes_out = written
        result.sha256 = digest.hexdigest()
        run.finish()
        os.fsync(fd)
        os.close(fd)
        fd = None
        os.rename(tmp_path, dest_path)
        fsync_dir(dest_dir)
        return result
    except BaseException:
        if run is not None:
            run.abort()
        if fd is not None:
            os.close(fd)
        try:
            os.unlink(tmp_path)
        except FileNotFoundError:
            pass
        raise


def _feed(stream, data):
    try:
        stream.write(data)
    except (BrokenPipeError, OSError, ValueError):
        pass
    finally:
        _close(stream)


def decompress_to(src, argv_consumer, *, expected_sha256=None, compressed=True, zstd_path="zstd", env=None,
                  progress=None, progress_interval=5.0, timeout=None, redact=None, consumer_name=None, cwd=None):
    """Stream ``src`` through ``zstd -d`` into ``argv_consumer`` (e.g. ``mbstream -x``, ``pg_restore``).

    The compressed file is read here in 1 MiB chunks and hashed while it streams; with
    ``expected_sha256`` a mismatch raises ``PipelineError`` (stage ``verify``) after the stages end,
    so consumers should unpack into a staging place. Any stage exiting non-zero raises
    ``PipelineError``. The consumer's stdout is drained like its stderr (its tail is kept).
    Returns a ``PipelineResult`` (``bytes_in``/``sha256``: the file; ``bytes_out``: bytes handed
    to the consumer). With ``compressed=False`` the file is fed to the consumer as is.
    """
    src = os.fspath(src)
    argv_consumer = list(argv_consumer)
    redact = _secrets_of(env, redact)
    result = PipelineResult(src, bool(compressed))
    name = consumer_name or (os.path.basename(argv_consumer[0]) if argv_consumer else "consumer")
    digest = hashlib.sha256()
    run = _Run(result, redact, progress, progress_interval, timeout)
    try:
        handle = open(src, "rb", buffering=0)
        result.encrypted = handle.read(len(AGE_HEADER)) == AGE_HEADER
        handle.seek(0)
    except OSError as exc:
        raise PipelineError("cannot read %s: %s" % (src, exc), stage="read", result=result) from exc
    try:
        with handle:
            consumer = run.add(name, argv_consumer, _stage_env(env), subprocess.PIPE, subprocess.PIPE, cwd)
            out_drain = threading.Thread(target=_drain, args=(consumer.proc.stdout, consumer.tail), daemon=True)
            out_drain.start()
            upstream = []  # the stages before the consumer, first to last
            if result.encrypted:
                fd = _identity_fd()
                try:
                    upstream.append(run.add("age -d", [_AGE["age_path"], "-d", "-i", "/dev/fd/%d" % fd], None,
                                            subprocess.PIPE, subprocess.PIPE, pass_fds=(fd,)))
                finally:
                    os.close(fd)
                _grow_pipe(upstream[-1].proc.stdout)
            if compressed:
                stdin = upstream[-1].proc.stdout if upstream else subprocess.PIPE
                upstream.append(run.add(os.path.basename(zstd_path), zstd_argv(zstd_path, decompress=True), None,
                                        stdin, subprocess.PIPE))
                if stdin is not subprocess.PIPE:
                    stdin.close()  # zstd holds it now
                _grow_pipe(upstream[-1].proc.stdout)
            if upstream:
                relay = _Relay(upstream[-1].proc.stdout, consumer.proc.stdin, name)
                run.relays.append(relay)
                relay.start()
                sink = upstream[0].proc.stdin
                # Report the upstream stages first, in their order.
                run.stages = upstream + [consumer]
            else:
                relay = None
                sink = consumer.proc.stdin
            sink_fd = sink.fileno()
            try:
                while True:
                    data = handle.read(CHUNK_SIZE)
                    if not data:
                        break
                    digest.update(data)
                    result.bytes_in += len(data)
                    _write_all(sink_fd, data)
                    result.bytes_out = relay.count if relay is not None else result.bytes_in
                    run.tick(result.bytes_in, result.bytes_out)
            except BrokenPipeError:
                pass  # a stage exited early; its exit code tells why
            finally:
                try:
                    sink.close()
                except OSError:
                    pass
            run.wait_all()
            out_drain.join(timeout=10)
        result.bytes_out = relay.count if relay is not None else result.bytes_in
        result.sha256 = digest.hexdigest()
        run.finish()
        if expected_sha256 and result.sha256 != expected_sha256.lower():
            raise PipelineError(
                "sha256 of %s is %s, expected %s: the file is corrupted" % (src, result.sha256, expected_sha256),
                stage="verify", result=result)
        return result
    except BaseException:
        run.abort()
        raise
