"""The server as a program: readiness, pidfile, printed URI, signals, command line.

The command-line cases test the `nbdx serve` contract of issue 2 and skip for other
profiles; readiness, the pidfile and signals are checked on every profile.
"""

import os
import re
import signal
import socket
import time

from runner import case
from servers import STOP_TIMEOUT, Export, file, memory
from util import GiB, MiB, run, wait_for

URI_RE = re.compile(r"nbd(?:\+unix)?://\S+")


@case
def the_pidfile_is_written_once_the_server_accepts_connections(ctx):
    if reason := ctx.profile.missing("pidfile"):
        ctx.skip(reason)
    pidfile = ctx.path("server.pid")
    srv = ctx.server(Export("", memory(16 * MiB)), pidfile=pidfile, wait=False)
    wait_for(lambda: os.path.exists(pidfile) and open(pidfile).read().strip() or not srv.alive(),
             20, "the pidfile")
    assert srv.alive(), f"the server exited:\n{srv.log_tail()}"
    # Written once connections are accepted: connecting right now must work.
    assert srv.greeting_received(), "the pidfile exists but the server does not accept connections"
    assert open(pidfile).read().strip() == str(srv.pid), f"pidfile holds {open(pidfile).read()!r}"


def printed_uri(srv):
    found = []
    wait_for(lambda: found.extend(URI_RE.findall(srv.log_text().split("\n", 1)[-1])) or found,
             10, "a URI in the server's output")
    return found[0]


@case
def the_server_prints_a_uri_that_clients_can_use(ctx):
    if reason := ctx.profile.missing("print-uri"):
        ctx.skip(reason)
    for transport in ("unix", "tcp"):
        srv = ctx.server(Export("", memory(16 * MiB)), transport=transport)
        uri = printed_uri(srv)
        if transport == "unix":
            assert uri.startswith("nbd+unix://") and srv.socket_path in uri, uri
        else:
            assert uri.startswith("nbd://") and f":{srv.port}" in uri, uri
        size = run(["nbdinfo", "--size", uri], timeout=60).stdout.decode().strip()
        assert size == str(16 * MiB), f"nbdinfo --size {uri}: {size}"


@case
def sigterm_and_sigint_stop_the_server_with_status_0_keeping_written_data(ctx):
    prompt = ctx.profile.missing("prompt-stop")
    if prompt:
        ctx.note(f"{prompt}: the client disconnects before the signal")
    for sig in (signal.SIGTERM, signal.SIGINT):
        image = ctx.path(f"disk-{sig.name}.img")
        with open(image, "wb") as f:
            f.truncate(8 * MiB)
        srv = ctx.server(Export("", file(image)))
        h = srv.connect()
        h.pwrite(b"\x77" * MiB, MiB)  # acknowledged, never flushed by the client
        if prompt:
            h.shutdown()
        started = time.monotonic()
        rc = srv.terminate(sig, timeout=STOP_TIMEOUT)
        took = time.monotonic() - started
        assert rc == 0, f"{sig.name} with a client connected: exit status {rc} (want 0)"
        assert took < 5, f"{sig.name}: the server took {took:.1f}s to stop"
        del h
        with open(image, "rb") as f:
            f.seek(MiB)
            assert f.read(MiB) == b"\x77" * MiB, f"{sig.name}: written data is not in the file"


def nbdx_cli(ctx):
    if reason := ctx.profile.missing("nbdx-cli"):
        ctx.skip(reason)
    return ctx.profile.binary


@case
def bad_arguments_give_a_one_line_error_and_exit_status_2(ctx):
    nbdx = nbdx_cli(ctx)
    sock = ctx.path("never.sock")
    bad = [["--port", "notaport"], ["memory:12Q"], ["memory:"], ["--bogus-option"],
           ["--export", "no-equals-sign"], ["-U", sock, "memory:1G", "extra-source"]]
    for args in bad:
        res = run([nbdx, "serve", *args], timeout=30, check=False)
        lines = [line for line in res.stderr.decode(errors="replace").splitlines() if line.strip()]
        assert res.returncode == 2, f"nbdx serve {args}: exit status {res.returncode} (want 2)"
        assert len(lines) == 1, f"nbdx serve {args}: want a one-line error, got {lines}"
        assert not os.path.exists(sock), f"nbdx serve {args} created its socket"


@case
def options_may_follow_the_source_and_sizes_take_iec_suffixes(ctx):
    nbdx = nbdx_cli(ctx)
    image = ctx.path("plain.img")
    with open(image, "wb") as f:
        f.write(b"plain path source" + bytes(4096 - 17))
    layouts = [
        (["memory:3M", "-r", "-e", "late", "-U", "{sock}"], "late", 3 * MiB, True),
        (["null:1T", "-U", "{sock}"], "", 1 << 40, False),
        (["-U", "{sock}", "memory:1048576"], "", MiB, False),
        (["-U", "{sock}", "-d", "a description", image], "", 4096, False),
        (["-U", "{sock}", f"file:{image}", "--read-only"], "", 4096, True),
    ]
    for args, name, size, read_only in layouts:
        srv = ctx.server(Export(name, memory(1)),
                         command=lambda s, a=args: [nbdx, "serve", *(x.format(sock=s.socket_path) for x in a)])
        h = srv.connect(name)
        assert h.get_size() == size, f"nbdx serve {args}: size {h.get_size()} (want {size})"
        assert h.is_read_only() == read_only, f"nbdx serve {args}: read-only is {h.is_read_only()}"
        if size == 4096:
            assert h.pread(17, 0) == b"plain path source"
        else:
            assert h.pread(4096, size - 4096) == bytes(4096)
        h.shutdown()
        problems = srv.stop()
        assert not problems, f"nbdx serve {args}: {problems}"


@case
def without_a_port_the_server_listens_on_10809_and_serves_1_gib_of_memory(ctx):
    nbdx = nbdx_cli(ctx)
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 10809)) == 0:
            ctx.skip("another process listens on 127.0.0.1:10809 (another developer's server?)")
    srv = ctx.server(command=lambda s: [nbdx, "serve", "-i", "127.0.0.1"], transport="tcp", port=10809)
    h = srv.connect()
    assert h.get_size() == GiB, f"default source size {h.get_size()} (want 1 GiB)"
    h.pwrite(b"default", 0)
    assert h.pread(7, 0) == b"default"
    h.shutdown()
