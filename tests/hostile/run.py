#!/usr/bin/python3
"""Hostile-input suite: malformed and abusive clients against `nbdx serve`.

    /usr/bin/python3 tests/hostile/run.py [-k REGEX] [--list] [--table] [--seed N]

Two servers (a Unix socket and TCP on 127.0.0.1) serve a 64 MiB RAM disk with short
limits (`--handshake-timeout 2 --stall-timeout 2 --max-connections 64`). A known
pattern is written first. Every case runs against both, and after each one the server
must be alive (not a zombie), a fresh libnbd client must read the pattern back intact,
and its RSS (/proc/PID/status VmRSS) must stay under 512 MiB. Cases marked `own` start
their own servers (read-only, lame duck, crash consistency). Each case asserts what the
spec says the server answers (see docs/security.md; `--table` prints that table).

Random cases print their seeds; NBDX_HOSTILE_SEED (or --seed) replays them.
Exit status: 0 when every case passed, 1 otherwise, 2 when the suite could not start.
"""

import argparse
import faulthandler
import importlib
import os
import random
import re
import shutil
import sys
import time
import traceback

if sys.executable != "/usr/bin/python3" and not os.environ.get("NBDX_INTEROP_ANY_PYTHON"):
    os.execv("/usr/bin/python3", ["/usr/bin/python3", *sys.argv])

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "interop"))

from hostile import CASES, Target, RSS_LIMIT, LIMIT_ARGS  # noqa: E402
from profiles import NbdxProfile  # noqa: E402
from servers import Export, memory  # noqa: E402
from util import MiB  # noqa: E402

CASE_MODULES = ["cases_handshake", "cases_transmission", "cases_abuse", "cases_lifecycle", "cases_crash"]
KNOWN_SIZE = 8 * MiB


#: How words of case names are spelt in the table.
SPELLING = {"kib": "KiB", "mib": "MiB", "gib": "GiB", "tib": "TiB", "utf8": "UTF-8", "nul": "NUL", "df": "DF",
            "fua": "FUA", "disc": "DISC", "starttls": "STARTTLS", "go": "GO", "sigterm": "SIGTERM",
            "http": "HTTP", "9": "-9", "req_one": "REQ_ONE", "no_hole": "NO_HOLE", "fast_zero": "FAST_ZERO",
            "payload_len": "PAYLOAD_LEN", "fdatasync": "fdatasync"}


def title(name):
    for pair in ("req_one", "no_hole", "fast_zero", "payload_len"):
        name = name.replace(pair, pair.replace("_", "-"))
    words = [SPELLING.get(w.replace("-", "_"), w) for w in name.split("_")]
    return " ".join(words)


def vm_rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def proc_state(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def health(t, known):
    """The server is alive, serves the known pattern to a fresh client, and is not bloated."""
    srv = t.srv
    assert srv.alive(), f"the server exited with status {srv.proc.returncode}"
    assert proc_state(srv.pid) != "Z", "the server is a zombie"
    deadline = time.monotonic() + 10
    while True:
        try:
            h = srv.connect()
            break
        except Exception as exc:  # noqa: B902 - the cap may still count the case's connections
            if time.monotonic() > deadline:
                raise AssertionError(f"a fresh client cannot connect: {exc}") from exc
            time.sleep(0.05)  # bounded poll: the deadline above
    try:
        got = h.pread(len(known), 0)
    finally:
        h.shutdown()
    assert got == known, "the known pattern changed"
    rss = vm_rss(srv.pid)
    assert rss < RSS_LIMIT, f"server RSS {rss >> 20} MiB >= {RSS_LIMIT >> 20} MiB"
    return rss


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-k", dest="pattern", help="run only the cases whose name matches REGEX")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--table", action="store_true", help="print the input -> answer table (markdown)")
    parser.add_argument("--seed", type=int, default=int(os.environ.get("NBDX_HOSTILE_SEED") or 0) or None)
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (servers' logs, images)")
    options = parser.parse_args()
    for module in CASE_MODULES:
        importlib.import_module(module)
    selected = [c for c in CASES if not options.pattern or re.search(options.pattern, c.name)]
    if options.list:
        print("\n".join(c.name for c in selected))
        return 0
    if options.table:
        print("| # | input | server's answer | spec |\n|---|---|---|---|")
        for i, c in enumerate(selected, 1):
            print(f"| {i} | {title(c.name)} | {c.answer} | {c.spec} |")
        return 0
    seed = options.seed or random.SystemRandom().randrange(1, 1 << 31)
    profile = NbdxProfile()
    try:
        profile.check()
    except RuntimeError as exc:
        print(f"hostile: FAIL: {exc}")
        return 2
    base = Target.scratch()
    print(f"hostile: {len(selected)} cases, seed {seed} (replay with NBDX_HOSTILE_SEED={seed}), "
          f"server limits: {' '.join(LIMIT_ARGS)}", flush=True)
    known = random.Random(seed).randbytes(KNOWN_SIZE)
    shared = {}
    for transport in ("unix", "tcp"):
        t = Target(profile, os.path.join(base, transport), transport, seed)
        t.srv = t.start(Export("", memory(64 * MiB)), extra_args=LIMIT_ARGS)
        h = t.srv.connect()
        h.pwrite(known, 0)
        h.flush()
        h.shutdown()
        shared[transport] = t
    passed, failed, peak = 0, [], 0
    for c in selected:
        for transport in (c.transports if not c.own else ("own",)):
            label = f"{c.name} [{transport}]"
            t = shared.get(transport) or shared["unix"]
            t.case_seed = seed
            started = time.monotonic()
            faulthandler.dump_traceback_later(c.timeout + 30, exit=True)
            status, detail = "PASS", ""
            own = None
            try:
                if c.own:
                    own = Target(profile, os.path.join(base, f"own-{passed + len(failed)}"), "unix", seed)
                    try:
                        c.fn(own)
                    finally:
                        problems = own.stop_all()
                    assert not problems, "; ".join(problems)
                else:
                    c.fn(t)
                peak = max(peak, health(shared["unix"], known), health(shared["tcp"], known))
            except BaseException as exc:  # noqa: B902 - one case's failure must not stop the run
                if isinstance(exc, KeyboardInterrupt):
                    raise
                status = "FAIL"
                lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
                detail = "\n".join("    " + line for line in "".join(lines).rstrip().splitlines()[-15:])
            finally:
                faulthandler.cancel_dump_traceback_later()
            elapsed = time.monotonic() - started
            if elapsed > c.timeout:
                status, detail = "FAIL", f"    took {elapsed:.1f}s, limit {c.timeout}s\n{detail}"
            print(f"{status} {label} ({elapsed:.1f}s)", flush=True)
            for note in t.take_notes() + (own.take_notes() if own else []):
                print(f"    note: {note}")
            if status == "FAIL":
                print(detail)
                for s in own.servers if own else [t.srv]:
                    print(s.log_tail(10))
                failed.append(label)
            else:
                passed += 1
    problems = []
    for t in shared.values():
        problems += t.stop_all()
    for p in problems:
        print(f"FAIL server: {p}")
    print()
    if failed:
        print("failed cases: " + ", ".join(failed))
    if failed or problems or options.keep:
        print(f"scratch files kept in {base}")
    else:
        shutil.rmtree(base, ignore_errors=True)
    print(f"hostile: {passed} passed, {len(failed) + len(problems)} failed; peak server RSS {peak >> 20} MiB; "
          f"seed {seed}")
    return 1 if failed or problems else 0


if __name__ == "__main__":
    sys.exit(main())
