"""Abusive clients: floods, clients that stop reading, slowloris, disconnects at the
worst moment, and more connections than the server takes."""

import os
import socket
import struct
import threading
import time

import nbdraw as n
from hostile import HANDSHAKE_TIMEOUT, MAX_CONNECTIONS, RSS_LIMIT, SCRATCH, STALL_TIMEOUT, hostile
from nbdraw import Closed
from util import MiB


def vm_rss(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def sender(sock, data):
    """Sends `data` from a thread (the server may stop reading); returns the thread."""

    def run():
        try:
            sock.sendall(data)
        except OSError:
            pass  # the server closed: what some cases expect

    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th


def watch_rss(t, seconds):
    """Peak RSS of the server over `seconds` (deliberate: the window a flood is held in)."""
    peak, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        peak = max(peak, vm_rss(t.srv.pid))
        time.sleep(0.05)
    return peak


@hostile("every one of 10,000 reads answered; the server stops reading while replies wait (RSS bounded)",
         "--max-in-flight, memory budget", timeout=90)
def a_pipelined_flood_of_10000_reads_without_reading_replies(t):
    r = t.negotiated("structured")
    flood = b"".join(n.request(n.READ, i, SCRATCH + (i % 1024) * 4096, 4096) for i in range(10000))
    th = sender(r.sock, flood)
    peak = watch_rss(t, min(1.0, STALL_TIMEOUT / 2))
    assert peak < RSS_LIMIT, f"RSS {peak >> 20} MiB while flooded"
    t.note(f"peak RSS while flooded: {peak >> 20} MiB")
    seen = set()
    for _ in range(10000):
        cookie, errno, data = r.transmission_reply(timeout=10)
        assert errno == 0 and len(data) == 4096, (cookie, errno, len(data))
        seen.add(cookie)
    assert len(seen) == 10000
    th.join(10)
    r.close()


@hostile("every one of 10,000 writes acknowledged", "--max-in-flight, memory budget", timeout=90)
def a_pipelined_flood_of_10000_writes_without_reading_replies(t):
    r = t.negotiated("simple")
    flood = b"".join(n.request(n.WRITE, i, SCRATCH + (i % 2048) * 4096, 4096) + bytes([i % 251]) * 4096
                     for i in range(10000))
    th = sender(r.sock, flood)
    watch_rss(t, 0.5)
    for _ in range(10000):
        cookie, errno, _ = r.transmission_reply(timeout=10)
        assert errno == 0, (cookie, errno)
    th.join(10)
    r.close()


@hostile("dropped at the stall time limit; replies not read are not kept", "--stall-timeout", timeout=40)
def a_client_that_never_reads_its_replies(t):
    r = t.negotiated("structured")
    th = sender(r.sock, b"".join(n.request(n.READ, i, SCRATCH, 65536) for i in range(2000)))
    time.sleep(STALL_TIMEOUT + 2)  # deliberate: the stall limit is what is tested
    got = 0
    r.sock.settimeout(5)
    try:
        while chunk := r.sock.recv(1 << 20):
            got += len(chunk)
    except (ConnectionResetError, socket.timeout):
        pass
    assert got < 32 * MiB, f"{got >> 20} MiB of the 125 MiB of replies were still sent: not dropped"
    th.join(10)


@hostile("nothing to answer; the write is dropped and the server carries on",
         "robustness: a client may go away at any time")
def disconnects_in_the_middle_of_a_write_payload(t):
    for i in range(10):
        r = t.negotiated("simple")
        r.request(n.WRITE, 1, SCRATCH, MiB)
        r.send(b"m" * (1000 + i * 4096))
        if t.transport == "tcp" and i % 2:
            # An abortive close (RST) instead of FIN.
            r.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        r.close()


@hostile("nothing to answer; in-flight requests finish and are dropped",
         "robustness: a client may go away at any time")
def a_disconnect_with_100_reads_of_1_mib_in_flight(t):
    for _ in range(3):
        r = t.negotiated("structured")
        r.send(b"".join(n.request(n.READ, i, SCRATCH, MiB) for i in range(100)))
        r.close()


@hostile("clients beyond --max-connections closed at once (no greeting), one warning logged; the others served",
         "--max-connections", timeout=60)
def three_hundred_simultaneous_connections(t):
    warnings = t.srv.log_text().count("connection limit reached")
    socks, greeted, refused = [], 0, 0
    try:
        for _ in range(300):
            socks.append(t.socket(timeout=5))
        for s in socks:
            data = b""
            try:
                while len(data) < 18:
                    chunk = s.recv(18 - len(data))
                    if not chunk:
                        break
                    data += chunk
            except ConnectionResetError:
                pass
            if len(data) == 18:
                greeted += 1
            else:
                assert data == b"", f"half a greeting: {data!r}"
                refused += 1
    finally:
        for s in socks:
            s.close()
    assert greeted <= MAX_CONNECTIONS and refused >= 300 - MAX_CONNECTIONS, (greeted, refused)
    # A flood of connections must not become a flood of log lines.
    logged = t.srv.log_text().count("connection limit reached") - warnings
    assert logged <= 2, f"{logged} warnings logged for {refused} refused connections"
    t.note(f"{greeted} greeted, {refused} refused, {logged} warning(s) logged")


@hostile("all served", "--max-connections (within the limit)", timeout=60)
def sixty_clients_at_once_each_writing_and_reading(t):
    errors = []

    def client(i):
        try:
            r = t.negotiated("structured")
            data = bytes([i]) * 65536
            r.request(n.WRITE, 1, SCRATCH + i * 65536, 65536, payload=data)
            assert r.transmission_reply()[:2] == (1, 0)
            assert r.read(SCRATCH + i * 65536, 65536) == data
            r.close()
        except Exception as exc:  # noqa: B902 - reported below
            errors.append(f"client {i}: {exc!r}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(60)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    assert not any(th.is_alive() for th in threads), "a client hangs"
    assert not errors, errors[:3]


@hostile("idle handshakes hold their slots until the handshake time limit, then new clients are served",
         "--max-connections, --handshake-timeout", timeout=40)
def idle_handshakes_filling_every_slot(t):
    socks = []
    try:
        refused = False
        for _ in range(MAX_CONNECTIONS + 8):
            r = t.raw(timeout=5)
            socks.append(r)
            try:
                r.greeting()
            except Closed:
                refused = True
                break
        assert refused, f"{len(socks)} idle clients and none refused"
        for r in socks[:-1]:
            assert r.closed_within(HANDSHAKE_TIMEOUT + 3), "an idle handshake was not dropped"
    finally:
        for r in socks:
            r.close()
    fresh = t.raw().start().go("simple")
    assert len(fresh.read(0, 512)) == 512


@hostile("dropped at the stall time limit", "--stall-timeout (slowloris)", timeout=40)
def slowloris_request_header_one_byte_per_half_second(t):
    r = t.negotiated("simple")
    header = n.request(n.READ, 1, SCRATCH, 512)
    start = time.monotonic()
    for b in header:
        r.send(bytes([b]))
        if r.closed_within(0.5):  # deliberate timing
            break
    took = time.monotonic() - start
    assert took < STALL_TIMEOUT + 2, f"still open after {took:.1f}s"


@hostile("dropped: a started payload must arrive at 64 KiB/s on average", "--stall-timeout (slowloris)",
         timeout=40)
def slowloris_write_payload_200_bytes_per_half_second(t):
    r = t.negotiated("simple")
    r.request(n.WRITE, 1, SCRATCH, 65536)
    start = time.monotonic()
    try:
        while time.monotonic() - start < 20:
            r.send(b"s" * 200)
            if r.closed_within(0.5):  # deliberate timing
                break
    except Closed:
        pass
    took = time.monotonic() - start
    assert took < STALL_TIMEOUT + 1 + 3, f"still open after {took:.1f}s"


@hostile("replies to every request, then closed", "replies go out after the client closed its sending side")
def requests_then_half_close(t):
    r = t.negotiated("structured")
    r.send(b"".join(n.request(n.READ, i, SCRATCH, 4096) for i in range(20)))
    r.sock.shutdown(socket.SHUT_WR)
    assert sorted(r.transmission_reply()[0] for _ in range(20)) == list(range(20))
    assert r.closed_within(5)


@hostile("no descriptor kept once 300 short sessions are gone", "robustness: nothing is kept after a session")
def three_hundred_short_sessions_leak_no_descriptors(t):
    fds = lambda: len(os.listdir(f"/proc/{t.srv.pid}/fd"))  # noqa: E731
    before = fds()
    for i in range(300):
        r = t.raw().start()
        if i % 3 == 0:
            r.expect(n.ABORT, b"", n.REP_ACK)
        r.close()
    deadline = time.monotonic() + 10
    while fds() > before + 2:
        assert time.monotonic() < deadline, f"{fds()} descriptors open, {before} before"
        time.sleep(0.05)  # bounded poll
