"""Hostile input during the handshake: flags, option framing, option payloads, limits."""

import struct
import time

import nbdraw as n
from hostile import HANDSHAKE_TIMEOUT, hostile
from nbdraw import Closed

CLOSE_AT_ONCE = 1.5  # well under the handshake time limit: the server did not wait
CLOSE_AT_LIMIT = HANDSHAKE_TIMEOUT + 3


def refused(t, opt, payload, want, then_abort=True):
    """Sends one option after the client flags, expects `want`, then NBD_OPT_ABORT works."""
    r = t.raw().start()
    r.expect(opt, payload, want)
    if then_abort:
        r.expect(n.ABORT, b"", n.REP_ACK)
        assert r.closed_within(5), "not closed after NBD_OPT_ABORT"
    r.close()


@hostile("connection closed", "client flags: the server MUST drop the connection on an unknown flag")
def unknown_client_flags(t):
    r = t.raw()
    r.greeting()
    r.send(b"\xff\xff\xff\xff")
    assert r.closed_within(CLOSE_AT_ONCE)


@hostile("connection closed", "client flags: unknown flags")
def an_http_request_instead_of_client_flags(t):
    r = t.raw()
    r.greeting()
    r.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert r.closed_within(CLOSE_AT_ONCE)


@hostile("connection closed", "option haggling: framing is lost")
def a_bad_option_magic(t):
    r = t.raw().start()
    r.send(b"IHAVEOPX" + struct.pack(">II", n.LIST, 0))
    assert r.closed_within(CLOSE_AT_ONCE)


@hostile("connection closed at once, nothing read", "option haggling: the server MAY disconnect on a DoS")
def an_option_claiming_4_gib_with_16_bytes_of_data(t):
    r = t.raw().start()
    r.send(n.option(n.LIST, b"x" * 16, length=0xFFFFFFFF))
    assert r.closed_within(CLOSE_AT_ONCE)


@hostile("NBD_REP_ERR_TOO_BIG, negotiation goes on", "NBD_REP_ERR_TOO_BIG")
def an_option_of_100_kib(t):
    r = t.raw().start()
    r.expect(n.LIST, b"\0" * (100 << 10), n.REP_ERR_TOO_BIG)
    r.go("structured")
    assert r.read(0, 4096) != b"", "the session went on"


@hostile("dropped at the handshake time limit", "option haggling; --handshake-timeout")
def an_option_claiming_100_kib_with_10_bytes_of_data(t):
    r = t.raw().start()
    r.send(n.option(n.LIST, b"0123456789", length=100 << 10))
    assert not r.closed_within(0.5), "closed before the time limit"
    assert r.closed_within(CLOSE_AT_LIMIT)


@hostile("connection closed (NBD_OPT_EXPORT_NAME cannot be answered with an error)", "NBD_OPT_EXPORT_NAME")
def an_export_name_longer_than_the_option_limit(t):
    r = t.raw().start()
    r.send(n.option(n.EXPORT_NAME, b"a" * 70000))
    assert r.closed_within(CLOSE_AT_ONCE)


@hostile("1024 options answered, then connection closed", "option haggling: DoS; limit 1024 per handshake")
def two_thousand_options(t):
    r = t.raw().start()
    r.send(n.option(n.LIST) * 2000)
    acks = 0
    try:
        while True:
            if r.final_reply(timeout=5) == n.REP_ACK:
                acks += 1
    except Closed:
        pass
    assert acks == 1024, f"{acks} options answered"


@hostile("32 NBD_REP_ERR_UNSUP, the 33rd answered and the connection closed",
         "option haggling: a client that does not get the hint; limit 32 in a row")
def thirty_three_failing_options_in_a_row(t):
    r = t.raw().start()
    r.send(n.option(1000) * 33 + n.option(n.LIST))
    errors = 0
    try:
        while True:
            assert r.final_reply(timeout=5) == n.REP_ERR_UNSUP, "the LIST after 33 failures was answered"
            errors += 1
    except Closed:
        pass
    assert errors == 33, f"{errors} errors before the close"


@hostile("every option answered; a success resets the count", "limit 32 failures in a row")
def thirty_two_failing_options_then_a_good_one_twice(t):
    r = t.raw().start()
    r.send(n.option(1000) * 32 + n.option(n.LIST) + n.option(1000) * 32)
    for i in range(65):
        want = n.REP_ACK if i == 32 else n.REP_ERR_UNSUP
        assert r.final_reply(timeout=5) == want, f"option {i}"
    r.expect(n.ABORT, b"", n.REP_ACK)


@hostile("NBD_REP_ERR_UNSUP", "unknown options")
def an_unknown_option(t):
    refused(t, 0x7FFF_FFFF, b"some data", n.REP_ERR_UNSUP)


@hostile("connection closed", "NBD_OPT_EXPORT_NAME: the server MUST close on an unknown export")
def export_name_for_an_unknown_export(t):
    r = t.raw().start()
    r.option(n.EXPORT_NAME, b"no-such-export")
    assert r.closed_within(CLOSE_AT_ONCE)


@hostile("NBD_REP_ERR_UNKNOWN, negotiation goes on", "NBD_OPT_GO")
def go_for_an_unknown_export(t):
    r = t.raw().start()
    r.expect(n.GO, n.go_payload(b"no-such-export"), n.REP_ERR_UNKNOWN)
    r.go("simple")
    assert len(r.read(0, 512)) == 512


@hostile("NBD_REP_ERR_INVALID", "strings: at most 4096 bytes")
def a_name_of_5000_bytes(t):
    refused(t, n.INFO, n.go_payload(b"x" * 5000), n.REP_ERR_INVALID)


