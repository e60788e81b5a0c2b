#!/usr/bin/env bash
# tests/s3/crash.sh: kill -9 of the server after a flush loses nothing.
#
# Against the cluster in the environment (eval "$(tests/s3/garage-cluster.sh env)"):
#   1. serve a new s3:// disk (lease-timeout=4s), write 12 MiB of random data at unaligned
#      offsets through libnbd (python3-libnbd), FLUSH, then write more without a flush
#   2. kill -9 the server
#   3. a read-only server (no lease needed) must return every flushed byte
#   4. a read-write server must be refused while the dead server's lease lasts and start
#      once it expired (polled, bounded), and again return every flushed byte
# Prints PASS, FAIL or SKIP (no server binary, no S3 endpoint, no python3-libnbd).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/s3/serve.sh
. "$HERE/serve.sh"
PY=/usr/bin/python3

skip() { echo "SKIP: s3 crash case: $*"; exit 0; }
fail() { echo "FAIL: s3 crash case: $*"; [ -n "${LOG:-}" ] && tail -20 "$LOG"; exit 1; }

[ -n "${NBDX_S3_ENDPOINT:-}" ] || skip "no S3 endpoint (run tests/s3/garage-cluster.sh)"
s3_server_command || skip "$S3_SKIP"
$PY -c 'import nbd' 2>/dev/null || skip "no python3-libnbd for $PY"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/nbdx-s3-crash.XXXXXX")
cleanup() {
    [ -n "${S3_PID:-}" ] && kill -9 "$S3_PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT
SOCK=$WORK/sock
PREFIX=nbdx-tests/crash-$(date +%s%N)
echo "crash case: ${S3_SERVER[0]} on $(s3_source "$PREFIX")"

# Writes (mode write) or checks (mode verify) the flushed pattern; prints what it did.
nbd_io() {
    $PY - "$1" "$SOCK" <<'EOF'
import hashlib, random, sys
import nbd
mode, sock = sys.argv[1], sys.argv[2]
h = nbd.NBD()
h.connect_unix(sock)
rng = random.Random(20261125)
# 12 MiB in pieces of odd sizes at odd offsets, over several 1 MiB chunks.
pieces, off = [], 12345
while off < 13 << 20:
    n = rng.randrange(4096, 700_000)
    pieces.append((off, rng.randbytes(n)))
    off += n + rng.randrange(0, 50_000)
if mode == "write":
    for o, d in pieces:
        h.pwrite(d, o)
    h.flush()
    # Not flushed: may or may not survive, must not corrupt the flushed data around it.
    h.pwrite(b"\xee" * 4096, 40 << 20)
    print(f"wrote and flushed {sum(len(d) for _, d in pieces)} bytes in {len(pieces)} writes")
    sys.stdout.flush()
    # Leave the connection open: the server is killed under it.
else:
    bad = [o for o, d in pieces if h.pread(len(d), o) != d]
    if bad:
        sys.exit(f"{len(bad)} of {len(pieces)} flushed writes differ, first at offset {bad[0]}")
    print(f"all {len(pieces)} flushed writes read back")
    h.shutdown()
EOF
}

LOG=$WORK/server1.log
s3_serve "$SOCK" "$(s3_source "$PREFIX" "size=64M&object-size=1M&lease-timeout=4s")" "$LOG" ||
    fail "the server did not start"
nbd_io write || fail "writing through the server failed"
kill -9 "$S3_PID"
wait "$S3_PID" 2>/dev/null || true
S3_PID=
echo "killed the server with SIGKILL after the flush"

LOG=$WORK/server2.log
s3_serve "$SOCK" "$(s3_source "$PREFIX" "read-only")" "$LOG" || fail "a read-only server did not start"
nbd_io verify || fail "flushed data lost (read-only server)"
s3_stop || fail "the read-only server did not exit cleanly on SIGTERM"

# Read-write: refused until the dead holder's lease expires, then accepted.
LOG=$WORK/server3.log
deadline=$((SECONDS + 30))
refused=0
until s3_serve "$SOCK" "$(s3_source "$PREFIX")" "$LOG"; do
    grep -q "in use by" "$LOG" || fail "a read-write server failed for another reason than the lease"
    refused=$((refused + 1))
    [ "$SECONDS" -lt "$deadline" ] || fail "the dead server's lease was not taken over within 30 s"
    sleep 0.5
done
[ "$refused" -gt 0 ] || fail "a read-write server started while the killed server's lease was still valid"
echo "read-write server refused $refused time(s) while the dead server's lease lasted, then started"
nbd_io verify || fail "flushed data lost (read-write server after takeover)"
s3_stop || fail "the read-write server did not exit cleanly on SIGTERM"
echo "PASS: s3 crash case: kill -9 after flush lost nothing"
