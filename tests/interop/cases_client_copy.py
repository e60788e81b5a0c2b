"""`nbdx copy` between real servers, files and pipes, with checksums.

Peers: nbdkit (memory), qemu-nbd (raw files), nbdx. Destinations start dirty, so a
hole that is skipped instead of zeroed shows up in the checksum. One case times a
4 GiB mostly-empty copy against nbdcopy and checks that the result is sparse.
"""

import hashlib
import os
import random
import subprocess
import time

from peers import nbdx, nbdx_binary, sparse_image, start, with_data
from runner import case
from servers import Export, file, memory
from util import GiB, MiB, make_image, run, sha256_export, sha256_file

SIZE = 64 * MiB


def data_pieces(seed, size=SIZE):
    rng = random.Random(seed)
    return [(0, rng.randbytes(4096)), (3 * MiB + 512, rng.randbytes(70000)),
            (20 * MiB, rng.randbytes(5 * MiB)), (size - MiB, rng.randbytes(MiB))]


def dirty_image(path, size=SIZE):
    with open(path, "wb") as f:
        f.write(b"\xee" * size)
    return path


def export_sha(srv, name=None):
    h = srv.connect(name)
    digest = sha256_export(h)
    h.shutdown()
    return digest


def sha(data):
    return hashlib.sha256(data).hexdigest()


