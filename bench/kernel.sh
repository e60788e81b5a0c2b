#!/usr/bin/env bash
# bench/kernel.sh: throughput of /dev/nbdN backed by `nbdx serve`, by `nbdx loop`
# (in-process server) and by nbdkit, all in one boot of the test VM (this machine's
# kernel has no nbd driver; see ../shared/vm/README.md).
#
#   bench/kernel.sh [SECONDS]      seconds per measurement (default 5)
#
# Every server serves a 512 MiB RAM disk (nbdx memory:, nbdkit's memory plugin) on a
# Unix socket in the guest; `nbdx attach -C N` (N = 1, 4) hands the connections to
# the kernel; the static example `blkbench` (crates/nbdx-netlink/examples) measures
# with O_DIRECT: sequential 1 MiB writes and reads (1 thread), then 4 KiB random
# writes and reads (8 threads = queue depth 8).
#
# nbdkit is not static: its binary, the memory plugin and every library `ldd` lists
# are copied into the VM with the dynamic loader and run as
#   ld-linux-x86-64.so.2 --library-path lib ./nbdkit ...
# Raw lines go to target/bench-kernel/results.txt, the table to bench/results/kernel.md.
set -euo pipefail
shopt -s inherit_errexit

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
SECS=${1:-5}
readonly TARGET=x86_64-unknown-linux-gnu
readonly STAGE=$ROOT/target/bench-kernel
readonly OUT=$ROOT/bench/results/kernel.md
readonly PLUGIN_DIR=/usr/lib/x86_64-linux-gnu/nbdkit/plugins

say() { printf 'bench/kernel: %s\n' "$*"; }

run_in_vm=""
for c in "$ROOT/../shared/vm/run-in-vm" /work/shared/vm/run-in-vm "$ROOT/scripts/vm/run-in-vm"; do
    if [ -f "$c" ]; then run_in_vm=$(realpath "$c"); break; fi
done
[ -n "$run_in_vm" ] || { say "no run-in-vm found"; exit 1; }

say "building static nbdx and blkbench"
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo build --release --target "$TARGET" -p nbdx-cli --bin nbdx -p nbdx-netlink --example blkbench
rm -rf "$STAGE"
mkdir -p "$STAGE/nbdkit/lib"
cp "target/$TARGET/release/nbdx" "target/$TARGET/release/examples/blkbench" "$STAGE/"

# nbdkit with its libraries and loader.
nbdkit_note=""
if nbdkit_bin=$(command -v nbdkit) && [ -f "$PLUGIN_DIR/nbdkit-memory-plugin.so" ]; then
    cp "$nbdkit_bin" "$STAGE/nbdkit/nbdkit"
    cp "$PLUGIN_DIR/nbdkit-memory-plugin.so" "$STAGE/nbdkit/"
    for lib in $( { ldd "$nbdkit_bin"; ldd "$PLUGIN_DIR/nbdkit-memory-plugin.so"; } | awk '$3 ~ /^\// { print $3 }' | sort -u); do
        cp -L "$lib" "$STAGE/nbdkit/lib/"
    done
    cp -L /lib64/ld-linux-x86-64.so.2 "$STAGE/nbdkit/"
    nbdkit_version=$(nbdkit --version)
    say "nbdkit: $nbdkit_version, $(du -sh "$STAGE/nbdkit" | cut -f1) with its libraries"
else
    nbdkit_note="nbdkit is not installed here (apt-get install nbdkit): no nbdkit rows."
    rm -rf "$STAGE/nbdkit"
fi

cat >"$STAGE/bench.sh" <<EOF
#!/bin/sh
SECS=$SECS
EOF
cat >>"$STAGE/bench.sh" <<'EOF'
SIZE=512M
SOCK=/tmp/bench.sock
URI="nbd+unix:///?socket=$SOCK"

measure() {   # NAME CONNS DEVICE
    for m in "seq-write 1048576 1" "seq-read 1048576 1" "rand-write 4096 8" "rand-read 4096 8"; do
        set -- "$1" "$2" "$3" $m
        echo "RESULT $1 C=$2 $(./blkbench "$3" "$4" "$5" "$6" "$SECS")"
    done
}

