# Copyright: (c) 2026, llmops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin: wait for the component backups started with `async`/`poll: 0`, printing the
bytes written so far every `interval` seconds, and return each component's module result.

A long backup then reports progress instead of going silent, and the components run at the same
time, so the run takes about as long as the slowest one.
"""

from __future__ import annotations

import re
import shlex
import time

from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

display = Display()


def _human(size):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return "%.1f %s" % (size, unit) if unit != "B" else "%d B" % size
        size /= 1024.0
    return str(size)


def _cause(status):
    """A failed component's cause in one line: its ``msg``, else the end of what the module printed
    (a traceback's last line, stderr), so that the summary and the alert never say only 'no result'."""
    for key in ("msg", "exception", "module_stderr", "stderr", "module_stdout"):
        text = str(status.get(key) or "").strip()
        if text and not (key == "msg" and text.startswith("MODULE FAILURE") and status.get("module_stderr")):
            return text.splitlines()[-1][-2000:] if key != "msg" else text
    return "the module ended without saying why (rc %s); run the component alone with -vvv" % status.get("rc")


# async_wrapper's results file until the module has ended (ansible-core 2.19 writes booleans, older ones 1 and 0)
_PLACEHOLDER = re.compile(r'^\{"started": (true|1), "finished": (false|0)\b')


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("jobs", "paths", "interval", "timeout"))

    def _status(self, jid, async_dir, task_vars):
        return self._execute_module(module_name="ansible.legacy.async_status", task_vars=task_vars,
                                    module_args={"jid": jid, "_async_dir": async_dir})

    def _shell(self, before, files, after=""):
        """Run ``before <files, quoted> after`` in one shell on the host: no module run."""
        return self._low_level_execute_command("%s %s%s" % (before, " ".join(shlex.quote(f) for f in files), after),
                                               sudoable=True)

    def _still_running(self, pending, async_dir):
        """The pending jobs whose results file still holds async_wrapper's placeholder, read with one shell command
        for all of them. A module run (async_status) costs about 0.3 CPU-seconds; run for every job every half
        second, it took a quarter of a two-CPU host from the backups it waited for. async_status is run once per
        job, when it has ended (a job whose file cannot be read counts as ended: async_status then says why; when
        the shell command fails, every job is asked)."""
        files = ["%s/%s" % (async_dir, jid) for jid in pending.values()]
        res = self._shell("for f in", files, "; do head -c 48 \"$f\" 2>/dev/null | tr -d '\\n'; echo; done")
        heads = res.get("stdout", "").split("\n")
        if res.get("rc") != 0 or len(heads) < len(files):
            return set()  # the check itself failed: ask async_status about every job, as it always can
        return {name for name, head in zip(pending, heads[:len(files)], strict=True) if _PLACEHOLDER.match(head)}

    def _sizes(self, paths):
        """Bytes under each component's folder (temp files of running pipelines included)."""
        existing = {name: path for name, path in paths.items() if path}
        if not existing:
            return {}
        res = self._shell("du -s -b --", existing.values())
        by_path = {}
        for line in res.get("stdout", "").splitlines():
            size, _, path = line.partition("\t")
            by_path[path] = int(size) if size.isdigit() else 0
        return {name: by_path.get(path, 0) for name, path in existing.items()}

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = self._task.args
        jobs = args.get("jobs") or {}
        paths = args.get("paths") or {}
        interval = float(args.get("interval", 15))
        timeout = float(args.get("timeout", 21600))
        async_dir = self._remote_expand_user(self.get_shell_option("async_dir", default="~/.ansible_async"))

        done = {}
        pending = {}
        for name, job in jobs.items():
            if not isinstance(job, dict) or job.get("skipped"):
                continue
            if job.get("ansible_job_id") and not job.get("finished") and job.get("started"):
                pending[name] = job["ansible_job_id"]
            else:  # ran synchronously (check mode) or failed to start
                done[name] = job
        start = time.monotonic()
        last_report = start
        poll = min(0.5, interval)  # notice a finished component quickly; report progress every interval
        while pending:
            running = self._still_running(pending, async_dir)
            ended = []
            for name, jid in list(pending.items()):
                if name in running:
                    continue
                status = self._status(jid, async_dir, task_vars)
                if status.get("finished") or status.get("failed") and not status.get("started"):
                    ended.append("%s/%s" % (async_dir, jid))
                    status.pop("invocation", None)
                    if status.get("failed"):
                        status["msg"] = _cause(status)
                    done[name] = status
                    del pending[name]
                    display.display("  backup: %s %s after %ds" % (
                        name, "FAILED" if status.get("failed") else "done", time.monotonic() - start))
            if ended:  # what async_status mode=cleanup does, for all of them at once
                self._shell("rm -f --", ended)
            if not pending:
                break
            elapsed = time.monotonic() - start
            if elapsed > timeout:
                result.update(failed=True, components=done, pending=sorted(pending),
                              msg="backups still running after %ds: %s" % (timeout, ", ".join(sorted(pending))))
                return result
            if time.monotonic() - last_report >= interval:
                last_report = time.monotonic()
                sizes = self._sizes({n: paths.get(n) for n in pending})
                display.display("  backup: %ds, running: %s" % (elapsed, ", ".join(
                    "%s %s written" % (n, _human(sizes.get(n, 0))) for n in sorted(pending))))
            time.sleep(poll)
        result["components"] = done
        result["changed"] = any(r.get("changed") for r in done.values())
        result["failed"] = False
        return result
