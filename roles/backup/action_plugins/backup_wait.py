# Copyright: (c) 2026, llmops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin: wait for the component backups started with `async`/`poll: 0`, printing the
bytes written so far every `interval` seconds, and return each component's module result.

A long backup then reports progress instead of going silent, and the components run at the same
time, so the run takes about as long as the slowest one.
"""

from __future__ import annotations

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


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("jobs", "paths", "interval", "timeout"))

    def _status(self, jid, async_dir, task_vars, mode="status"):
        return self._execute_module(module_name="ansible.legacy.async_status", task_vars=task_vars,
                                    module_args={"jid": jid, "mode": mode, "_async_dir": async_dir})

    def _sizes(self, paths, task_vars):
        """Bytes under each component's folder (temp files of running pipelines included)."""
        existing = {name: path for name, path in paths.items() if path}
        if not existing:
            return {}
        res = self._execute_module(module_name="ansible.legacy.command", task_vars=task_vars,
                                   module_args={"argv": ["du", "-s", "-b", *existing.values()]})
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
            for name, jid in list(pending.items()):
                status = self._status(jid, async_dir, task_vars)
                if status.get("finished") or status.get("failed") and not status.get("started"):
                    self._status(jid, async_dir, task_vars, mode="cleanup")
                    status.pop("invocation", None)
                    if status.get("failed"):
                        status["msg"] = _cause(status)
                    done[name] = status
                    del pending[name]
                    display.display("  backup: %s %s after %ds" % (
                        name, "FAILED" if status.get("failed") else "done", time.monotonic() - start))
            if not pending:
                break
            elapsed = time.monotonic() - start
            if elapsed > timeout:
                result.update(failed=True, components=done, pending=sorted(pending),
                              msg="backups still running after %ds: %s" % (timeout, ", ".join(sorted(pending))))
                return result
            if time.monotonic() - last_report >= interval:
                last_report = time.monotonic()
                sizes = self._sizes({n: paths.get(n) for n in pending}, task_vars)
                display.display("  backup: %ds, running: %s" % (elapsed, ", ".join(
                    "%s %s written" % (n, _human(sizes.get(n, 0))) for n in sorted(pending))))
            time.sleep(poll)
        result["components"] = done
        result["changed"] = any(r.get("changed") for r in done.values())
        result["failed"] = False
        return result
