"""Real clients: qemu-img, qemu-io and nbdcopy, with checksums and pattern checks.

qemu >= 8.2 negotiates NBD extended headers when the server offers them; with such a
qemu the qemu cases exercise extended headers, and one case checks in qemu's trace
that they were negotiated.
"""

import json
import os

from runner import case
from servers import Export, memory
from util import MiB, make_image, qemu_version, run, sha256_export, sha256_file

SIZE = 64 * MiB
EXT_HEADERS_ACK = "option reply 11 (extended headers), type 1 (ack)"


def qemu_io(uri, *commands, trace=False):
    argv = ["qemu-io", "-f", "raw"]
    if trace:
        argv += ["--trace", "nbd_*"]
    argv.append(uri)
    for command in commands:
        argv += ["-c", command]
    res = run(argv, timeout=120)
    out = (res.stdout + res.stderr).decode(errors="replace")
    for bad in ("Pattern verification failed", " failed: "):
        assert bad not in out, f"qemu-io reported {bad!r}:\n{out[-3000:]}"
    return out


def qemu_map(uri):
    res = run(["qemu-img", "map", "--output=json", "-f", "raw", uri], timeout=120)
    return json.loads(res.stdout)


def assert_holes_read_as_zero(uri, image, data_extents):
    """The MiB-sized gaps between data pieces must be mapped as zero by qemu-img map."""
    data_slots = {off // MiB for off, _ in data_extents}
    for entry in qemu_map(uri):
        if entry["zero"]:
            continue
        for slot in range(entry["start"] // MiB, (entry["start"] + entry["length"] - 1) // MiB + 1):
            assert slot in data_slots, f"hole at {slot} MiB of {image} is mapped as data: {entry}"


@case
def qemu_img_convert_to_and_from_the_server_keeps_data_and_holes(ctx):
    src = ctx.path("src.img")
    data = make_image(src, SIZE, seed=11)
    srv = ctx.server(Export("", memory(SIZE)), transport="tcp")
    uri = srv.uri()
    run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src, uri])
    run(["qemu-img", "compare", "-f", "raw", "-F", "raw", src, uri])
    h = srv.connect()
    assert sha256_export(h) == sha256_file(src), "export checksum differs after qemu-img convert"
    h.shutdown()
    assert_holes_read_as_zero(uri, src, data)
    out = ctx.path("out.img")
    run(["qemu-img", "convert", "-f", "raw", "-O", "raw", uri, out])
    assert os.path.getsize(out) == SIZE
    assert sha256_file(out) == sha256_file(src), "image converted back from the server differs"
    ctx.note(f"qemu {'.'.join(map(str, qemu_version()))}")


@case
def qemu_io_writes_zeroes_and_discards_with_pattern_checks(ctx):
    srv = ctx.server(Export("", memory(SIZE)))
    uri = srv.uri()
    qemu_io(uri,
            "write -P 0xab 0 1M", "read -P 0xab 0 1M",
            "write -P 0xcd 1M 64k", "write -f -P 0xef 2M 4k",       # -f: FUA
            "aio_write -P 0x11 4M 256k", "aio_write -P 0x22 5M 256k", "aio_flush",
            "write -P 0x33 8M 2M", "write -z 8M 1M", "write -z -u 9M 1M",  # -u: may unmap
            "write -P 0x44 12M 1M", "discard 12M 1M",
            "write -P 0x55 30M 32M",                                  # the maximum payload
            "flush")
    qemu_io(uri,
            "read -P 0xab 0 1M", "read -P 0xcd 1M 64k", "read -P 0xef 2M 4k",
            "read -P 0x11 4M 256k", "read -P 0x22 5M 256k", "read -P 0 8M 2M",
            "read -P 0 12M 1M", "read -P 0x55 30M 32M", "read -P 0 62M 2M",
            "readv -P 0xab 0 4k 4k 4k")
    h = srv.connect()
    assert h.pread(64 * 1024, MiB) == b"\xcd" * 64 * 1024
    h.shutdown()


@case
def nbdcopy_to_and_from_the_server_keeps_the_checksum(ctx):
    src = ctx.path("src.img")
    make_image(src, SIZE, seed=12)
    srv = ctx.server(Export("", memory(SIZE)))
    uri = srv.uri()
    run(["nbdcopy", "--flush", src, uri])
    h = srv.connect()
    assert sha256_export(h) == sha256_file(src), "export checksum differs after nbdcopy to it"
    h.shutdown()
    out = ctx.path("out.img")
    open(out, "wb").close()
    run(["nbdcopy", uri, out])
    assert sha256_file(out) == sha256_file(src), "nbdcopy from the server: checksum differs"
    piped = run(["nbdcopy", uri, "-"]).stdout
    assert len(piped) == SIZE and piped == open(src, "rb").read(), "nbdcopy to stdout differs"
    # Single connection, synchronous requests, no extents: a different request pattern.
    run(["nbdcopy", "--connections=1", "--requests=1", "--no-extents", src, uri])
    run(["nbdcopy", "--connections=1", uri, out])
    assert sha256_file(out) == sha256_file(src)


@case
def a_qemu_client_negotiates_extended_headers_with_the_server(ctx):
    version = qemu_version()
    if version < (8, 2):
        ctx.skip(f"qemu {'.'.join(map(str, version))} has no extended headers (needs >= 8.2); "
                 "scripts/test.sh runs this suite before the VM suite downgrades qemu-utils")
    srv = ctx.server(Export("", memory(SIZE)))
    out = qemu_io(srv.uri(), "write -P 0x5a 0 2M", "write -z 2M 2M", "discard 6M 1M",
                  "read -P 0x5a 0 2M", "read -P 0 2M 2M", "map", trace=True)
    negotiated = EXT_HEADERS_ACK in out
    if reason := ctx.profile.missing("extended-headers"):
        assert not negotiated, "the profile says no extended headers, but they were negotiated"
        ctx.skip(f"{reason}; qemu {'.'.join(map(str, version))} fell back to structured replies "
                 "and its I/O passed")
    assert negotiated, f"qemu did not negotiate extended headers:\n{out[-3000:]}"
    assert "block status (64-bit)" in out, f"no 64-bit block status reply seen:\n{out[-3000:]}"
    # A second client over TCP, copying a whole image through extended headers.
    src = ctx.path("src.img")
    make_image(src, SIZE, seed=13)
    tcp = ctx.server(Export("", memory(SIZE)), transport="tcp")
    run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src, tcp.uri()])
    run(["qemu-img", "compare", "-f", "raw", "-F", "raw", src, tcp.uri()])
