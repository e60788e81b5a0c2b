"""A small test runner: cases are functions named as sentences, each independent.

A case receives a `Context` that starts servers for it and stops them afterwards. It
passes by returning, fails by raising (AssertionError or anything else) and skips by
raising `Skip` with the reason, which is printed. A case also fails when a server it
started died on its own, did not exit with status 0 on SIGTERM, or logged a panic.

Every case has a time limit. When it runs out, the runner prints every thread's stack
and kills the case's servers, which makes any libnbd call blocked on them return an
error, so the case fails and the run goes on. If the case still does not return, the
whole run exits with status 1.
"""

import faulthandler
import os
import re
import shutil
import sys
import tempfile
import threading
import time

from servers import Server
import traceback

CASES = []


class Skip(Exception):
    """Raised by a case that cannot run here; the message says why."""


def case(fn=None, *, timeout=120):
    """Registers a test case. The function's name is the test's name."""

    def register(f):
        f.timeout = timeout
        CASES.append(f)
        return f

    return register(fn) if fn is not None else register


class Context:
    """What a case gets: its server profile, a scratch directory and a server factory."""

    def __init__(self, profile, workdir, options):
        self.profile = profile
        self.workdir = workdir
        self.options = options
        self.servers = []
        self.notes = []

    def server(self, *exports, wait=True, **kwargs):
        """Starts a server (see servers.Server) that is stopped when the case ends.

        With wait=False it returns as soon as the process is started.
        """
        srv = Server(self.profile, self.workdir, list(exports), **kwargs)
        self.servers.append(srv)
        srv.start(wait=wait)
        return srv

    def path(self, name):
        return os.path.join(self.workdir, name)

    def note(self, text):
        """A line printed under the case's result."""
        self.notes.append(text)

    def skip(self, reason):
        raise Skip(reason)

    def kill_servers(self):
        for srv in self.servers:
            srv.kill()

    def stop_servers(self):
        """Stops every server; returns the problems found (empty when all were fine)."""
        problems = []
        for srv in self.servers:
            problems.extend(srv.stop())
        return problems


def _short_traceback(exc):
    lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
    text = "".join(lines).rstrip()
    return "\n".join("    " + line for line in text.splitlines()[-25:])


class Watchdog:
    """Kills a case's servers when its time is up, and the process if that is not enough."""

    GRACE = 30

    def __init__(self, ctx, name, limit):
        self.ctx, self.name, self.limit = ctx, name, limit
        self.fired = False
        self.timer = threading.Timer(limit, self._expire)
        self.timer.daemon = True
        self.last = threading.Timer(limit + self.GRACE, self._abort)
        self.last.daemon = True

    def __enter__(self):
        self.timer.start()
        self.last.start()
        return self

    def __exit__(self, *exc):
        self.timer.cancel()
        self.last.cancel()

    def _expire(self):
        self.fired = True
        print(f"TIMEOUT {self.name}: still running after {self.limit}s; stacks:", flush=True)
        faulthandler.dump_traceback(file=sys.stdout, all_threads=True)
        sys.stdout.flush()
        self.ctx.kill_servers()

    def _abort(self):
        print(f"FAIL {self.name}: did not return {self.GRACE}s after its servers were killed; "
              "aborting the run", flush=True)
        self.ctx.kill_servers()
        os._exit(1)


def run_cases(profile, options, selected):
    """Runs the cases; prints one result line per case and a summary. Returns the exit code."""
    # Unix socket paths must stay below 108 bytes: short directory names.
    base = tempfile.mkdtemp(prefix="nbdx-interop-", dir="/tmp" if len(tempfile.gettempdir()) > 40 else None)
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    failed_names, xfails = [], 0
    for number, fn in enumerate(selected, 1):
        name = fn.__name__
        workdir = os.path.join(base, f"{number:02d}")
        os.makedirs(workdir)
        ctx = Context(profile, workdir, options)
        started = time.monotonic()
        status, detail = "PASS", ""
        print(f"---- {name}", flush=True)
        limit = round(fn.timeout * options.timeout_scale, 1)
        with Watchdog(ctx, name, limit) as dog:
            try:
                fn(ctx)
            except Skip as exc:
                status, detail = "SKIP", str(exc)
            except BaseException as exc:  # noqa: B902 - a case's failure must not stop the run
                if isinstance(exc, KeyboardInterrupt):
                    ctx.kill_servers()
                    raise
                status, detail = "FAIL", _short_traceback(exc)
            finally:
                problems = ctx.stop_servers()
        if dog.fired:
            status = "FAIL"
            detail = f"timed out after {limit}s\n{detail}"
        if problems and status != "FAIL":
            status, detail = "FAIL", ""
        if problems:
            detail = (detail + "\n" if detail else "") + "\n".join("    server: " + p for p in problems)
        bug = profile.expected_failures.get(name)
        if bug and status == "FAIL":
            status, xfails = "XFAIL", xfails + 1
            print(detail)
            detail = f"expected failure of {profile.name}: {bug}"
        elif bug and status == "PASS":
            status, detail = "XPASS", f"passed, but {profile.name} is marked to fail it: {bug}"
        elapsed = time.monotonic() - started
        line = f"{status} {name} ({elapsed:.1f}s)"
        if status in ("SKIP", "XFAIL", "XPASS"):
            line += f": {detail}"
        print(line, flush=True)
        for note in ctx.notes:
            print(f"    note: {note}")
        if status in ("FAIL", "XFAIL"):
            if status == "FAIL":
                print(detail)
            for srv in ctx.servers:
                print(srv.log_tail())
        if status in ("FAIL", "XPASS"):
            failed_names.append(name)
        counts[{"PASS": "passed", "FAIL": "failed", "XPASS": "failed", "SKIP": "skipped",
                "XFAIL": "skipped"}[status]] += 1
        sys.stdout.flush()
        if status not in ("FAIL", "XPASS") and not options.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    print()
    if failed_names:
        print("failed cases: " + ", ".join(failed_names))
    if xfails:
        print(f"{xfails} of the skipped cases are expected failures of {profile.name} (XFAIL above)")
    if options.keep or failed_names:
        print(f"scratch files kept in {base}")
    else:
        shutil.rmtree(base, ignore_errors=True)
    print(f"interop: {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped")
    return 1 if counts["failed"] or not selected else 0


def select(pattern):
    """The registered cases whose name matches the regular expression (all if None)."""
    if pattern is None:
        return list(CASES)
    rx = re.compile(pattern)
    return [fn for fn in CASES if rx.search(fn.__name__)]
