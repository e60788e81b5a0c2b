#!/usr/bin/env bash
# bench/tls.sh: what TLS costs, for nbdx serve and for nbdkit, in one run.
#
#   bench/tls.sh [ROUNDS]        default 3 rounds; writes bench/results/tls.md
#
# For each server (nbdx serve memory:1G, nbdkit memory 1G) and each mode (plaintext,
# --tls=require with an X.509 certificate), on TCP loopback: nbdcopy -C 4 writes a
# 1 GiB random file from /dev/shm to the export, then reads the export to null:.
# Rounds are interleaved (server × mode inside each round) so that drift on a shared
# machine hits every configuration alike. The tables show medians: throughput in MiB/s
# with the TLS/plaintext ratio, and the server's CPU time (user + system, from
# /proc/PID/stat) per GiB moved, which depends much less on what else the machine runs.
# Certificates are made with certtool (gnutls-bin) each run.
#
# Environment: NBDX_BIN (default target/release/nbdx).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NBDX=${NBDX_BIN:-$ROOT/target/release/nbdx}
ROUNDS=${1:-3}
SIZE_MIB=1024
OUT=$ROOT/bench/results/tls.md

for tool in nbdkit nbdcopy certtool python3; do
    command -v "$tool" >/dev/null || { echo "bench/tls.sh: $tool is missing" >&2; exit 2; }
done
[ -x "$NBDX" ] || { echo "bench/tls.sh: $NBDX missing (cargo build --release)" >&2; exit 2; }

WORK=$(mktemp -d /tmp/nbdx-tls-bench.XXXXXX)
SRC=/dev/shm/nbdx-tls-bench-$$.img
SERVER_PID=
cleanup() {
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
    rm -rf "$WORK" "$SRC"
}
trap cleanup EXIT

# ---- certificates (RSA 2048, for localhost and 127.0.0.1) ----
PKI=$WORK/pki
mkdir -p "$PKI"
certtool --generate-privkey --key-type=rsa --bits=2048 --outfile "$PKI/ca-key.pem" 2>/dev/null
printf 'cn = bench CA\nca\ncert_signing_key\nexpiration_days = 1\n' >"$WORK/ca.info"
certtool --generate-self-signed --load-privkey "$PKI/ca-key.pem" --template "$WORK/ca.info" \
    --outfile "$PKI/ca-cert.pem" 2>/dev/null
certtool --generate-privkey --key-type=rsa --bits=2048 --outfile "$PKI/server-key.pem" 2>/dev/null
printf 'cn = localhost\ndns_name = localhost\nip_address = 127.0.0.1\ntls_www_server\nencryption_key\nsigning_key\nexpiration_days = 1\n' \
    >"$WORK/server.info"
certtool --generate-certificate --load-ca-certificate "$PKI/ca-cert.pem" --load-ca-privkey "$PKI/ca-key.pem" \
    --load-privkey "$PKI/server-key.pem" --template "$WORK/server.info" --outfile "$PKI/server-cert.pem" 2>/dev/null
rm "$PKI/ca-key.pem"

head -c $((SIZE_MIB << 20)) /dev/urandom >"$SRC"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Waits (bounded) for the NBD greeting on 127.0.0.1:$1.
wait_ready() {
    local i
    for i in $(seq 1 200); do
        if python3 - "$1" <<'EOF' 2>/dev/null; then return 0; fi
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1)
sys.exit(0 if s.recv(8) == b"NBDMAGIC" else 1)
EOF
        sleep 0.05
    done
    echo "bench/tls.sh: server on port $1 not ready" >&2
    return 1
}

start() {   # SERVER MODE PORT
    local tls=()
    case $1 in
        nbdx)
            [ "$2" = tls ] && tls=(--tls=require --tls-certificates "$PKI")
            "$NBDX" serve -i 127.0.0.1 -p "$3" "${tls[@]}" memory:1G >/dev/null 2>&1 &
            ;;
        nbdkit)
            [ "$2" = tls ] && tls=(--tls=require "--tls-certificates=$PKI")
            nbdkit -f --exit-with-parent -i 127.0.0.1 -p "$3" "${tls[@]}" memory 1G >/dev/null 2>&1 &
            ;;
    esac
    SERVER_PID=$!
    wait_ready "$3"
}

