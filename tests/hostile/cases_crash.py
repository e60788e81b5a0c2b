"""Crash consistency of the file backend: what was acknowledged as durable survives kill -9.

A client pipelines writes (up to 8 in flight) to distinct 64 KiB slots of
`nbdx serve file:PATH` and records what the server acknowledged: a write with
NBD_CMD_FLAG_FUA is durable once acknowledged; a plain write is durable once an
NBD_CMD_FLUSH sent after its acknowledgement is acknowledged ("completed (replied
to) prior to processing the flush"). After a seeded number of acknowledgements the
server gets SIGKILL with more writes in flight; the file, read directly, must then
hold every durable write, and slots never written must still be zero.

What this proves and what it cannot: a killed process loses nothing the kernel
already has, so this shows that nbdx acknowledges only after the data reached the
kernel (no user-space write-back) and that FLUSH and FUA do not answer early. Power
loss cannot be simulated here; `fua_and_flush_are_fdatasync_before_the_reply` shows
with strace that each FUA write is a pwritev2(RWF_DSYNC) (or a write plus
fdatasync) and each FLUSH an fdatasync, completed before the reply is sent.
"""

import os
import re
import shutil
import signal

import nbdraw as n
from hostile import hostile
from nbdraw import Closed
from servers import Export, file
from util import KiB, MiB

SLOT = 64 * KiB
FILE_SIZE = 64 * MiB
WINDOW = 8


