"""NBD servers for the client-tool cases (`nbdx info`, `nbdx map`, `nbdx copy`).

These cases test nbdx as a *client*, so they start their peers themselves, whatever
server the suite was asked to test: nbdkit, qemu-nbd and nbdx through their profiles'
command lines (see profiles.py), and nbd-server, which only runs as a daemon (its
foreground mode serves a single connection), from a configuration file.
"""

import os
import signal

from profiles import NbdkitProfile, NbdxProfile, QemuNbdProfile
from servers import GREETING
from util import free_tcp_port, run, wait_for

NBDX = NbdxProfile()


def nbdx_binary(ctx):
    """The nbdx binary (the client under test); the case skips without it."""
    try:
        NBDX.check()
    except RuntimeError as exc:
        ctx.skip(str(exc))
    return NBDX.binary


def nbdx(ctx, *args, check=True, timeout=120, input=None):
    """Runs `nbdx ARGS`; returns the completed process."""
    return run([nbdx_binary(ctx), *args], check=check, timeout=timeout, input=input)


def start(ctx, kind, exports, transport="unix", **kwargs):
    """Starts nbdkit, qemu-nbd or nbdx serving `exports`; returns the servers.Server."""
    profile = {"nbdkit": NbdkitProfile, "qemu-nbd": QemuNbdProfile, "nbdx": NbdxProfile}[kind]()
    return ctx.server(*exports, transport=transport, command=profile.argv, **kwargs)


def with_data(srv, pieces):
    """Writes `pieces` [(offset, bytes)] into the server's first export through libnbd."""
    h = srv.connect()
    for offset, data in pieces:
        h.pwrite(data, offset)
    h.flush()
    h.shutdown()
    return srv


class NbdServer:
    """nbd-server 3.x serving one named export of a file, as a daemon."""

    def __init__(self, ctx, name, image, transport="unix"):
        self.ctx, self.name, self.transport = ctx, name, transport
        tag = f"nbd-server-{len([n for n in os.listdir(ctx.workdir) if n.startswith('nbds')])}"
        self.socket_path = ctx.path(f"{tag}.sock")
        self.pidfile = ctx.path(f"{tag}.pid")
        self.port = 0
        listen = f"    unixsock = {self.socket_path}\n"
        if transport == "tcp":
            self.port = free_tcp_port()
            listen = f"    listenaddr = 127.0.0.1\n    port = {self.port}\n"
        config = ctx.path(f"nbds-{tag}.conf")
        with open(config, "w") as f:
            f.write(f"[generic]\n{listen}    allowlist = true\n[{name}]\n    exportname = {image}\n")
        run(["nbd-server", "-C", config, "-p", self.pidfile], timeout=30)
        wait_for(lambda: os.path.exists(self.pidfile) and open(self.pidfile).read().strip(), 10,
                 "nbd-server's pidfile")
        self.pid = int(open(self.pidfile).read().strip())
        wait_for(self.greets, 10, "nbd-server to accept connections")

    def greets(self):
        import socket
        family = socket.AF_UNIX if self.transport == "unix" else socket.AF_INET
        address = self.socket_path if self.transport == "unix" else ("127.0.0.1", self.port)
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.settimeout(2)
                s.connect(address)
                return s.recv(len(GREETING), socket.MSG_WAITALL) == GREETING
        except OSError:
            return False

    def uri(self, name=None):
        name = self.name if name is None else name
        if self.transport == "unix":
            return f"nbd+unix:///{name}?socket={self.socket_path}"
        return f"nbd://127.0.0.1:{self.port}/{name}"

    def stop(self):
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def sparse_image(path, size, pieces):
    """A sparse raw file of `size` bytes with `pieces` [(offset, bytes)] written."""
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in pieces:
            f.seek(offset)
            f.write(data)
    return path

