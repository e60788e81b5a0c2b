"""Helpers shared by the cases: commands with time limits, images, checksums, libnbd."""

import errno
import functools
import hashlib
import os
import random
import re
import socket
import subprocess
import time

import nbd

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


def size_arg(size):
    """SIZE as the nbdx CLI takes it: with an IEC suffix where exact, else in bytes."""
    for suffix, unit in (("T", 1 << 40), ("G", GiB), ("M", MiB), ("K", KiB)):
        if size >= unit and size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)


def free_tcp_port():
    """A port on 127.0.0.1 that was free a moment ago (servers retry if it is taken)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(argv, timeout=120, check=True, input=None, env=None):
    """Runs a command; on failure (check) raises AssertionError with its output."""
    try:
        res = subprocess.run(argv, input=input, capture_output=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"timed out after {timeout}s: {' '.join(argv)}") from exc
    if check and res.returncode != 0:
        raise AssertionError(f"exit status {res.returncode}: {' '.join(argv)}\n"
                             f"stdout: {res.stdout.decode(errors='replace')[-2000:]}\n"
                             f"stderr: {res.stderr.decode(errors='replace')[-2000:]}")
    return res


@functools.lru_cache(maxsize=None)
def qemu_version():
    """(major, minor) of the installed qemu-img, or (0, 0)."""
    try:
        out = run(["qemu-img", "--version"], timeout=30).stdout.decode()
    except (AssertionError, OSError):
        return (0, 0)
    m = re.search(r"version (\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(4 * MiB), b""):
            h.update(chunk)
    return h.hexdigest()


def make_image(path, size, seed, pieces=24):
    """A raw image of random data pieces and holes; returns the sorted data extents.

    Pieces are MiB-aligned and at most 1 MiB (some 4 KiB, some odd-sized), so a
    MiB-aligned range without a piece is a hole of a sparse file.
    """
    rng = random.Random(seed)
    slots = rng.sample(range(size // MiB), pieces)
    extents = []
    with open(path, "wb") as f:
        f.truncate(size)
        for slot in sorted(slots):
            length = rng.choice([4 * KiB, 64 * KiB, MiB, 12345])
            f.seek(slot * MiB)
            f.write(rng.randbytes(length))
            extents.append((slot * MiB, length))
    return extents


def read_all(h, chunk=4 * MiB):
    size = h.get_size()
    out = bytearray()
    for off in range(0, size, chunk):
        out += h.pread(min(chunk, size - off), off)
    return bytes(out)


def sha256_export(h):
    return hashlib.sha256(read_all(h)).hexdigest()


def expect_errno(want, fn, *args, **kwargs):
    """Calls fn and asserts it fails with nbd.Error carrying the errno `want`."""
    try:
        fn(*args, **kwargs)
    except nbd.Error as exc:
        assert exc.errnum == want, (f"{fn.__name__}: want {errno.errorcode[want]}, got "
                                    f"{errno.errorcode.get(exc.errnum, exc.errnum)} ({exc})")
        return exc
    raise AssertionError(f"{fn.__name__}{args!r} succeeded; want {errno.errorcode[want]}")


def extents(h, offset, length, flags=0):
    """base:allocation extents [(offset, length, flags)] covering [offset, offset+length)."""
    out = []
    end = offset + length
    while offset < end:
        got = []

        def cb(context, start, entries, err):
            if context == nbd.CONTEXT_BASE_ALLOCATION:
                got.extend(zip(entries[0::2], entries[1::2]))
            return 0

        h.block_status(end - offset, offset, cb, flags)
        assert got, f"block status at {offset} returned no extent"
        for ext_len, ext_flags in got:
            assert ext_len > 0, f"zero-length extent at {offset}"
            take = min(ext_len, end - offset)
            out.append((offset, take, ext_flags))
            offset += take
            if offset >= end:
                break
    return out


def flags_at(ext, offset):
    for start, length, flags in ext:
        if start <= offset < start + length:
            return flags
    raise AssertionError(f"no extent covers {offset}")


def wait_for(predicate, timeout, what):
    """Polls predicate every 20 ms until it is true; fails after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)
