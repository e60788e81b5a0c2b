"""python3-libnbd with structured replies: data, block status, errors, exports, connections."""

import errno
import hashlib
import os
import random

import nbd

from runner import case
from servers import Export, file, memory
from util import MiB, expect_errno, extents, flags_at, run

HOLE, ZERO = nbd.STATE_HOLE, nbd.STATE_ZERO


@case
def libnbd_writes_read_back_with_structured_replies(ctx):
    srv = ctx.server(Export("", memory(64 * MiB)))
    h = srv.connect()
    assert h.get_structured_replies_negotiated(), "structured replies were not negotiated"
    assert h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION), "base:allocation was not negotiated"
    assert h.get_size() == 64 * MiB
    rng = random.Random(2)
    align = max(1, h.get_block_size(nbd.SIZE_MINIMUM))
    writes = {0: rng.randbytes(MiB), 5 * MiB + 4096: rng.randbytes(128 * 1024),
              64 * MiB - 4096: rng.randbytes(4096), 20 * MiB: rng.randbytes(32 * MiB)}
    if align == 1:  # unaligned requests are only allowed without a minimum block size
        writes[3 * MiB + 1] = rng.randbytes(1)
        writes[3 * MiB + 7] = rng.randbytes(4999)
    for off, data in writes.items():
        h.pwrite(data, off, nbd.CMD_FLAG_FUA if off % 2 else 0)
    h.flush()
    for off, data in writes.items():
        assert h.pread(len(data), off) == data, f"read back at {off} differs"
        if h.can_df():
            chunks = []
            got = h.pread_structured(len(data), off, lambda buf, o, status, err: chunks.append(
                (o, len(buf), status)) or 0, nbd.CMD_FLAG_DF)
            assert got == data, f"DF read at {off} differs"
            assert len(chunks) == 1, f"NBD_CMD_FLAG_DF read at {off} came in {len(chunks)} chunks"
    assert h.pread(MiB, 10 * MiB) == bytes(MiB), "untouched range is not zero"
    h.cache(MiB, 0)
    h.shutdown()
    # nbdsh, libnbd's shell, on a second connection. It runs "python3 -mnbd": put the
    # system python first on PATH.
    digest = hashlib.sha256(writes[5 * MiB + 4096]).hexdigest()
    script = ("import hashlib\n"
              "assert h.get_structured_replies_negotiated()\n"
              f"assert hashlib.sha256(h.pread(128 * 1024, {5 * MiB + 4096})).hexdigest() == '{digest}'\n"
              f"h.pwrite(b'nbdsh' * 100, {40 * MiB})\nh.flush()")
    env = dict(os.environ, PATH="/usr/bin:" + os.environ.get("PATH", ""))
    run(["nbdsh", "-u", srv.uri(), "-c", script], timeout=60, env=env)
    h = srv.connect()
    assert h.pread(500, 40 * MiB) == b"nbdsh" * 100, "nbdsh's write is not visible"
    h.shutdown()


@case
def block_status_reports_data_holes_and_zeroes_after_writes_trims_and_zeroes(ctx):
    srv = ctx.server(Export("", memory(64 * MiB)))
    h = srv.connect()
    data = bytes([0xA5]) * MiB
    h.pwrite(data, 0)                  # [0, 1M) data
    h.pwrite(data, 4 * MiB)            # [4M, 5M) written, then trimmed
    h.trim(MiB, 4 * MiB)
    h.pwrite(data, 8 * MiB)            # [8M, 9M) written, then zeroed
    h.zero(MiB, 8 * MiB)
    h.zero(MiB, 12 * MiB)              # [12M, 13M) zeroed, never written
    h.pwrite(data, 16 * MiB)           # [16M, 17M) zeroed without punching a hole
    h.zero(MiB, 16 * MiB, nbd.CMD_FLAG_NO_HOLE)
    h.flush()
    ext = extents(h, 0, 64 * MiB)
    ends = [start + length for start, length, _ in ext]
    assert ends[-1] == 64 * MiB and all(a[0] + a[1] == b[0] for a, b in zip(ext, ext[1:])), ext
    # Correct in any server: ZERO means the range reads as zeroes.
    for start, length, flags in ext:
        if flags & ZERO:
            assert h.pread(min(length, MiB), start) == bytes(min(length, MiB)), \
                f"extent at {start} is reported ZERO but does not read as zeroes"
    # What a sparse memory device reports. (A range zeroed with NO_HOLE must read as zeroes,
    # checked below, but may be reported as allocated data: the spec wants it provisioned.)
    expect = {0: (0, "written data"), 4 * MiB: (HOLE, "trimmed"), 8 * MiB: (ZERO, "zeroed data"),
              12 * MiB: (ZERO, "zeroed"), 32 * MiB: (HOLE | ZERO, "never written")}
    for off, (want, what) in expect.items():
        for probe in (off, off + MiB - 1):
            got = flags_at(ext, probe)
            ok = got == 0 if want == 0 else got & want == want
            assert ok, f"{what} at {probe}: flags {got}, want {'none' if want == 0 else want}: {ext}"
    for off in (4 * MiB, 8 * MiB, 12 * MiB, 16 * MiB):
        assert h.pread(MiB, off) == bytes(MiB), f"range at {off} does not read as zeroes"
    # NBD_CMD_FLAG_REQ_ONE: exactly one extent, starting at the offset.
    one = []
    h.block_status(8 * MiB, 0, lambda ctxname, off, entries, err: one.append(entries) or 0,
                   nbd.CMD_FLAG_REQ_ONE)
    assert len(one) == 1 and len(one[0]) == 2, f"REQ_ONE returned {one}"
    assert one[0][0] <= MiB and one[0][1] == 0, f"REQ_ONE extent {one[0]}"


