"""Hostile requests in transmission: bad framing closes, bad requests get the errno
proto.md names and the connection lives on ("Error values", per-command text)."""

import struct

import nbdraw as n
from hostile import EXPORT_SIZE, SCRATCH, STALL_TIMEOUT, hostile
from servers import Export, memory
from util import MiB

CLOSE_AT_ONCE = 1.5
SIZE = EXPORT_SIZE


def errno_case(t, want, cmd, offset=0, length=0, flags=0, payload=b"", mode="structured"):
    """One request, its errno, then a good read on the same connection."""
    r = t.negotiated(mode)
    r.expect_errno(want, cmd, offset, length, flags, payload)
    assert len(r.read(SCRATCH, 512)) == 512, "the connection did not live on"
    r.close()


def framing_lost(t, data, mode="simple"):
    r = t.negotiated(mode)
    r.send(data)
    assert r.closed_within(CLOSE_AT_ONCE), "framing is lost: the server must close"


@hostile("connection closed", "transmission: a bad magic means framing is lost")
def a_bad_request_magic(t):
    framing_lost(t, b"\xde\xad\xbe\xef" + b"\0" * 24)


@hostile("connection closed", "extended requests only after NBD_OPT_EXTENDED_HEADERS")
def an_extended_request_without_negotiation(t):
    framing_lost(t, n.request(n.READ, 1, 0, 512, extended=True))


@hostile("connection closed", "compact requests are not allowed after NBD_OPT_EXTENDED_HEADERS")
def a_compact_request_after_extended_headers(t):
    framing_lost(t, n.request(n.READ, 1, 0, 512) + b"\0" * 4, mode="extended")


@hostile("NBD_EINVAL", "Error values: unknown command")
def an_unknown_command(t):
    errno_case(t, n.EINVAL, 42)


@hostile("NBD_EINVAL", "Error values: unknown command flag")
def an_unknown_command_flag(t):
    errno_case(t, n.EINVAL, n.READ, SCRATCH, 512, flags=1 << 12)


@hostile("NBD_EINVAL (payload drained)", "NBD_CMD_FLAG_DF is valid only on reads")
def df_on_a_write(t):
    errno_case(t, n.EINVAL, n.WRITE, SCRATCH, 512, flags=n.DF, payload=b"w" * 512)


@hostile("NBD_EINVAL", "NBD_CMD_FLAG_REQ_ONE is valid only on block status")
def req_one_on_a_read(t):
    errno_case(t, n.EINVAL, n.READ, SCRATCH, 512, flags=n.REQ_ONE)


@hostile("NBD_EINVAL", "NBD_CMD_FLAG_NO_HOLE is valid only on write zeroes")
def no_hole_on_a_trim(t):
    errno_case(t, n.EINVAL, n.TRIM, SCRATCH, 4096, flags=n.NO_HOLE)


@hostile("NBD_EINVAL", "NBD_CMD_FLAG_FAST_ZERO is valid only on write zeroes")
def fast_zero_on_a_trim(t):
    errno_case(t, n.EINVAL, n.TRIM, SCRATCH, 4096, flags=n.FAST_ZERO)


@hostile("NBD_EINVAL", "offset + length overflows 64 bits")
def a_read_whose_end_overflows(t):
    errno_case(t, n.EINVAL, n.READ, (1 << 64) - 256, 512)


@hostile("NBD_EINVAL (payload drained)", "offset + length overflows 64 bits")
def a_write_whose_end_overflows(t):
    errno_case(t, n.EINVAL, n.WRITE, (1 << 64) - 256, 512, payload=b"o" * 512)


@hostile("NBD_EINVAL", "a read above the maximum payload (2^25)")
def a_read_of_2_gib(t):
    errno_case(t, n.EINVAL, n.READ, 0, 1 << 31)


@hostile("NBD_EINVAL", "Error values: reads beyond the end")
def a_read_past_the_end(t):
    errno_case(t, n.EINVAL, n.READ, SIZE - 256, 512)


@hostile("NBD_ENOSPC (payload drained)", "Error values: writes beyond the end")
def a_write_past_the_end(t):
    errno_case(t, n.ENOSPC, n.WRITE, SIZE - 256, 512, payload=b"e" * 512)


