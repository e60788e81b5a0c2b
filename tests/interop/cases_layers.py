"""Layers on an export (`nbdx serve --layer SPEC`): cow, error, delay, log, readahead,
seen by a real client (libnbd).

These exercise the nbdx command line (issue 8) and skip for other profiles.
"""

import errno
import os
import re
import statistics
import time

import nbd

from cases_cli import nbdx_cli
from runner import case
from util import MiB, expect_errno, extents, flags_at, make_image, read_all, sha256_file

STATE_HOLE, STATE_ZERO = 1, 2


def layered(ctx, *args, source):
    """A server of `source` with the layers in `args` (--layer ... pairs) on a Unix socket."""
    nbdx = nbdx_cli(ctx)
    return ctx.server(command=lambda s: [nbdx, "serve", "-U", s.socket_path, *args, source])


@case
def cow_shows_writes_trims_and_zeroes_to_clients_and_leaves_the_base_file_unchanged(ctx):
    base = ctx.path("base.img")
    make_image(base, 16 * MiB, seed=8, pieces=12)
    with open(base, "r+b") as f:
        f.write(b"\xee" * (4 * MiB))  # data where the trim and the zero go
    before = sha256_file(base)
    os.chmod(base, 0o444)  # the base is opened read-only: a read-only file must do
    srv = layered(ctx, "--layer", "cow", source=base)
    h = srv.connect()
    assert not h.is_read_only(), "cow over a read-only base must be writable"
    h.pwrite(b"\x42" * 100000, 12345)
    h.trim(MiB, MiB)  # libnbd: (count, offset)
    h.zero(MiB, 2 * MiB)
    h.zero(4096, 3 * MiB + 512)  # a partial block
    h.flush()
    assert h.pread(100000, 12345) == b"\x42" * 100000
    assert h.pread(2 * MiB, MiB) == bytes(2 * MiB), "trimmed and zeroed ranges do not read as zeroes"
    assert h.pread(4096, 3 * MiB + 512) == bytes(4096)
    assert h.pread(512, 3 * MiB) == b"\xee" * 512, "bytes next to a partial zero changed"
    ext = extents(h, 0, 4 * MiB)
    for at in (MiB, 2 * MiB):
        assert flags_at(ext, at) & STATE_ZERO, f"zeroed blocks are not reported as zero: {ext}"
    assert not flags_at(ext, 0) & STATE_HOLE, f"written data is reported as a hole: {ext}"
    h.shutdown()
    assert not srv.stop(), srv.log_tail()
    assert sha256_file(base) == before, "the cow layer wrote to its base"


@case
def a_cow_overlay_file_keeps_the_writes_across_restarts(ctx):
    base, overlay = ctx.path("base.img"), ctx.path("overlay.cow")
    with open(base, "wb") as f:
        f.write(b"\x11" * (4 * MiB))
    before = sha256_file(base)
    srv = layered(ctx, "--layer", f"cow={overlay}", source=base)
    h = srv.connect()
    h.pwrite(b"kept" * 1024, 3 * MiB)
    h.shutdown()
    assert not srv.stop(), srv.log_tail()
    srv = layered(ctx, "--layer", f"cow={overlay}", source=base)
    h = srv.connect()
    assert h.pread(4096, 3 * MiB) == b"kept" * 1024, "the overlay file lost the write"
    assert h.pread(4096, 0) == b"\x11" * 4096
    h.shutdown()
    assert sha256_file(base) == before


@case
def the_error_layer_fails_the_configured_share_of_reads_with_eio(ctx):
    srv = layered(ctx, "--layer", "error=0.3", source="memory:1M")
    h = srv.connect()
    failed = 0
    for i in range(2000):
        try:
            h.pread(512, (i * 512) % MiB)
        except nbd.Error as exc:
            assert exc.errnum == errno.EIO, f"read {i} failed with {exc}"
            failed += 1
    rate = failed / 2000
    ctx.note(f"{failed} of 2000 reads failed ({rate:.3f})")
    assert 0.25 <= rate <= 0.35, f"error=0.3: {rate:.3f} of the reads failed"
    h.shutdown()
    srv = layered(ctx, "--layer", "error=1:ENOSPC", source="memory:1M")
    h = srv.connect()
    expect_errno(errno.ENOSPC, h.pwrite, b"x" * 512, 0)
    h.shutdown()


def median_ms(fn, count=25):
    times = []
    for _ in range(count):
        started = time.monotonic()
        fn()
        times.append((time.monotonic() - started) * 1000)
    return statistics.median(times)


@case
def the_delay_layer_adds_its_latency_to_reads_and_writes(ctx):
    plain = layered(ctx, source="memory:1M").connect()
    base_read = median_ms(lambda: plain.pread(4096, 0))
    plain.shutdown()
    h = layered(ctx, "--layer", "delay=30:60", source="memory:1M").connect()
    read = median_ms(lambda: h.pread(4096, 0))
    write = median_ms(lambda: h.pwrite(b"w" * 4096, 0))
    h.shutdown()
    ctx.note(f"median QD1 latency: plain read {base_read:.2f} ms, delayed read {read:.1f} ms, "
             f"delayed write {write:.1f} ms")
    assert 30 <= read < 30 + 25, f"delay=30: median read latency {read:.1f} ms"
    assert 60 <= write < 60 + 25, f"delay=:60: median write latency {write:.1f} ms"


@case
def the_log_layer_writes_a_line_per_request_and_per_completion(ctx):
    log = ctx.path("requests.log")
    srv = layered(ctx, "--layer", f"log={log}", source="memory:1M")
    h = srv.connect()
    h.pwrite(b"l" * 4096, 8192)
    h.pread(512, 8192)
    h.flush()
    h.shutdown()
    assert not srv.stop(), srv.log_tail()
    lines = open(log).read().splitlines()
    stamp = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6} "
    assert re.match(stamp + r"Open size=0x100000 ", lines[0]), lines[:2]
    wanted = [r"Write id=(\d+) offset=0x2000 count=0x1000 fua=0 \.\.\.$", r"\.\.\.Write id=\1 return=0 \(Success\)$",
              r"Read id=(\d+) offset=0x2000 count=0x200 \.\.\.$", r"\.\.\.Read id=\1 return=0 \(Success\)$"]
    text = "\n".join(lines)
    for begin, end in (wanted[0:2], wanted[2:4]):
        m = re.search(stamp + begin, text, re.M)
        assert m, f"no line like {begin!r} in:\n{text}"
        assert re.search(stamp + end.replace(r"\1", m.group(1)), text, re.M), f"no completion of {m.group(0)}"


@case
def readahead_and_a_stack_of_layers_serve_the_same_bytes_as_the_file(ctx):
    image = ctx.path("image.img")
    make_image(image, 32 * MiB, seed=3)
    srv = layered(ctx, "--layer", "readahead", "--layer", "delay=0:0", "--layer", "cow", source=image)
    h = srv.connect()
    data = read_all(h, chunk=256 * 1024)
    with open(image, "rb") as f:
        assert data == f.read(), "sequential reads through readahead differ from the file"
    h.shutdown()