@case
def fast_zero_either_zeroes_or_fails_with_enotsup(ctx):
    if reason := ctx.profile.missing("fast-zero"):
        ctx.skip(reason)
    srv = ctx.server(Export("", memory(16 * MiB)))
    h = srv.connect()
    assert h.can_fast_zero(), "a memory export should advertise NBD_FLAG_SEND_FAST_ZERO"
    h.pwrite(b"\x01" * MiB, 0)
    try:
        h.zero(MiB, 0, nbd.CMD_FLAG_FAST_ZERO)
        assert h.pread(MiB, 0) == bytes(MiB), "fast zero succeeded but did not zero"
    except nbd.Error as exc:
        assert exc.errnum == errno.ENOTSUP, f"fast zero failed with {exc}"
        assert h.pread(MiB, 0) == b"\x01" * MiB, "a failed fast zero changed data"
    assert h.pread(4096, 4 * MiB) == bytes(4096)


@case
def request_errors_keep_the_connection_alive(ctx):
    srv = ctx.server(Export("", memory(16 * MiB)))
    h = srv.connect(strict=False)  # let out-of-range requests reach the server
    size = h.get_size()
    h.pwrite(b"ok" * 2048, 0)
    expect_errno(errno.EINVAL, h.pread, 4096, size)             # starts at the end
    expect_errno(errno.EINVAL, h.pread, 8192, size - 4096)      # crosses the end
    expect_errno(errno.ENOSPC, h.pwrite, bytes(4096), size)     # write beyond the end
    expect_errno(errno.ENOSPC, h.pwrite, bytes(8192), size - 4096)
    expect_errno(errno.EINVAL, h.trim, 8192, size - 4096)
    expect_errno(errno.ENOSPC, h.zero, 8192, size - 4096)
    maximum = h.get_block_size(nbd.SIZE_MAXIMUM)
    if 0 < maximum < 64 * MiB:  # libnbd itself refuses reads above 64 MiB
        expect_errno(errno.EINVAL, h.pread, maximum + 1, 0)     # above the maximum payload
    minimum = h.get_block_size(nbd.SIZE_MINIMUM)
    if minimum > 1:
        expect_errno(errno.EINVAL, h.pread, minimum, 1)         # misaligned
    else:
        ctx.note("minimum block size is 1: no misaligned request to send")
    assert h.pread(4096, 0) == b"ok" * 2048, "a normal read after the errors failed"
    h.pwrite(b"still" + bytes(4091), 4096)
    assert h.pread(5, 4096) == b"still"
    h.shutdown()


@case
def a_read_only_export_refuses_writes_with_eperm_and_serves_reads(ctx):
    image = ctx.path("base.img")
    content = random.Random(7).randbytes(4 * MiB)
    with open(image, "wb") as f:
        f.write(content)
    srv = ctx.server(Export("", file(image)), read_only=True)
    h = srv.connect(strict=False)
    assert h.is_read_only(), "NBD_FLAG_READ_ONLY is not set"
    assert h.pread(MiB, MiB) == content[MiB:2 * MiB]
    expect_errno(errno.EPERM, h.pwrite, b"x" * 4096, 0)
    expect_errno(errno.EPERM, h.trim, 4096, 0)
    expect_errno(errno.EPERM, h.zero, 4096, 0)
    assert h.pread(4 * MiB, 0) == content, "data changed or reads fail after refused writes"
    h.shutdown()
    with open(image, "rb") as f:
        assert f.read() == content, "the backing file changed"


@case
def multi_conn_writes_flushed_on_one_connection_are_seen_by_the_others(ctx):
    srv = ctx.server(Export("", memory(64 * MiB)), transport="tcp")
    handles = [srv.connect() for _ in range(4)]
    assert all(h.can_multi_conn() for h in handles), "NBD_FLAG_CAN_MULTI_CONN is not advertised"
    rng = random.Random(4)
    for round_ in range(3):
        for i, writer in enumerate(handles):
            off = (round_ * 4 + i) * 2 * MiB
            data = rng.randbytes(MiB + 4096)
            writer.pwrite(data, off)
            writer.flush()
            for j, reader in enumerate(handles):
                got = reader.pread(len(data), off)
                assert got == data, f"round {round_}: connection {j} misses connection {i}'s write"
    for h in handles:
        h.shutdown()


@case
def two_named_exports_are_separate_and_the_first_is_the_default(ctx):
    if reason := ctx.profile.missing("multi-export"):
        ctx.skip(reason)
    srv = ctx.server(Export("first", memory(16 * MiB)), Export("second", memory(32 * MiB)))
    first, second, default = srv.connect("first"), srv.connect("second"), srv.connect("")
    assert (first.get_size(), second.get_size(), default.get_size()) == (16 * MiB, 32 * MiB, 16 * MiB)
    first.pwrite(b"1" * 4096, 0)
    first.flush()
    second.pwrite(b"2" * 4096, 0)
    second.flush()
    assert first.pread(4096, 0) == b"1" * 4096
    assert second.pread(4096, 0) == b"2" * 4096, "a write to the first export reached the second"
    assert default.pread(4096, 0) == b"1" * 4096, "the default export is not the first one"
    h = nbd.NBD()
    h.set_export_name("third")
    expect_errno(errno.ENOENT, h.connect_unix, srv.socket_path)
    for h in (first, second, default):
        h.shutdown()