stop() {
    kill "$SERVER_PID"
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$SERVER_PID/stat"; }

measure() {   # runs "$@"; prints "elapsed-seconds server-cpu-seconds"
    local t0 t1 c0 c1
    c0=$(cpu_ticks)
    t0=$(date +%s.%N)
    "$@" >/dev/null
    t1=$(date +%s.%N)
    c1=$(cpu_ticks)
    echo "$(echo "$t1 - $t0" | bc -l) $(echo "($c1 - $c0) / $(getconf CLK_TCK)" | bc -l)"
}

RESULTS=$WORK/results.txt
: >"$RESULTS"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
for round in $(seq 1 "$ROUNDS"); do
    for server in nbdx nbdkit; do
        for mode in plain tls; do
            port=$(free_port)
            start "$server" "$mode" "$port"
            if [ "$mode" = tls ]; then
                uri="nbds://127.0.0.1:$port/?tls-certificates=$PKI"
            else
                uri="nbd://127.0.0.1:$port/"
            fi
            w=$(measure nbdcopy -C 4 "$SRC" "$uri")
            r=$(measure nbdcopy -C 4 "$uri" null:)
            stop
            echo "$server $mode $w $r" >>"$RESULTS"
            echo "round $round: $server $mode: write (s, server cpu s) $w, read $r" >&2
        done
    done
done

mkdir -p "$(dirname "$OUT")"
python3 - "$RESULTS" "$SIZE_MIB" "$ROUNDS" "$LOAD_BEFORE" "$(cut -d' ' -f1-3 /proc/loadavg)" >"$OUT" <<'EOF'
import statistics, sys, subprocess, datetime
path, size, rounds, load0, load1 = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
runs = {}
for line in open(path):
    server, mode, w, wcpu, r, rcpu = line.split()
    gib = size / 1024
    runs.setdefault((server, mode), []).append(
        (size / float(w), size / float(r), float(wcpu) / gib, float(rcpu) / gib))
med = {k: tuple(statistics.median(x[i] for x in v) for i in range(4)) for k, v in runs.items()}
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print("# TLS throughput: nbdx and nbdkit, plaintext vs TLS\n")
print(f"`bench/tls.sh {rounds}` on {datetime.date.today()}: {cpu}, {subprocess.getoutput('nproc')} cores, "
      f"load average {load0} before and {load1} after (the machine is shared: expect noise). TCP loopback, memory export of 1 GiB, "
      "`nbdcopy -C 4` (4 connections), 1 GiB of random data from /dev/shm written then read to `null:`; "
      f"medians of {rounds} interleaved rounds, MiB/s. TLS: `--tls=require`, RSA 2048 server "
      "certificate; libnbd (GnuTLS) negotiates TLS 1.3.\n")
print("| server | write plain | write TLS | TLS/plain | read plain | read TLS | TLS/plain |")
print("|---|---|---|---|---|---|---|")
for server in ("nbdx", "nbdkit"):
    (wp, rp, _, _), (wt, rt, _, _) = med[(server, "plain")], med[(server, "tls")]
    print(f"| {server} | {wp:.0f} | {wt:.0f} | {wt / wp:.2f} | {rp:.0f} | {rt:.0f} | {rt / rp:.2f} |")
nx, nk = med[("nbdx", "tls")], med[("nbdkit", "tls")]
print(f"\nnbdx/nbdkit throughput over TLS: write {nx[0] / nk[0]:.2f}x, read {nx[1] / nk[1]:.2f}x.\n")
print("Server CPU seconds per GiB moved (lower is better):\n")
print("| server | write plain | write TLS | TLS extra | read plain | read TLS | TLS extra |")
print("|---|---|---|---|---|---|---|")
for server in ("nbdx", "nbdkit"):
    (_, _, wp, rp), (_, _, wt, rt) = med[(server, "plain")], med[(server, "tls")]
    print(f"| {server} | {wp:.2f} | {wt:.2f} | {wt - wp:+.2f} | {rp:.2f} | {rt:.2f} | {rt - rp:+.2f} |")
busy = {k: v[1] / 1024 * v[3] for k, v in med.items()}
print(f"\nWhile reading over TLS the servers were busy {busy[('nbdx', 'tls')]:.2f} (nbdx) and "
      f"{busy[('nbdkit', 'tls')]:.2f} (nbdkit) CPU seconds per second: neither is CPU-bound, so on a shared "
      "machine wall-clock throughput also measures scheduling and pipelining (the plaintext columns show the "
      "same gap), while CPU time per GiB, and its TLS extra, compare the cost of TLS itself.")
EOF
cat "$OUT"
