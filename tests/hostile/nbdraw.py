"""A raw NBD client over a socket, for sending exactly what a case needs, wrong or right.

Every receive has a deadline (`Raw.timeout`, settable per call); nothing waits without
limit. Numbers are from proto.md (and the extended-headers branch for 32-byte requests).
"""

import socket
import struct
import time

NBDMAGIC, IHAVEOPT = b"NBDMAGIC", b"IHAVEOPT"
OPT_REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC, EXTENDED_REQUEST_MAGIC = 0x25609513, 0x21E41C71
SIMPLE_MAGIC, STRUCTURED_MAGIC, EXTENDED_MAGIC = 0x67446698, 0x668E33EF, 0x6E8A278C

# Options.
EXPORT_NAME, ABORT, LIST, STARTTLS, INFO, GO = 1, 2, 3, 5, 6, 7
STRUCTURED_REPLY, LIST_META_CONTEXT, SET_META_CONTEXT, EXTENDED_HEADERS = 8, 9, 10, 11
# Option replies.
REP_ACK, REP_SERVER, REP_INFO, REP_META_CONTEXT = 1, 2, 3, 4
ERR = 1 << 31
REP_ERR_UNSUP, REP_ERR_POLICY, REP_ERR_INVALID, REP_ERR_PLATFORM = ERR + 1, ERR + 2, ERR + 3, ERR + 4
REP_ERR_TLS_REQD, REP_ERR_UNKNOWN, REP_ERR_SHUTDOWN, REP_ERR_BLOCK_SIZE_REQD = ERR + 5, ERR + 6, ERR + 7, ERR + 8
REP_ERR_TOO_BIG, REP_ERR_EXT_HEADER_REQD = ERR + 9, ERR + 10
REP_NAMES = {REP_ACK: "NBD_REP_ACK", REP_SERVER: "NBD_REP_SERVER", REP_INFO: "NBD_REP_INFO",
             REP_META_CONTEXT: "NBD_REP_META_CONTEXT", REP_ERR_UNSUP: "NBD_REP_ERR_UNSUP",
             REP_ERR_POLICY: "NBD_REP_ERR_POLICY", REP_ERR_INVALID: "NBD_REP_ERR_INVALID",
             REP_ERR_TLS_REQD: "NBD_REP_ERR_TLS_REQD", REP_ERR_UNKNOWN: "NBD_REP_ERR_UNKNOWN",
             REP_ERR_SHUTDOWN: "NBD_REP_ERR_SHUTDOWN", REP_ERR_TOO_BIG: "NBD_REP_ERR_TOO_BIG",
             REP_ERR_EXT_HEADER_REQD: "NBD_REP_ERR_EXT_HEADER_REQD"}
# Commands and their flags.
READ, WRITE, DISC, FLUSH, TRIM, CACHE, WRITE_ZEROES, BLOCK_STATUS = 0, 1, 2, 3, 4, 5, 6, 7
FUA, NO_HOLE, DF, REQ_ONE, FAST_ZERO, PAYLOAD_LEN = 1, 2, 4, 8, 16, 32
# Errors in transmission.
OK, EPERM, EIO, ENOMEM, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP, ESHUTDOWN = 0, 1, 5, 12, 22, 28, 75, 95, 108
ERRNO_NAMES = {OK: "success", EPERM: "NBD_EPERM", EIO: "NBD_EIO", ENOMEM: "NBD_ENOMEM", EINVAL: "NBD_EINVAL",
               ENOSPC: "NBD_ENOSPC", EOVERFLOW: "NBD_EOVERFLOW", ENOTSUP: "NBD_ENOTSUP",
               ESHUTDOWN: "NBD_ESHUTDOWN"}
# Reply chunk types.
CHUNK_NONE, CHUNK_DATA, CHUNK_HOLE, CHUNK_BLOCK_STATUS, CHUNK_BLOCK_STATUS_EXT = 0, 1, 2, 5, 6
CHUNK_ERROR = 1 << 15  # the error bit of a chunk type

FLAGS = 3  # NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES


class Closed(Exception):
    """The server closed the connection (or reset it)."""


def name(s):
    return struct.pack(">I", len(s)) + s


def go_payload(export=b"", infos=()):
    return name(export) + struct.pack(">H", len(infos)) + b"".join(struct.pack(">H", i) for i in infos)


def meta_payload(export=b"", queries=(b"base:allocation",)):
    return name(export) + struct.pack(">I", len(queries)) + b"".join(name(q) for q in queries)


def option(opt, payload=b"", length=None):
    n = len(payload) if length is None else length
    return IHAVEOPT + struct.pack(">II", opt, n) + payload


def request(cmd, cookie=1, offset=0, length=0, flags=0, extended=False):
    if extended:
        return struct.pack(">IHHQQQ", EXTENDED_REQUEST_MAGIC, flags, cmd, cookie, offset, length)
    return struct.pack(">IHHQQI", REQUEST_MAGIC, flags, cmd, cookie, offset, length)


