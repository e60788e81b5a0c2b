"""The server under test: started, checked for readiness, stopped.

A `Server` is described by what it serves (exports with sources), how it is reached
(Unix socket or TCP on 127.0.0.1) and whether it is read-only; its profile (see
profiles.py) turns that into a command line. A case may give its own command line.

Readiness is seen by connecting and reading the server's greeting (`NBDMAGIC`,
`IHAVEOPT`), retried until a deadline; never by sleeping.
"""

import ctypes
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass

import nbd

from util import free_tcp_port

READY_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
GREETING = b"NBDMAGIC" + b"IHAVEOPT"


@dataclass(frozen=True)
class Source:
    """What backs an export: `memory`, `null` (SIZE) or `file` (PATH)."""

    kind: str
    size: int = 0
    path: str = ""


def memory(size):
    return Source("memory", size=size)


def null(size):
    return Source("null", size=size)


def file(path):
    return Source("file", path=path)


@dataclass(frozen=True)
class Export:
    name: str
    source: Source


def _die_with_parent():
    """Runs in the child before exec: SIGKILL it when the test process dies."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class Server:
    profile: object  # profiles.Profile
    workdir: str
    exports: list
    transport: str = "unix"
    read_only: bool = False
    description: str = None
    pidfile: str = None
    #: A command line of the case's own (a function of the server), instead of the profile's.
    command: object = None
    #: Options of the nbdx command line added to the profile's (limits, for the hostile suite).
    extra_args: tuple = ()
    #: File descriptors the server inherits (e.g. a listening socket for socket activation).
    pass_fds: tuple = ()
    #: The Unix socket to probe and connect to, when the case chooses it (default: in workdir).
    socket_path: str = None
    #: TLS settings (cases_tls.Tls: mode, certificate directory, verify_peer, tls_only), or None.
    tls: object = None
    proc: subprocess.Popen = None
    port: int = 0
    stopped: bool = False
    #: Set when the case or the watchdog sent a signal: an exit is then no surprise.
    signalled: bool = False

    def __post_init__(self):
        if not self.exports:
            self.exports = [Export("", memory(64 << 20))]
        self.index = len([n for n in os.listdir(self.workdir) if n.startswith("server-")])
        self.tag = f"server-{self.index}"
        if self.socket_path is None:
            self.socket_path = os.path.join(self.workdir, f"s{self.index}.sock")  # sun_path is short
        self.log_path = os.path.join(self.workdir, f"{self.tag}.log")

    @property
    def unix(self):
        return self.transport == "unix"

    @property
    def pid(self):
        return self.proc.pid

    # -- backing files for profiles without a memory device (made on demand) --
    def backing_dir(self):
        path = os.path.join(self.workdir, f"{self.tag}.exports")
        if not os.path.isdir(path):
            os.makedirs(path)
            for exp in self.exports:
                self._make_backing(os.path.join(path, exp.name), exp.source)
        return path

    def backing_file(self, exp):
        if exp.source.kind == "file":
            return exp.source.path
        path = os.path.join(self.workdir, f"{self.tag}.img")
        if not os.path.exists(path):
            self._make_backing(path, exp.source)
        return path

    @staticmethod
    def _make_backing(path, src):
        if src.kind != "memory":
            raise RuntimeError(f"cannot emulate a {src.kind} source with a file")
        with open(path, "wb") as f:
            f.truncate(src.size)

    # -- life cycle --
    def start(self, wait=True):
        for attempt in range(3):
            self.spawn()
            if not wait:
                return self
            try:
                self.wait_ready()
                return self
            except ServerDied:
                # Another process may have taken the port between probe and bind: retry.
                if self.unix or "in use" not in self.log_text() or attempt == 2:
                    raise
                self.port = 0

    def spawn(self):
        if not self.unix and not self.port:
            self.port = free_tcp_port()
        argv = self.command(self) if self.command else self.profile.argv(self)
        with open(self.log_path, "ab") as log:
            log.write(("$ " + " ".join(argv) + "\n").encode())
            log.flush()
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         preexec_fn=_die_with_parent, pass_fds=self.pass_fds)

    def wait_ready(self, timeout=READY_TIMEOUT):
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise ServerDied(f"{self.profile.name} exited with status {self.proc.returncode} "
                                 "before accepting connections (its log follows)")
            if self.greeting_received():
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.profile.name} did not accept connections within "
                                     f"{timeout}s\n{self.log_tail()}")
            try:
                self.proc.wait(timeout=0.05)  # bounded wait between connection attempts
            except subprocess.TimeoutExpired:
                pass

    def greeting_received(self):
        """True when a connection gets the newstyle greeting (then it is closed)."""
        try:
            if self.unix:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                address = self.socket_path
            else:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                address = ("127.0.0.1", self.port)
            with sock:
                sock.settimeout(2.0)
                sock.connect(address)
                data = b""
                while len(data) < len(GREETING):
                    chunk = sock.recv(len(GREETING) - len(data))
                    if not chunk:
                        return False
                    data += chunk
                return data == GREETING
        except OSError:
            return False

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def terminate(self, sig=signal.SIGTERM, timeout=STOP_TIMEOUT):
        """Sends a signal and waits for the exit; returns the exit status (None: still running)."""
        if self.alive():
            self.signalled = True
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self):
        if self.alive():
            self.signalled = True
            self.proc.kill()

    def stop(self):
        """Stops the server with SIGTERM; returns what was wrong (empty list: all fine)."""
        if self.proc is None or self.stopped:
            return []
        self.stopped = True
        problems = []
        if not self.alive():
            if not self.signalled:
                problems.append(f"{self.tag} had exited by itself with status {self.proc.returncode}")
        else:
            rc = self.terminate()
            if rc is None:
                problems.append(f"{self.tag} still running {STOP_TIMEOUT}s after SIGTERM; killed")
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT)
            elif rc != 0:
                problems.append(f"{self.tag} exited with status {rc} after SIGTERM (want 0)")
        if "panicked at" in self.log_text():
            problems.append(f"{self.tag} panicked (see its log)")
        return problems

    # -- logs --
    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines=30):
        text = self.log_text().rstrip().splitlines()[-lines:]
        return f"  --- {self.tag} log ({self.log_path}), last {len(text)} lines:\n" + "\n".join(
            "  | " + line for line in text)

    # -- clients --
    def uri(self, name=None):
        name = self.exports[0].name if name is None else name
        if self.unix:
            return f"nbd+unix:///{name}?socket={self.socket_path}"
        return f"nbd://127.0.0.1:{self.port}/{name}"

    def connect(self, name=None, meta=True, strict=True):
        """A connected libnbd handle (structured replies, base:allocation unless meta=False)."""
        h = nbd.NBD()
        h.set_request_structured_replies(True)
        if meta:
            h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
        if not strict:
            h.set_strict_mode(0)
        h.set_export_name(self.exports[0].name if name is None else name)
        if self.unix:
            h.connect_unix(self.socket_path)
        else:
            h.connect_tcp("127.0.0.1", str(self.port))
        return h


class ServerDied(AssertionError):
    """The server exited before it accepted connections."""
