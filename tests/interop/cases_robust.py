"""Clients that die mid-request must not hurt the server or other clients."""

import random
import select
import signal
import subprocess
import time


from runner import case
from servers import Export, memory
from util import MiB

PYTHON = "/usr/bin/python3"

# A client that submits large requests, says so, and waits to be killed without ever
# collecting a reply: its writes are left half sent, its reads half received.
CHILD = r"""
import sys, nbd
socket_path, mode, base = sys.argv[1], sys.argv[2], int(sys.argv[3])
h = nbd.NBD()
h.connect_unix(socket_path)
size = 32 << 20
keep = []
for i in range(6):
    if mode == "write":
        buf = nbd.Buffer.from_bytearray(bytearray(b"\xee") * size)
        h.aio_pwrite(buf, base + (i % 2) * size)
    else:
        buf = nbd.Buffer(size)
        h.aio_pread(buf, base + (i % 2) * size)
    keep.append(buf)
print("submitted", h.aio_in_flight(), flush=True)
sys.stdin.read()
"""


def start_child(srv, mode, base):
    proc = subprocess.Popen([PYTHON, "-c", CHILD, srv.socket_path, mode, str(base)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    line = b""
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            proc.kill()
            err = proc.communicate(timeout=10)[1].decode(errors="replace")
            raise AssertionError(f"{mode} client did not submit its requests: {line!r} {err}")
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if ready:
            chunk = proc.stdout.read1(100)
            if not chunk:
                continue
            line += chunk
    assert line.startswith(b"submitted"), line
    return proc


def killed_clients_leave_the_server_serving_intact_data(ctx, mode):
    srv = ctx.server(Export("", memory(256 * MiB)))
    known = random.Random(5).randbytes(16 * MiB)
    bystander = srv.connect()
    bystander.pwrite(known, 0)
    bystander.flush()
    for round_ in range(3):
        child = start_child(srv, mode, 64 * MiB)
        # Work from another connection while the child is stuck mid-request.
        bystander.pwrite(b"b" * 4096, 32 * MiB + round_ * 4096)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        fresh = srv.connect()
        assert fresh.pread(16 * MiB, 0) == known, f"round {round_}: known data changed"
        fresh.pwrite(b"f" * 4096, 48 * MiB)
        assert fresh.pread(4096, 48 * MiB) == b"f" * 4096
        fresh.shutdown()
        assert bystander.pread(4096, 32 * MiB + round_ * 4096) == b"b" * 4096, \
            f"round {round_}: the connection that stayed lost a write"
        assert srv.alive(), f"round {round_}: the server died"
    bystander.shutdown()


@case
def a_client_killed_mid_write_payload_leaves_the_server_serving_intact_data(ctx):
    killed_clients_leave_the_server_serving_intact_data(ctx, "write")


@case
def a_client_killed_with_large_reads_in_flight_leaves_the_server_serving_intact_data(ctx):
    killed_clients_leave_the_server_serving_intact_data(ctx, "read")


@case
def a_client_that_dies_during_the_handshake_does_not_disturb_the_server(ctx):
    srv = ctx.server(Export("", memory(16 * MiB)))
    h = srv.connect()
    h.pwrite(b"k" * 4096, 0)
    # Client flags and half an option header, then SIGKILL.
    raw = subprocess.Popen([PYTHON, "-c", "import socket,sys; s=socket.socket(socket.AF_UNIX);"
                            "s.connect(sys.argv[1]); s.recv(18); s.send(b'\\0\\0\\0\\3IHAVEOPT\\0');"
                            "print('ok', flush=True); sys.stdin.read()", srv.socket_path],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert select.select([raw.stdout], [], [], 30)[0], "the raw client did not connect"
    raw.kill()
    raw.wait(timeout=10)
    assert h.pread(4096, 0) == b"k" * 4096
    fresh = srv.connect()
    assert fresh.pread(4096, 0) == b"k" * 4096
    fresh.shutdown()
    h.shutdown()