@hostile("NBD_REP_ERR_INVALID", "strings: UTF-8")
def an_export_name_that_is_not_utf8(t):
    refused(t, n.GO, n.go_payload(b"\xff\xfe\xc0\x80"), n.REP_ERR_INVALID)


@hostile("NBD_REP_ERR_INVALID", "strings: no NUL")
def an_export_name_with_a_nul(t):
    refused(t, n.GO, n.go_payload(b"a\0b"), n.REP_ERR_INVALID)


@hostile("NBD_REP_ERR_INVALID", "NBD_OPT_GO: the name length must fit the option")
def a_name_length_beyond_the_option(t):
    refused(t, n.GO, struct.pack(">I", 0x10000) + b"abc\0\0", n.REP_ERR_INVALID)


@hostile("NBD_REP_ERR_INVALID", "NBD_OPT_INFO: payload layout")
def info_without_a_payload(t):
    refused(t, n.INFO, b"", n.REP_ERR_INVALID)


@hostile("NBD_REP_ERR_INVALID", "NBD_OPT_LIST: no data")
def list_with_data(t):
    refused(t, n.LIST, b"junk", n.REP_ERR_INVALID)


@hostile("NBD_REP_ERR_POLICY, then connection closed (the junk is not an option)", "NBD_OPT_STARTTLS; no TLS")
def starttls_with_junk_behind_it(t):
    r = t.raw().start()
    r.send(n.option(n.STARTTLS) + b"\x16\x03\x01junk-that-is-not-an-option")
    assert r.final_reply() == n.REP_ERR_POLICY
    assert r.closed_within(CLOSE_AT_ONCE)


@hostile("NBD_REP_ERR_INVALID", "NBD_OPT_STARTTLS: no data")
def starttls_with_a_payload(t):
    refused(t, n.STARTTLS, b"payload", n.REP_ERR_INVALID)


@hostile("NBD_REP_ERR_INVALID", "NBD_OPT_SET_META_CONTEXT needs structured replies")
def set_meta_context_before_structured_replies(t):
    refused(t, n.SET_META_CONTEXT, n.meta_payload(), n.REP_ERR_INVALID)


@hostile("NBD_REP_ERR_INVALID", "NBD_OPT_SET_META_CONTEXT: query count must fit the option")
def set_meta_context_claiming_a_million_queries(t):
    r = t.raw().start()
    r.expect(n.STRUCTURED_REPLY, b"", n.REP_ACK)
    r.expect(n.SET_META_CONTEXT, n.name(b"") + struct.pack(">I", 1_000_000) + n.name(b"base:allocation"),
             n.REP_ERR_INVALID)


@hostile("NBD_REP_ERR_EXT_HEADER_REQD", "NBD_OPT_STRUCTURED_REPLY after extended headers")
def structured_replies_after_extended_headers(t):
    r = t.raw().start()
    r.expect(n.EXTENDED_HEADERS, b"", n.REP_ACK)
    r.expect(n.STRUCTURED_REPLY, b"", n.REP_ERR_EXT_HEADER_REQD)


@hostile("connection closed", "NBD_OPT_EXPORT_NAME is not allowed after extended headers")
def export_name_after_extended_headers(t):
    r = t.raw().start()
    r.expect(n.EXTENDED_HEADERS, b"", n.REP_ACK)
    r.option(n.EXPORT_NAME, b"")
    assert r.closed_within(CLOSE_AT_ONCE)


@hostile("dropped at the handshake time limit", "--handshake-timeout")
def a_silent_client_after_the_greeting(t):
    r = t.raw()
    r.greeting()
    start = time.monotonic()
    assert r.closed_within(CLOSE_AT_LIMIT)
    assert time.monotonic() - start >= HANDSHAKE_TIMEOUT - 0.5, "closed before the time limit"


@hostile("dropped at the handshake time limit", "--handshake-timeout (slowloris)", timeout=40)
def slowloris_handshake_one_byte_per_second(t):
    r = t.raw()
    r.greeting()
    data = struct.pack(">I", n.FLAGS) + n.option(n.LIST) * 4
    start = time.monotonic()
    for b in data:
        try:
            r.send(bytes([b]))
        except Closed:
            break
        if r.closed_within(1.0):  # deliberate timing: one byte per second
            break
    took = time.monotonic() - start
    assert took < CLOSE_AT_LIMIT, f"still open after {took:.1f}s"


@hostile("nothing to answer; the server carries on", "robustness: a client may go away at any time")
def a_client_that_closes_right_after_connecting(t):
    for _ in range(20):
        t.socket().close()


@hostile("errors for what parses, connection closed when framing is lost (or at the time limit)",
         "option haggling: framing", timeout=60)
def seeded_random_garbage_after_client_flags(t):
    for i in range(4):
        rng = t.rng(f"garbage-after-flags-{i}")
        r = t.raw().start()
        r.send(rng.randbytes(rng.randrange(1, 4096)))
        assert r.closed_within(CLOSE_AT_LIMIT), f"round {i}: not closed"


@hostile("every option answered (error or ack) or the connection closed", "option haggling", timeout=60)
def seeded_random_options_with_valid_framing(t):
    for i in range(4):
        rng = t.rng(f"random-options-{i}")
        r = t.raw().start()
        try:
            for _ in range(20):
                opt = rng.choice([n.INFO, n.GO, n.LIST_META_CONTEXT, n.SET_META_CONTEXT, n.STRUCTURED_REPLY,
                                  n.EXTENDED_HEADERS, rng.randrange(12, 1 << 32)])
                r.option(opt, rng.randbytes(rng.randrange(0, 64)))
                rep = r.final_reply(timeout=5)
                assert rep == n.REP_ACK or rep & n.ERR, f"reply {rep:#x}"
                if opt == n.GO and rep == n.REP_ACK:
                    break
        except Closed:
            pass
        r.close()