@case(timeout=300)
def nbdx_copy_moves_images_between_servers_files_and_pipes_with_equal_checksums(ctx):
    for transport in ("unix", "tcp"):
        src = with_data(start(ctx, "nbdkit", [Export("", memory(SIZE))], transport), data_pieces(1))
        want = export_sha(src)
        # server → new file, sparse
        out = ctx.path(f"out-{transport}.img")
        nbdx(ctx, "copy", src.uri(), out)
        assert sha256_file(out) == want, f"server → file over {transport}: checksum differs"
        assert os.stat(out).st_blocks * 512 < 16 * MiB, f"server → file: {os.stat(out).st_blocks} blocks"
        # file → server (qemu-nbd on a dirty file)
        image = ctx.path(f"src-{transport}.img")
        make_image(image, SIZE, seed=5)
        qemu = start(ctx, "qemu-nbd", [Export("disk", file(dirty_image(ctx.path(f"q-{transport}.img"))))], transport)
        nbdx(ctx, "copy", image, qemu.uri(), "-C", "2")
        assert export_sha(qemu) == sha256_file(image), f"file → qemu-nbd over {transport}: checksum differs"
        # server → server (nbdkit → qemu-nbd)
        nbdx(ctx, "copy", src.uri(), qemu.uri())
        assert export_sha(qemu) == want, f"nbdkit → qemu-nbd over {transport}: checksum differs"
        # server → stdout
        piped = nbdx(ctx, "copy", src.uri(), "-").stdout
        assert len(piped) == SIZE and sha(piped) == want, f"server → stdout over {transport}: differs"
        # stdin (a pipe) → server
        dst = start(ctx, "nbdx", [Export("", memory(SIZE))], transport)
        with_data(dst, [(0, b"\xee" * (SIZE // 2)), (SIZE // 2, b"\xee" * (SIZE // 2))])
        with open(image, "rb") as f:
            # Through `cat`, so that standard input is a pipe, not the file itself.
            feeder = subprocess.Popen(["cat"], stdin=f, stdout=subprocess.PIPE)
            res = subprocess.run([nbdx_binary(ctx), "copy", "-", dst.uri()], stdin=feeder.stdout,
                                 capture_output=True, timeout=120)
            feeder.stdout.close()
            feeder.wait(timeout=60)
        assert res.returncode == 0, res.stderr
        assert export_sha(dst) == sha256_file(image), f"stdin → nbdx over {transport}: checksum differs"
    # Options after the operands, one connection, few requests, no extents.
    out = ctx.path("late-options.img")
    nbdx(ctx, "copy", src.uri(), out, "-C", "1", "-R", "2", "--no-extents", "--request-size", "64K")
    assert sha256_file(out) == want


def check_sparse_copy(path, pieces):
    """Every allocated range of `path` holds what `pieces` put there and zeroes elsewhere;
    every piece was copied. Reads only the allocated ranges (SEEK_DATA/SEEK_HOLE)."""
    with open(path, "rb") as f:
        fd, end, pos, seen = f.fileno(), os.fstat(f.fileno()).st_size, 0, 0
        while True:
            try:
                pos = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: no data after pos
                break
            stop = os.lseek(fd, pos, os.SEEK_HOLE)
            data = os.pread(fd, stop - pos, pos)
            want = bytearray(stop - pos)
            for offset, piece in pieces:
                lo, hi = max(offset, pos), min(offset + len(piece), stop)
                if lo < hi:
                    want[lo - pos:hi - pos] = piece[lo - offset:hi - offset]
                    seen += hi - lo
            assert data == want, f"{path}: bytes {pos}..{stop} differ from the source"
            pos = stop
            if pos >= end:
                break
    assert seen == sum(len(p) for _, p in pieces), f"{path}: only {seen} bytes of data were copied"


@case(timeout=300)
def a_4_gib_mostly_empty_export_copies_to_a_sparse_file_about_as_fast_as_nbdcopy(ctx):
    size = 4 * GiB
    src = with_data(start(ctx, "nbdkit", [Export("", memory(size))], "unix"), data_pieces(2, size))
    times = {"nbdx": [], "nbdcopy": []}
    for round_ in range(2):
        for tool in ("nbdcopy", "nbdx"):
            out = ctx.path(f"{tool}-{round_}.img")
            argv = [nbdx_binary(ctx), "copy"] if tool == "nbdx" else ["nbdcopy"]
            started = time.monotonic()
            run(argv + [src.uri(), out], timeout=240)
            times[tool].append(time.monotonic() - started)
            assert os.path.getsize(out) == size, f"{tool}: the copy has {os.path.getsize(out)} bytes"
            if tool == "nbdx":
                used = os.stat(out).st_blocks * 512
                assert used < 64 * MiB, f"nbdx's copy uses {used} bytes on disk: not sparse"
            if round_ == 1:
                os.remove(out)
    check_sparse_copy(ctx.path("nbdx-0.img"), data_pieces(2, size))
    ours, theirs = min(times["nbdx"]), min(times["nbdcopy"])
    ctx.note(f"4 GiB mostly empty → file: nbdx {ours:.2f}s, nbdcopy {theirs:.2f}s (best of 2)")
    assert ours <= 1.5 * theirs + 0.5, f"nbdx took {ours:.2f}s, nbdcopy {theirs:.2f}s"


@case
def a_destination_smaller_than_the_source_is_refused_before_any_byte_moves(ctx):
    src = with_data(start(ctx, "nbdkit", [Export("", memory(SIZE))]), data_pieces(3))
    small = start(ctx, "nbdx", [Export("", memory(SIZE // 2))])
    with_data(small, [(0, b"\x77" * 4096)])
    res = nbdx(ctx, "copy", src.uri(), small.uri(), check=False)
    err = res.stderr.decode()
    assert res.returncode == 1 and "smaller than the source" in err, (res.returncode, err)
    assert len(err.strip().splitlines()) == 1, err
    h = small.connect()
    assert h.pread(4096, 0) == b"\x77" * 4096, "the destination was written to"
    h.shutdown()


@case
def progress_goes_to_stderr_as_percentages_on_a_pipe(ctx):
    src = with_data(start(ctx, "nbdkit", [Export("", memory(SIZE))]), data_pieces(4))
    res = nbdx(ctx, "copy", "-p", src.uri(), "null:")
    lines = res.stderr.decode().split()
    assert lines and lines[-1] == "100%", f"progress lines: {lines}"
    assert all(line.endswith("%") for line in lines), lines
    image = sparse_image(ctx.path("p.img"), SIZE, data_pieces(4))
    assert nbdx(ctx, "copy", image, "null:", "--progress").stderr.decode().split()[-1] == "100%"


@case
def a_loop_block_device_is_checked_for_size_written_and_read_back(ctx):
    backing = ctx.path("loop.img")
    with open(backing, "wb") as f:
        f.truncate(SIZE)
    res = run(["losetup", "-f", "--show", backing], timeout=30, check=False)
    device = res.stdout.decode().strip()
    if res.returncode != 0 or not device.startswith("/dev/"):
        ctx.skip(f"no loop device here: {res.stderr.decode().strip()}")
    try:
        big = start(ctx, "nbdkit", [Export("", memory(2 * SIZE))])
        res = nbdx(ctx, "copy", big.uri(), device, check=False)
        assert res.returncode == 1 and b"smaller than the source" in res.stderr, res.stderr
        image = ctx.path("src.img")
        make_image(image, SIZE, seed=21)
        nbdx(ctx, "copy", image, device)
        out = ctx.path("back.img")
        nbdx(ctx, "copy", device, out)
        assert sha256_file(out) == sha256_file(image), "file → block device → file changed the data"
        assert os.stat(out).st_blocks * 512 < SIZE // 2, "zero blocks read from the device were written"
    finally:
        run(["losetup", "-d", device], timeout=30, check=False)
