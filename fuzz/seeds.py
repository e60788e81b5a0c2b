#!/usr/bin/python3
"""Writes the seed corpora of the server_full and client_replies fuzz targets.

    /usr/bin/python3 fuzz/seeds.py

Each seed is a valid session (or a valid session with one deliberate fault), laid
out as the target expects (see the comments at the top of each target). Rerun after
changing a target's input layout; the files are checked in.
"""

import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))

# Option and command numbers (proto.md).
EXPORT_NAME, ABORT, LIST, STARTTLS, INFO, GO = 1, 2, 3, 5, 6, 7
STRUCTURED_REPLY, LIST_META, SET_META, EXTENDED_HEADERS = 8, 9, 10, 11
READ, WRITE, DISC, FLUSH, TRIM, CACHE, ZEROES, BLOCK_STATUS = 0, 1, 2, 3, 4, 5, 6, 7
FUA, NO_HOLE, DF, REQ_ONE, FAST_ZERO, PAYLOAD_LEN = 1, 2, 4, 8, 16, 32


def option(opt, payload=b""):
    return b"IHAVEOPT" + struct.pack(">II", opt, len(payload)) + payload


def name(s):
    return struct.pack(">I", len(s)) + s


def go(export=b"", infos=(3,)):
    return option(GO, name(export) + struct.pack(">H", len(infos)) + b"".join(struct.pack(">H", i) for i in infos))


def set_meta(export=b"", queries=(b"base:allocation",)):
    return option(SET_META, name(export) + struct.pack(">I", len(queries)) + b"".join(name(q) for q in queries))


def req(cmd, cookie, offset=0, length=0, flags=0, payload=b"", extended=False):
    if extended:
        head = struct.pack(">IHHQQQ", 0x21E41C71, flags, cmd, cookie, offset, length)
    else:
        head = struct.pack(">IHHQQI", 0x25609513, flags, cmd, cookie, offset, length)
    return head + payload


FLAGS = b"\0\0\0\x03"  # NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES


def workload(ext, cookie=1):
    """Every command once, the way a well-behaved client sends them."""
    w = lambda c, *a, **k: req(c, *a, extended=ext, **k)  # noqa: E731
    data = bytes(range(256)) * 2
    pl = PAYLOAD_LEN if ext else 0
    return b"".join([
        w(WRITE, 1, 4096, 512, flags=pl, payload=data),
        w(WRITE, 2, 8192, 512, flags=FUA | pl, payload=data),
        w(READ, 3, 4096, 1024),
        w(FLUSH, 4),
        w(TRIM, 5, 8192, 4096),
        w(ZEROES, 6, 0, 4096, flags=NO_HOLE),
        w(CACHE, 7, 0, 65536),
        w(BLOCK_STATUS, 8, 0, 65536),
        w(BLOCK_STATUS, 9, 4096, 100, flags=REQ_ONE),
        w(READ, 10, 4000, 200, flags=DF),
        w(DISC, 11),
    ])


def server_seeds():
    structured = FLAGS + option(STRUCTURED_REPLY) + set_meta() + go()
    extended = FLAGS + option(EXTENDED_HEADERS) + set_meta() + go()
    bad = b"".join([
        req(READ, 1, 2**64 - 10, 512),
        req(42, 2),
        req(READ, 3, 0, 512, flags=1 << 12),
        req(WRITE, 4, 2**20, 16, payload=b"x" * 16),
        req(READ, 5, 0, 2**31),
        req(WRITE, 6, 0, 40 << 20),
    ])
    return {
        "export_name_simple": bytes([0, 12]) + FLAGS + option(EXPORT_NAME) + workload(False),
        "structured_go": bytes([0, 12]) + structured + workload(False),
        "extended_go": bytes([0, 12]) + extended + workload(True),
        "structured_byte_by_byte": bytes([0, 0]) + structured + workload(False),
        "read_only_second_export": bytes([1 | 8, 12]) + FLAGS + option(STRUCTURED_REPLY) + set_meta(b"b")
        + go(b"b") + workload(False),
        "emulated_large_blocks": bytes([2 | 4, 9]) + structured + workload(False),
        "deaf_client": bytes([16, 12]) + structured + req(READ, 1, 0, 65536) * 40,
        "shutdown_midway": bytes([32, 6]) + structured + workload(False),
        "shutdown_at_end_no_disc": bytes([64, 12]) + structured + workload(False)[:-28],
        "handshake_only": bytes([0, 12]) + FLAGS + option(LIST) + option(INFO, name(b"") + b"\0\0")
        + option(LIST_META, name(b"") + b"\0\0\0\0") + option(1000) + option(STARTTLS) + option(ABORT),
        "bad_requests": bytes([0, 12]) + FLAGS + option(EXPORT_NAME) + bad,
        "failed_options_in_a_row": bytes([0, 12]) + FLAGS + option(1000) * 33,
    }


