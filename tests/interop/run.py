#!/usr/bin/python3
"""Interop suite: real NBD clients against a running NBD server.

    /usr/bin/python3 tests/interop/run.py [--server nbdx|nbdkit|qemu-nbd] [-k REGEX] [--list]

The server under test is a parameter (default: $NBDX_INTEROP_SERVER, else nbdx, i.e.
target/release/nbdx or $NBDX_BIN). `--server nbdkit` validates the suite itself
against nbdkit. Exit status: 0 when no case failed, 1 otherwise, 2 when the suite
could not start (missing server binary or client tool).

Environment: NBDX_INTEROP_SEED (model test seed), NBDX_INTEROP_TIMEOUT_SCALE (multiply
every case's time limit, e.g. 3 on a slow machine).
"""

import argparse
import importlib
import os
import shutil
import sys

if sys.executable != "/usr/bin/python3" and not os.environ.get("NBDX_INTEROP_ANY_PYTHON"):
    # python3-libnbd is Debian's and belongs to the system python.
    os.execv("/usr/bin/python3", ["/usr/bin/python3", *sys.argv])

try:
    import nbd
except ImportError:
    print("interop: FAIL: python3-libnbd is not installed for /usr/bin/python3 "
          "(apt-get install python3-libnbd)", flush=True)
    sys.exit(2)

from runner import run_cases, select  # noqa: E402
from profiles import PROFILES  # noqa: E402
from util import qemu_version  # noqa: E402

TOOLS = ["nbdinfo", "nbdcopy", "qemu-img", "qemu-io"]
# Importing a module registers its cases, in this order.
CASE_MODULES = [
    "cases_cli", "cases_info", "cases_libnbd", "cases_model", "cases_robust", "cases_tools", "cases_ops", "cases_layers",
    "cases_tls",
    "cases_client_info", "cases_client_copy",
]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", choices=sorted(PROFILES),
                        default=os.environ.get("NBDX_INTEROP_SERVER") or "nbdx")
    parser.add_argument("-k", dest="pattern", help="run only the cases whose name matches REGEX")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--keep", action="store_true", help="keep every case's scratch directory")
    options = parser.parse_args()
    options.timeout_scale = float(os.environ.get("NBDX_INTEROP_TIMEOUT_SCALE") or 1)
    for module in CASE_MODULES:
        importlib.import_module(module)

    selected = select(options.pattern)
    if options.list:
        print("\n".join(fn.__name__ for fn in selected))
        return 0
    if not selected:
        print(f"interop: FAIL: no case matches {options.pattern!r}")
        return 2
    missing = [tool for tool in TOOLS if not shutil.which(tool)]
    if missing:
        print(f"interop: FAIL: client tools missing: {' '.join(missing)}")
        return 2
    profile = PROFILES[options.server]()
    try:
        profile.check()
    except Exception as exc:  # noqa: B902 - any reason the server cannot run is fatal
        print(f"interop: FAIL: server {options.server} cannot run: {exc}")
        return 2
    qemu = ".".join(map(str, qemu_version()))
    print(f"interop: server {options.server}, libnbd {nbd.NBD().get_version()}, qemu {qemu}, "
          f"{len(selected)} cases", flush=True)
    return run_cases(profile, options, selected)


if __name__ == "__main__":
    sys.exit(main())