class Raw:
    """One connection. `mode` is "simple", "structured" or "extended" once negotiated."""

    def __init__(self, sock, timeout=10.0):
        self.sock = sock
        self.timeout = timeout
        self.buf = b""
        self.mode = "simple"

    # -- bytes --
    def send(self, data):
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise Closed(str(exc)) from exc

    def recv_exact(self, n, timeout=None):
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while len(self.buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"waited for {n} bytes, have {len(self.buf)}")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(max(n - len(self.buf), 1 << 16))
            except socket.timeout as exc:
                raise TimeoutError(f"waited for {n} bytes, have {len(self.buf)}") from exc
            except ConnectionResetError as exc:
                raise Closed("reset") from exc
            if not chunk:
                raise Closed(f"end of stream with {len(self.buf)} of {n} bytes")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def closed_within(self, seconds):
        """True if the server closes the connection within `seconds` (discarding what it sends)."""
        deadline = time.monotonic() + seconds
        self.buf = b""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.sock.settimeout(left)
            try:
                if not self.sock.recv(1 << 16):
                    return True
            except socket.timeout:
                return False
            except ConnectionResetError:
                return True

    def close(self):
        self.sock.close()

    # -- handshake --
    def greeting(self):
        g = self.recv_exact(18)
        assert g[:16] == NBDMAGIC + IHAVEOPT, f"not a newstyle greeting: {g!r}"
        return struct.unpack(">H", g[16:])[0]

    def start(self, flags=FLAGS):
        self.greeting()
        self.send(struct.pack(">I", flags))
        return self

    def option(self, opt, payload=b""):
        self.send(option(opt, payload))

    def reply(self, timeout=None):
        """One option reply: (option, type, payload)."""
        magic, opt, rep, n = struct.unpack(">QIII", self.recv_exact(20, timeout))
        assert magic == OPT_REPLY_MAGIC, f"bad option reply magic {magic:#x}"
        return opt, rep, self.recv_exact(n, timeout)

    def final_reply(self, timeout=None):
        """Skips NBD_REP_SERVER/INFO/META_CONTEXT; returns the first ack or error type."""
        while True:
            _, rep, _ = self.reply(timeout)
            if rep not in (REP_SERVER, REP_INFO, REP_META_CONTEXT):
                return rep

    def expect(self, opt, payload, want):
        self.option(opt, payload)
        got = self.final_reply()
        assert got == want, f"option {opt}: got {REP_NAMES.get(got, hex(got))}, want {REP_NAMES.get(want, want)}"

    def go(self, mode="simple", export=b""):
        """Negotiates `mode` (with base:allocation for structured/extended) and enters transmission."""
        if mode == "structured":
            self.expect(STRUCTURED_REPLY, b"", REP_ACK)
        elif mode == "extended":
            self.expect(EXTENDED_HEADERS, b"", REP_ACK)
        if mode != "simple":
            self.expect(SET_META_CONTEXT, meta_payload(export), REP_ACK)
        self.expect(GO, go_payload(export), REP_ACK)
        self.mode = mode
        return self

    # -- transmission --
    @property
    def extended(self):
        return self.mode == "extended"

    def request(self, cmd, cookie=1, offset=0, length=0, flags=0, payload=b""):
        if self.extended and payload:
            flags |= PAYLOAD_LEN
        self.send(request(cmd, cookie, offset, length, flags, self.extended) + payload)

    def transmission_reply(self, read_len=0, timeout=None):
        """One whole reply: (cookie, errno, data bytes). Simple read replies carry `read_len` bytes."""
        data, errno = b"", 0
        while True:
            magic = struct.unpack(">I", self.recv_exact(4, timeout))[0]
            if magic == SIMPLE_MAGIC:
                err, cookie = struct.unpack(">IQ", self.recv_exact(12, timeout))
                if err == 0 and read_len:
                    data = self.recv_exact(read_len, timeout)
                return cookie, err, data
            if magic == STRUCTURED_MAGIC:
                flags, kind, cookie, n = struct.unpack(">HHQI", self.recv_exact(16, timeout))
            elif magic == EXTENDED_MAGIC:
                flags, kind, cookie, _, n = struct.unpack(">HHQQQ", self.recv_exact(28, timeout))
            else:
                raise AssertionError(f"bad reply magic {magic:#x}")
            payload = self.recv_exact(n, timeout)
            if kind & CHUNK_ERROR:
                errno = errno or struct.unpack(">I", payload[:4])[0]
            elif kind == CHUNK_DATA:
                data += payload[8:]
            if flags & 1:
                return cookie, errno, data

    def expect_errno(self, want, cmd, offset=0, length=0, flags=0, payload=b"", cookie=7):
        self.request(cmd, cookie, offset, length, flags, payload)
        got_cookie, errno, _ = self.transmission_reply()
        assert got_cookie == cookie, f"reply for cookie {got_cookie}, want {cookie}"
        assert errno == want, f"got {ERRNO_NAMES.get(errno, errno)}, want {ERRNO_NAMES.get(want, want)}"

    def read(self, offset, length, cookie=9):
        self.request(READ, cookie, offset, length)
        got_cookie, errno, data = self.transmission_reply(read_len=length)
        assert (got_cookie, errno) == (cookie, 0), f"read failed: cookie {got_cookie}, {ERRNO_NAMES.get(errno)}"
        return data