# Serves with "$@" on $SOCK, attaches with N connections, measures, cleans up.
served() {    # NAME CONNS COMMAND...
    name=$1 conns=$2; shift 2
    rm -f "$SOCK"
    "$@" >/dev/null &
    server=$!
    i=0
    while [ ! -S "$SOCK" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
    if dev=$(./nbdx attach "$URI" -C "$conns"); then
        measure "$name" "$conns" "$dev"
        ./nbdx detach "$dev"
    else
        echo "RESULT $name C=$conns attach failed"
    fi
    kill "$server"; wait "$server" 2>/dev/null
}

looped() {    # CONNS
    ./nbdx loop "memory:$SIZE" -C "$1" >/tmp/loop.out &
    loop=$!
    i=0
    while ! grep -q nbd /tmp/loop.out 2>/dev/null && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
    measure "nbdx-loop" "$1" "$(head -n1 /tmp/loop.out)"
    kill -TERM "$loop"; wait "$loop"
}

echo "guest: $(nproc) CPUs, $(uname -r)"
for c in 1 4; do served nbdx "$c" ./nbdx serve "memory:$SIZE" -U "$SOCK"; done
for c in 1 4; do looped "$c"; done
if [ -x nbdkit/nbdkit ]; then
    NBDKIT="./nbdkit/ld-linux-x86-64.so.2 --library-path ./nbdkit/lib ./nbdkit/nbdkit"
    echo "guest: $($NBDKIT --version)"
    for c in 1 4; do served nbdkit "$c" $NBDKIT -f -U "$SOCK" ./nbdkit/nbdkit-memory-plugin.so size=$SIZE; done
fi
EOF
chmod 755 "$STAGE/bench.sh"

say "running in the VM ($SECS s per measurement)"
t0=$SECONDS
RUN_IN_VM_MEMORY=${RUN_IN_VM_MEMORY:-2G} bash "$run_in_vm" -t 900 "$STAGE" 'sh ./bench.sh' | tee "$STAGE/results.txt"
say "VM run took $((SECONDS - t0)) s"

mkdir -p "$(dirname "$OUT")"
/usr/bin/python3 - "$STAGE/results.txt" "$OUT" "$SECS" "$nbdkit_note" <<'PY'
import re, sys, datetime
results, out, secs, note = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
rows, guest = {}, []
for line in open(results, errors="replace"):
    if line.startswith("guest: "):
        guest.append(line[7:].strip())
    m = re.match(r"RESULT (\S+) C=(\d+) (\S+) bs=\d+ threads=\d+ secs=\S+ MiB/s=(\S+) IOPS=(\S+)", line)
    if m:
        rows.setdefault((m[1], int(m[2])), {})[m[3]] = (float(m[4]), float(m[5]))
def cell(r, mode, iops):
    if mode not in r:
        return "-"
    mib, ops = r[mode]
    return f"{ops:,.0f} ({mib:.1f} MiB/s)" if iops else f"{mib:.1f}"
lines = [
    "# /dev/nbdN throughput: nbdx vs nbdkit",
    "",
    f"Produced by `bench/kernel.sh {secs}` on {datetime.date.today()}: one boot of the test VM",
    "(`../shared/vm/run-in-vm`, QEMU **TCG** software emulation, 2 vCPUs, 2 GiB) on a 2-core",
    "sandbox shared with other jobs. " + "; ".join(guest) + ".",
    "",
    "Each server serves a 512 MiB RAM disk on a Unix socket inside the guest and `nbdx attach -C N`",
    "hands N connections to the kernel (`nbdx-loop`: `nbdx loop memory:512M -C N`, the server in",
    "the attaching process over socketpairs). `blkbench` (O_DIRECT, "
    f"{secs} s each): sequential 1 MiB requests with one thread, random 4 KiB requests with",
    "8 threads (queue depth 8). Absolute numbers are those of an emulated CPU, about 10x below",
    "hardware; compare the rows with each other.",
    "",
    "| server | connections | seq write MiB/s | seq read MiB/s | 4 KiB random write IOPS | 4 KiB random read IOPS |",
    "|---|---|---|---|---|---|",
]
for (name, conns), r in sorted(rows.items(), key=lambda kv: (["nbdx", "nbdx-loop", "nbdkit"].index(kv[0][0]) if kv[0][0] in ["nbdx", "nbdx-loop", "nbdkit"] else 9, kv[0][1])):
    lines.append(f"| {name} | {conns} | {cell(r, 'seq-write', False)} | {cell(r, 'seq-read', False)} | "
                 f"{cell(r, 'rand-write', True)} | {cell(r, 'rand-read', True)} |")
if note:
    lines += ["", note]
open(out, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
say "table written to ${OUT#"$ROOT"/}"
