"""The hostile suite's case registry and the `Target` a case works on.

A case is a function named as a sentence, registered with `@hostile(answer, spec)`:
`answer` is what the server must do (it is asserted by the case, and printed by
`run.py --table`), `spec` the proto.md section or rule it follows. A case gets a
`Target`: the server under attack (`t.srv`), raw connections to it (`t.raw()`,
`t.negotiated(mode)`), a seeded random generator (`t.rng(name)`, seed printed) and,
for `own=True` cases, `t.start(...)` to run servers of its own.
"""

import os
import random
import socket
import tempfile

from nbdraw import Raw
from servers import Server
from util import MiB

#: Short limits so that stalls and slowloris end within seconds.
HANDSHAKE_TIMEOUT = 2.0
STALL_TIMEOUT = 2.0
MAX_CONNECTIONS = 64
LIMIT_ARGS = ("--handshake-timeout", str(HANDSHAKE_TIMEOUT), "--stall-timeout", str(STALL_TIMEOUT),
              "--max-connections", str(MAX_CONNECTIONS), "--shutdown-grace", "2")
RSS_LIMIT = 512 * MiB
#: The shared servers' export: 64 MiB, the first 8 MiB hold the known pattern.
EXPORT_SIZE = 64 * MiB
SCRATCH = 16 * MiB  # cases write only at or after this offset

CASES = []


class Case:
    def __init__(self, fn, answer, spec, transports, own, timeout):
        self.fn, self.answer, self.spec = fn, answer, spec
        self.name = fn.__name__
        self.transports, self.own, self.timeout = transports, own, timeout


def hostile(answer, spec="", transports=("unix", "tcp"), own=False, timeout=30):
    """Registers a case; see the module doc."""

    def register(fn):
        CASES.append(Case(fn, answer, spec, transports, own, timeout))
        return fn

    return register


class Target:
    """A server (or, for own cases, the servers a case starts) and ways to reach it."""

    def __init__(self, profile, workdir, transport, seed):
        os.makedirs(workdir, exist_ok=True)
        self.profile, self.workdir, self.transport = profile, workdir, transport
        self.case_seed = seed
        self.srv = None
        self.servers = []
        self.notes = []

    @staticmethod
    def scratch():
        # Unix socket paths must stay below 108 bytes.
        return tempfile.mkdtemp(prefix="nbdx-hostile-", dir="/tmp")

    def start(self, *exports, wait=True, **kwargs):
        """Starts a server in this target's directory; it is stopped by `stop_all`."""
        kwargs.setdefault("transport", self.transport)
        srv = Server(self.profile, self.workdir, list(exports), **kwargs)
        self.servers.append(srv)
        srv.start(wait=wait)
        if self.srv is None:
            self.srv = srv
        return srv

    def stop_all(self):
        problems = []
        for srv in self.servers:
            problems += srv.stop()
        return problems

    def note(self, text):
        self.notes.append(text)

    def take_notes(self):
        notes, self.notes = self.notes, []
        return notes

    def rng(self, name):
        """A generator seeded from the run's seed and `name`; the seed is noted."""
        seed = random.Random(f"{self.case_seed}/{name}").randrange(1 << 32)
        self.note(f"{name}: seed {seed}")
        return random.Random(seed)

    def socket(self, srv=None, timeout=10.0):
        srv = srv or self.srv
        if srv.unix:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(timeout)
            s.connect(srv.socket_path)
        else:
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=timeout)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    def raw(self, srv=None, timeout=10.0):
        return Raw(self.socket(srv, timeout), timeout)

    def negotiated(self, mode="simple", srv=None, export=b""):
        """A connection in transmission with `mode` negotiated."""
        return self.raw(srv).start().go(mode, export)