def simple(cookie, error=0, data=b""):
    return struct.pack(">IIQ", 0x67446698, error, cookie) + data


def chunk(ext, cookie, kind, payload, done=True, offset=0):
    flags = 1 if done else 0
    if ext:
        return struct.pack(">IHHQQQ", 0x6E8A278C, flags, kind, cookie, offset, len(payload)) + payload
    return struct.pack(">IHHQI", 0x668E33EF, flags, kind, cookie, len(payload)) + payload


def client_seeds():
    seeds = {}
    # Simple replies: read 512 (1), read 4096 (2), write (3), flush (4), trim (5), zero (6).
    seeds["simple_all_ok"] = bytes([0]) + b"".join([
        simple(2, data=b"\x02" * 4096), simple(1, data=b"\x01" * 512), simple(3), simple(4), simple(5), simple(6),
    ])
    seeds["simple_errors_then_close"] = bytes([0]) + simple(1, 5) + simple(3, 28) + simple(99)
    seeds["simple_then_silent"] = bytes([4]) + simple(1, data=b"\x01" * 512)
    for ext, setup, tag in ((False, 1, "structured"), (True, 2, "extended")):
        c = lambda *a, **k: chunk(ext, *a, **k)  # noqa: E731
        if ext:
            bs = struct.pack(">II", 1, 2) + struct.pack(">QQ", 4096, 3) + struct.pack(">QQ", 61440, 0)
            bs_kind = 6
        else:
            bs = struct.pack(">I", 1) + struct.pack(">II", 4096, 3) + struct.pack(">II", 61440, 0)
            bs_kind = 5
        # Structured/extended: read 512 (1), read 4096 (2), block status (3), write (4),
        # flush (5), trim (6), zero (7).
        seeds[f"{tag}_all_ok"] = bytes([setup]) + b"".join([
            c(2, 1, struct.pack(">Q", 4096) + b"\x02" * 2048, done=False, offset=4096),
            c(2, 2, struct.pack(">QI", 6144, 2048), done=True, offset=4096),
            c(1, 1, struct.pack(">Q", 0) + b"\x01" * 512, offset=0),
            c(3, bs_kind, bs),
            c(4, 0, b"", offset=8192), c(5, 0, b""), c(6, 0, b""), c(7, 0, b"", offset=12288),
        ])
        err = struct.pack(">IH", 5, 4) + b"oops"
        err_off = struct.pack(">IH", 5, 0) + struct.pack(">Q", 5000)
        seeds[f"{tag}_errors"] = bytes([setup]) + b"".join([
            c(1, 32769, err), c(2, 32770, err_off, done=False, offset=4096), c(2, 0, b"", offset=4096),
            c(3, 32769, err), c(4, 32769, err, done=False, offset=8192), c(4, 0, b"", offset=8192),
        ])
        seeds[f"{tag}_lying_lengths"] = bytes([setup | 4]) + c(1, 1, struct.pack(">Q", 0) + b"\x01" * 600)
    return seeds


def write(target, seeds):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    for n, data in seeds.items():
        with open(os.path.join(d, n), "wb") as f:
            f.write(data)
    print(f"{target}: {len(seeds)} seeds in {d}")


if __name__ == "__main__":
    write("server_full", server_seeds())
    write("client_replies", client_seeds())