@hostile("NBD_EINVAL", "Error values: trims beyond the end")
def a_trim_past_the_end(t):
    errno_case(t, n.EINVAL, n.TRIM, SIZE, 4096)


@hostile("NBD_ENOSPC", "NBD_CMD_WRITE_ZEROES beyond the end, like a write")
def write_zeroes_past_the_end(t):
    errno_case(t, n.ENOSPC, n.WRITE_ZEROES, SIZE, 4096)


@hostile("NBD_EINVAL", "NBD_CMD_CACHE beyond the end")
def a_cache_past_the_end(t):
    errno_case(t, n.EINVAL, n.CACHE, SIZE, 4096)


@hostile("NBD_EINVAL", "NBD_CMD_FLUSH: offset and length MUST be zero")
def a_flush_with_an_offset(t):
    errno_case(t, n.EINVAL, n.FLUSH, 4096, 0)


@hostile("NBD_EINVAL", "NBD_CMD_BLOCK_STATUS needs NBD_OPT_SET_META_CONTEXT")
def block_status_without_negotiation(t):
    errno_case(t, n.EINVAL, n.BLOCK_STATUS, 0, 4096, mode="simple")


@hostile("NBD_EPERM for write, trim and write zeroes; reads work", "Error values: read-only export",
         own=True)
def writes_to_a_read_only_export(t):
    srv = t.start(Export("", memory(16 * MiB)), read_only=True)
    r = t.negotiated("structured", srv)
    r.expect_errno(n.EPERM, n.WRITE, 0, 512, payload=b"w" * 512)
    r.expect_errno(n.EPERM, n.TRIM, 0, 4096)
    r.expect_errno(n.EPERM, n.WRITE_ZEROES, 0, 4096)
    assert r.read(0, 512) == b"\0" * 512
    r.close()


@hostile("dropped at the stall time limit", "--stall-timeout: a payload that never arrives")
def a_write_claiming_32_mib_that_sends_100_bytes(t):
    r = t.negotiated("structured")
    r.request(n.WRITE, 1, SCRATCH, 32 * MiB)
    r.send(b"x" * 100)
    assert not r.closed_within(0.5), "closed before the stall limit"
    assert r.closed_within(STALL_TIMEOUT + 3)


@hostile("connection closed at once (above the 64 MiB the server drains)", "Size constraints: MAY disconnect")
def a_write_claiming_4_gib(t):
    r = t.negotiated("simple")
    try:
        r.send(n.request(n.WRITE, 1, SCRATCH, 0xFFFFFFFF) + b"x" * 100)
    except n.Closed:
        return  # closed before the data even arrived
    assert r.closed_within(CLOSE_AT_ONCE)


@hostile("NBD_EINVAL after the payload is drained; the connection lives", "Size constraints", timeout=60)
def a_write_of_40_mib_above_the_maximum_payload(t):
    errno_case(t, n.EINVAL, n.WRITE, SCRATCH, 40 * MiB, payload=b"b" * (40 * MiB))


@hostile("NBD_EINVAL (payload drained)", "NBD_CMD_FLAG_PAYLOAD_LEN MUST NOT be used with compact requests")
def payload_len_in_compact_mode(t):
    r = t.negotiated("structured")
    r.send(n.request(n.WRITE, 7, SCRATCH, 512, flags=n.PAYLOAD_LEN) + b"p" * 512)
    cookie, errno, _ = r.transmission_reply()
    assert (cookie, errno) == (7, n.EINVAL), (cookie, errno)
    assert len(r.read(SCRATCH, 512)) == 512


@hostile("NBD_EINVAL (payload drained)", "extended headers: a payload on a command without one")
def an_extended_read_with_a_payload(t):
    errno_case(t, n.EINVAL, n.READ, SCRATCH, 16, flags=n.PAYLOAD_LEN, payload=b"q" * 16, mode="extended")


@hostile("NBD_EINVAL", "extended headers: writes MUST set NBD_CMD_FLAG_PAYLOAD_LEN")
def an_extended_write_without_payload_len(t):
    r = t.negotiated("extended")
    r.send(n.request(n.WRITE, 7, SCRATCH, 512, extended=True))
    cookie, errno, _ = r.transmission_reply()
    assert (cookie, errno) == (7, n.EINVAL), (cookie, errno)
    assert len(r.read(SCRATCH, 512)) == 512


