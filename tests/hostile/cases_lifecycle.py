"""Lame-duck shutdown under load: SIGTERM while clients are mid-handshake and mid-flood."""

import signal
import time

import nbdraw as n
from hostile import LIMIT_ARGS, hostile
from nbdraw import Closed
from servers import Export, memory
from util import MiB

GRACE = 2.0  # --shutdown-grace in LIMIT_ARGS


@hostile("replies in flight are delivered, new requests get NBD_ESHUTDOWN, options get "
         "NBD_REP_ERR_SHUTDOWN, exit status 0 within the grace period",
         "lame duck (NBD_ESHUTDOWN, NBD_REP_ERR_SHUTDOWN)", own=True, timeout=60)
def sigterm_with_replies_in_flight_and_an_open_handshake(t):
    srv = t.start(Export("", memory(64 * MiB)), extra_args=LIMIT_ARGS)
    reader = t.negotiated("structured", srv)
    haggler = t.raw(srv).start()
    haggler.expect(n.LIST, b"", n.REP_ACK)
    # 32 MiB of replies this client does not read yet: once the first is in,
    # the server has taken more requests whose replies wait for the socket.
    reader.send(b"".join(n.request(n.READ, i, i * MiB, MiB) for i in range(32)))
    first = reader.transmission_reply(timeout=5)
    assert first[1] == 0 and len(first[2]) == MiB, first[:2]
    replies = {first[0]: (first[1], len(first[2]))}
    start = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    srv.signalled = True
    # The open handshake gets the lame-duck answer once the signal is handled
    # (options sent before that are still answered).
    while True:
        haggler.option(n.LIST)
        rep = haggler.final_reply()
        if rep == n.REP_ERR_SHUTDOWN:
            break
        assert rep == n.REP_ACK and time.monotonic() - start < GRACE, f"{n.REP_NAMES.get(rep, rep)}"
    reader.send(n.request(n.READ, 100, 0, 4096) + n.request(n.WRITE, 101, 0, 512) + b"w" * 512)
    try:
        while True:
            cookie, errno, data = reader.transmission_reply(timeout=5)
            replies[cookie] = (errno, len(data))
    except Closed:
        pass
    # Requests taken before the signal are answered with their data; those
    # still unread in the socket when it came are new: NBD_ESHUTDOWN.
    wrong = {i: replies.get(i) for i in range(32) if replies.get(i) not in ((0, MiB), (n.ESHUTDOWN, 0))}
    assert not wrong, f"replies lost or wrong: {wrong}"
    served = sum(1 for i in range(32) if replies[i] == (0, MiB))
    assert served >= 1, "no read answered with data"
    assert replies.get(100, (None,))[0] == n.ESHUTDOWN and replies.get(101, (None,))[0] == n.ESHUTDOWN, replies
    assert srv.proc.wait(timeout=GRACE + 3) == 0, "exit status after SIGTERM"
    took = time.monotonic() - start
    assert took < GRACE + 1.5, f"exit took {took:.1f}s with a {GRACE}s grace period"
    t.note(f"{served} reads answered with data, {34 - served} with NBD_ESHUTDOWN; exit {took:.2f}s after SIGTERM")


@hostile("exit status 0 within the grace period although a client dribbles its handshake",
         "lame duck; --shutdown-grace", own=True, timeout=40)
def sigterm_while_a_slowloris_client_holds_a_handshake(t):
    srv = t.start(Export("", memory(16 * MiB)), extra_args=("--handshake-timeout", "60", "--shutdown-grace", "1"))
    r = t.raw(srv)
    r.greeting()
    r.send(b"\0\0\0")  # three of the four bytes of client flags
    start = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    srv.signalled = True
    assert srv.proc.wait(timeout=10) == 0
    took = time.monotonic() - start
    assert took < 1 + 1.5, f"exit took {took:.1f}s with a 1s grace period"
    assert r.closed_within(2), "the dribbling client still connected after the exit"