def write_stream(r, pid, rng, fua, kill_after):
    """Writes until the server is killed; returns (durable writes, acknowledged writes)."""
    slots = list(range(FILE_SIZE // SLOT))
    rng.shuffle(slots)
    inflight, durable, acked, unflushed = {}, [], [], []
    flush_cookie, flush_covers, cookie, killed = None, [], 0, False
    try:
        while True:
            while len(inflight) < WINDOW and slots:
                slot = slots.pop()
                data = rng.randbytes(rng.randrange(1, SLOT // 512 + 1) * 512)
                cookie += 1
                inflight[cookie] = (slot * SLOT, data)
                r.request(n.WRITE, cookie, slot * SLOT, len(data), n.FUA if fua else 0, data)
            if not fua and flush_cookie is None and len(unflushed) >= WINDOW:
                cookie += 1
                flush_cookie, flush_covers, unflushed = cookie, unflushed, []
                r.request(n.FLUSH, cookie)
            if not inflight and flush_cookie is None:
                break
            got, errno, _ = r.transmission_reply(timeout=30)
            assert errno == 0, f"request {got} failed with {errno}"
            if got == flush_cookie:
                durable += flush_covers
                flush_cookie = None
                continue
            write = inflight.pop(got)
            acked.append(write)
            (durable if fua else unflushed).append(write)
            if len(acked) >= kill_after and not killed:
                os.kill(pid, signal.SIGKILL)
                killed = True
    except Closed:
        assert killed, "the server closed the connection before it was killed"
    assert killed, "the stream ended before the kill"
    return durable, acked


def crash_round(t, seed_name, fua):
    rng = t.rng(seed_name)
    path = os.path.join(t.workdir, f"{seed_name}.img")
    with open(path, "wb") as f:
        f.truncate(FILE_SIZE)
    srv = t.start(Export("", file(path)))
    r = t.negotiated("simple", srv)
    kill_after = rng.randrange(20, 400)
    durable, acked = write_stream(r, srv.pid, rng, fua, kill_after)
    srv.signalled = True
    assert srv.proc.wait(timeout=10) == -signal.SIGKILL
    r.close()
    with open(path, "rb") as f:
        image = f.read()
    assert len(image) == FILE_SIZE, f"file size {len(image)}"
    lost = [off for off, data in durable if image[off:off + len(data)] != data]
    assert not lost, f"{len(lost)} of {len(durable)} durable writes lost, first at offset {lost[0]}"
    acked_slots = {off // SLOT for off, _ in acked}
    zero = bytes(SLOT)
    strays = [s for s in range(FILE_SIZE // SLOT) if s not in acked_slots and image[s * SLOT:(s + 1) * SLOT] != zero]
    # Slots with data that were never acknowledged must be writes that were in flight.
    assert len(strays) <= WINDOW, f"{len(strays)} slots hold data nobody acknowledged (window {WINDOW})"
    t.note(f"{seed_name}: killed after {len(acked)} acknowledged writes ({len(durable)} durable), "
           f"{len(strays)} in-flight writes also landed; all durable writes intact")


@hostile("every write acknowledged with FUA is in the file after kill -9 (3 seeds)", "NBD_CMD_FLAG_FUA",
         own=True, timeout=120)
def kill_9_during_fua_writes(t):
    for i in range(3):
        crash_round(t, f"fua-{i}", fua=True)


@hostile("every write acknowledged before an acknowledged FLUSH is in the file after kill -9 (3 seeds)",
         "NBD_CMD_FLUSH", own=True, timeout=120)
def kill_9_during_writes_and_flushes(t):
    for i in range(3):
        crash_round(t, f"flush-{i}", fua=False)


SYSCALL = re.compile(r"^(\d+)\s+(\w+)\((\d+)(.*)$")


@hostile("each FUA write is pwritev2(RWF_DSYNC) or write + fdatasync, each FLUSH an fdatasync, "
         "before the reply is sent", "NBD_CMD_FLAG_FUA, NBD_CMD_FLUSH", own=True, timeout=120)
def fua_and_flush_are_fdatasync_before_the_reply(t):
    if not shutil.which("strace"):
        raise AssertionError("strace is not installed (scripts/test.sh installs it)")
    path = os.path.join(t.workdir, "traced.img")
    with open(path, "wb") as f:
        f.truncate(FILE_SIZE)
    log, pidfile = os.path.join(t.workdir, "strace.log"), os.path.join(t.workdir, "nbdx.pid")
    calls = "pwritev2,pwrite64,pwritev,fdatasync,fsync,write,writev,sendto,sendmsg"
    srv = t.start(Export("", file(path)), pidfile=pidfile,
                  command=lambda s: ["strace", "-f", "-qq", "-e", f"trace={calls}", "-e", "signal=none",
                                     "-o", log, *t.profile.argv(s)])
    r = t.negotiated("simple", srv)
    offsets = [i * SLOT for i in range(5)]
    for i, off in enumerate(offsets):  # one at a time: each reply follows its own write
        r.request(n.WRITE, i, off, 4096, n.FUA, bytes([i + 1]) * 4096)
        assert r.transmission_reply()[:2] == (i, 0)
    for i in range(5):
        r.request(n.WRITE, 10 + i, (10 + i) * SLOT, 4096, 0, b"p" * 4096)
        assert r.transmission_reply()[:2] == (10 + i, 0)
        r.request(n.FLUSH, 20 + i)
        assert r.transmission_reply()[:2] == (20 + i, 0)
    r.close()
    nbdx_pid = int(open(pidfile).read())
    os.kill(nbdx_pid, signal.SIGTERM)
    srv.signalled = True
    srv.proc.wait(timeout=20)
    events = []  # ("durable", offset) | ("sync",) | ("reply",)
    image_fd = None
    for line in open(log):
        m = SYSCALL.match(line)
        if not m or "= -1" in line:
            continue
        call, fd, rest = m.group(2), int(m.group(3)), m.group(4)
        if call in ("pwritev2", "pwrite64", "pwritev"):
            image_fd = fd
            args = [a.strip() for a in rest[:rest.rindex(") =")].rsplit(",", 2)]
            off = int(args[-2] if call == "pwritev2" else args[-1])
            events.append(("durable" if "RWF_DSYNC" in args[-1] else "write", off))
        elif call in ("fdatasync", "fsync"):
            events.append(("sync", fd))
        elif call in ("writev", "sendmsg") and fd > 2 and fd != image_fd:
            # Replies leave in vectored writes (tokio's wake-ups are plain writes to an eventfd).
            events.append(("reply", fd))
    kinds = [e[0] for e in events]
    # FUA: the reply to write i comes after its durable write (or its write and a sync).
    for i, off in enumerate(offsets):
        at = next((k for k, e in enumerate(events) if e[1] == off and e[0] in ("durable", "write")), None)
        assert at is not None, f"no write at {off} in the trace"
        if events[at][0] == "write":
            assert kinds[at + 1:at + 2] == ["sync"], f"FUA write at {off} was not followed by fdatasync"
            at += 1
        assert "reply" in kinds[at + 1:], f"no reply after the FUA write at {off}"
        nxt = next((e for e in events[at + 1:] if e[0] in ("durable", "write")), None)
        if nxt is not None:
            later = kinds[at + 1:events.index(nxt)]
            assert "reply" in later, f"the next write came before the reply to the FUA write at {off}"
    # FLUSH: every plain write is followed by an fdatasync before the next reply but one.
    for i in range(5):
        off = (10 + i) * SLOT
        at = next(k for k, e in enumerate(events) if e == ("write", off))
        tail = kinds[at + 1:]
        assert tail[:1] == ["reply"], f"the write at {off} was not answered first"
        assert tail[1:3] == ["sync", "reply"], f"FLUSH after the write at {off}: {tail[:4]}"
    t.note(f"{kinds.count('durable')} RWF_DSYNC writes, {kinds.count('sync')} fdatasync calls traced")