@hostile("connection closed", "extended headers: SHOULD hard-disconnect on a payload above the maximum")
def an_extended_payload_of_1_tib(t):
    framing_lost(t, n.request(n.WRITE, 1, 0, 1 << 40, flags=n.PAYLOAD_LEN, extended=True), mode="extended")


@hostile("replies to everything before NBD_CMD_DISC, then closed; the rest ignored", "NBD_CMD_DISC")
def requests_disc_then_garbage(t):
    r = t.negotiated("structured")
    out = b""
    for i in range(50):
        out += n.request(n.WRITE, i, SCRATCH + i * 4096, 4096) + bytes([i]) * 4096
        out += n.request(n.READ, 100 + i, SCRATCH + i * 4096, 4096)
    r.send(out + n.request(n.DISC, 999) + b"garbage after DISC" * 10)
    cookies = set()
    for _ in range(100):
        cookie, errno, _ = r.transmission_reply(timeout=10)
        assert errno == 0, f"request {cookie} failed"
        cookies.add(cookie)
    assert cookies == set(range(50)) | set(range(100, 150)), "a reply is missing"
    assert r.closed_within(5), "not closed after NBD_CMD_DISC"


@hostile("connection closed when framing is lost, else errors; never a crash", "transmission: framing",
         timeout=60)
def seeded_random_garbage_after_go(t):
    for i in range(4):
        rng = t.rng(f"garbage-after-go-{i}")
        r = t.negotiated(rng.choice(["simple", "structured", "extended"]))
        r.send(rng.randbytes(rng.randrange(1, 8192)))
        assert r.closed_within(STALL_TIMEOUT + 3), f"round {i}: not closed"


@hostile("a reply to every request (success or errno); the connection lives", "Error values", timeout=60)
def seeded_random_requests_with_valid_framing(t):
    lengths = [0, 1, 511, 512, 4096, 65536, 1 << 25, (1 << 25) + 1, 1 << 31, (1 << 32) - 1]
    # Never below SCRATCH: trims and zeroes must not touch the known pattern.
    offsets = [SCRATCH, SCRATCH + 1, SIZE - 512, SIZE, (1 << 63), (1 << 64) - 1]
    for i in range(3):
        rng = t.rng(f"random-requests-{i}")
        mode = rng.choice(["structured", "extended"])
        r = t.negotiated(mode)
        for cookie in range(200):
            cmd = rng.choice([n.READ, n.WRITE, n.FLUSH, n.TRIM, n.CACHE, n.WRITE_ZEROES, n.BLOCK_STATUS, 9, 77])
            flags = rng.choice([0, 0, n.FUA, n.NO_HOLE, n.DF, n.REQ_ONE, n.FAST_ZERO, rng.randrange(1 << 16)])
            flags &= ~n.PAYLOAD_LEN
            offset, length = rng.choice(offsets), rng.choice(lengths)
            if cmd == n.READ and length > 65536:
                length = 65536 + rng.randrange(2) * (1 << 31)
            payload = b""
            if cmd == n.WRITE:
                length = rng.choice([0, 1, 512, 4096, 65536]) if mode == "structured" else rng.choice([1, 4096])
                payload = rng.randbytes(length)
                offset = rng.choice([SCRATCH, SIZE - 512, SIZE, (1 << 64) - 1])
            r.request(cmd, cookie, offset, length, flags, payload)
            got, errno, _ = r.transmission_reply(timeout=10)
            assert got == cookie, f"reply for {got}, want {cookie}"
        assert len(r.read(SCRATCH, 512)) == 512
        r.close()


@hostile("zero-length requests are answered (success or NBD_EINVAL), never a crash",
         "length 0: behaviour unspecified, the server SHOULD NOT disconnect")
def zero_length_requests(t):
    r = t.negotiated("structured")
    for cookie, cmd in enumerate([n.READ, n.WRITE, n.TRIM, n.WRITE_ZEROES, n.CACHE, n.BLOCK_STATUS]):
        r.request(cmd, cookie, SCRATCH, 0)
        got, errno, _ = r.transmission_reply()
        assert got == cookie and errno in (0, n.EINVAL), (cmd, got, errno)
    r.send(struct.pack(">IHHQQI", n.REQUEST_MAGIC, 0, n.READ, 99, SCRATCH, 8))
    assert r.transmission_reply()[:2] == (99, 0)
