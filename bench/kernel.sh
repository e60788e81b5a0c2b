#!/usr/bin/env bash
# bench/kernel.sh: throughput of /dev/nbdN backed by `nbdx serve`, by `nbdx loop`
# (in-process server) and by nbdkit, all in one boot of the test VM (this machine's
# kernel has no nbd driver; see ../shared/vm/README.md).
#
#   bench/kernel.sh [SECONDS]      seconds per measurement (default 5)
#   bench/kernel.sh --table        only rewrite the table from the last run's results
#
# Servers, each on a Unix socket in the guest: a 128 MiB RAM disk (nbdx memory:,
# nbdkit's memory plugin) with 1 and 4 connections, a 128 MiB tmpfs file (nbdx, nbdkit's
# file plugin) with 4 connections, and `nbdx loop memory:128M` with 1 and 4. nbdx and
# nbdkit runs alternate, so that a change of the host's load hits both alike.
# `nbdx attach -C N` hands the connections to the kernel; the static example
# `blkbench` (crates/nbdx-netlink/examples) measures with O_DIRECT: `fill` (one
# sequential pass of 1 MiB writes: first writes, which allocate), then SECONDS each of
# sequential 1 MiB writes and reads (1 thread) and 4 KiB random writes and reads
# (8 threads = queue depth 8).
#
# nbdkit is not static: its binary, the two plugins and every library `ldd` lists are
# copied into the VM with the dynamic loader and run as
#   ld-linux-x86-64.so.2 --library-path lib ./nbdkit ...
# Raw lines go to target/bench-kernel/results.txt, the table to bench/results/kernel.md.
set -euo pipefail
shopt -s inherit_errexit

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
TABLE_ONLY=0
if [ "${1:-}" = --table ]; then TABLE_ONLY=1; shift; fi
SECS=${1:-5}
readonly TARGET=x86_64-unknown-linux-gnu
readonly STAGE=$ROOT/target/bench-kernel
readonly OUT=$ROOT/bench/results/kernel.md
readonly PLUGIN_DIR=/usr/lib/x86_64-linux-gnu/nbdkit/plugins

say() { printf 'bench/kernel: %s\n' "$*"; }

# Writes bench/results/kernel.md from the RESULT lines of a run.
write_table() {   # SECONDS NOTE LOAD
    mkdir -p "$(dirname "$OUT")"
    /usr/bin/python3 - "$STAGE/results.txt" "$OUT" "$@" <<'PY'
import re, sys, datetime
results, out, secs, note, load = sys.argv[1:6]
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
    return f"{ops:,.0f}" if iops else f"{mib:.1f}"
lines = [
    "# /dev/nbdN throughput: nbdx vs nbdkit",
    "",
    f"Produced by `bench/kernel.sh {secs}` on {datetime.date.today()}: one boot of the test VM",
    "(`../shared/vm/run-in-vm`, QEMU **TCG** software emulation, 2 vCPUs, 2 GiB) on a 2-core",
    f"sandbox shared with other jobs ({load}). Guest: " + "; ".join(guest) + ".",
    "",
    "Each server runs in the guest on a Unix socket; `nbdx attach -C N` hands N connections",
    "to the kernel (`nbdx-loop`: `nbdx loop memory:128M -C N`, the server inside the",
    "attaching process, over socketpairs). `memory`: 128 MiB RAM disk (nbdx `memory:`,",
    "nbdkit `memory` plugin); `file`: a 128 MiB file on the guest's tmpfs (nbdx, nbdkit",
    "`file` plugin). `blkbench`, O_DIRECT: *fill* = one sequential pass of 1 MiB writes over",
    f"the fresh device (first writes: the server allocates), then {secs} s each of sequential",
    "1 MiB writes and reads (one thread) and random 4 KiB writes and reads (8 threads, queue",
    "depth 8). Under TCG every guest instruction is emulated, so absolute numbers are far",
    "below hardware and move with the host's load; compare rows of the same run.",
    "",
    "| server/backend | conns | fill MiB/s | seq write MiB/s | seq read MiB/s | 4K rand write IOPS | 4K rand read IOPS |",
    "|---|---|---|---|---|---|---|",
]
order = ["nbdx/memory", "nbdkit/memory", "nbdx/file", "nbdkit/file", "nbdx-loop/memory"]
for (name, conns), r in sorted(rows.items(), key=lambda kv: (kv[0][1] if "file" not in kv[0][0] else 9, order.index(kv[0][0]) if kv[0][0] in order else 99)):
    lines.append(f"| {name} | {conns} | {cell(r, 'fill', False)} | {cell(r, 'seq-write', False)} | "
                 f"{cell(r, 'seq-read', False)} | {cell(r, 'rand-write', True)} | {cell(r, 'rand-read', True)} |")
lines += [
    "",
    "Known effects (not specific to one run):",
    "",
    "* Kernel 6.1 gives nbd devices `max_sectors_kb` = 128, so each 1 MiB request reaches the",
    "  server as 128 KiB requests; `nbdx attach` only ever lowers that cap (to the export's",
    "  maximum), it does not raise it.",
    "* Random first writes into a fresh nbdx RAM disk are slow under TCG: each touches a new",
    "  64 KiB page of a 2 MiB `mmap` chunk (`MADV_POPULATE_WRITE`), and page faults and system",
    "  calls are emulated. A first version of this script without the fill pass measured",
    "  28-49 random-write IOPS for nbdx/memory against 185-238 for nbdkit/memory (32 KiB",
    "  malloc'd pages); after the fill the RAM disks compare as in the table.",
]
if note:
    lines += ["", note]
open(out, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
}

if [ "$TABLE_ONLY" = 1 ]; then
    secs=$(sed -n 's/^SECS=//p' "$STAGE/bench.sh")
    write_table "$secs" "" "$(sed -n 's/^# load: //p' "$STAGE/results.txt")"
    exit 0
fi

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
plugins=("$PLUGIN_DIR/nbdkit-memory-plugin.so" "$PLUGIN_DIR/nbdkit-file-plugin.so")
if nbdkit_bin=$(command -v nbdkit) && [ -f "${plugins[0]}" ] && [ -f "${plugins[1]}" ]; then
    cp "$nbdkit_bin" "$STAGE/nbdkit/nbdkit"
    cp "${plugins[@]}" "$STAGE/nbdkit/"
    for lib in $( { ldd "$nbdkit_bin"; ldd "${plugins[@]}"; } | awk '$3 ~ /^\// { print $3 }' | sort -u); do
        cp -L "$lib" "$STAGE/nbdkit/lib/"
    done
    cp -L /lib64/ld-linux-x86-64.so.2 "$STAGE/nbdkit/"
    say "nbdkit: $(nbdkit --version), $(du -sh "$STAGE/nbdkit" | cut -f1) with its libraries"
else
    nbdkit_note="nbdkit is not installed here (apt-get install nbdkit): no nbdkit rows."
    rm -rf "$STAGE/nbdkit"
fi

printf '#!/bin/sh\nSECS=%s\n' "$SECS" >"$STAGE/bench.sh"
cat >>"$STAGE/bench.sh" <<'GUEST'
SIZE=128M
SOCK=/tmp/bench.sock
URI="nbd+unix:///?socket=$SOCK"
NBDKIT="./nbdkit/ld-linux-x86-64.so.2 --library-path ./nbdkit/lib ./nbdkit/nbdkit"

# fill (first write of every block: allocation), then the timed modes.
measure() {   # NAME CONNS DEVICE
    echo "RESULT $1 C=$2 $(./blkbench "$3" fill 1048576 1 0)"
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
    measure nbdx-loop/memory "$1" "$(head -n1 /tmp/loop.out)"
    kill -TERM "$loop"; wait "$loop"
}

# A tmpfs file, written once so that its pages exist.
backing() { rm -f /tmp/disk.img; dd if=/dev/zero of=/tmp/disk.img bs=1M count=128 2>/dev/null; }

echo "guest: $(nproc) CPUs, $(uname -r)"
[ -x nbdkit/nbdkit ] && echo "guest: $($NBDKIT --version)"
for c in 1 4; do
    served nbdx/memory "$c" ./nbdx serve "memory:$SIZE" -U "$SOCK"
    [ -x nbdkit/nbdkit ] && served nbdkit/memory "$c" $NBDKIT -f -U "$SOCK" ./nbdkit/nbdkit-memory-plugin.so size=$SIZE
done
backing
served nbdx/file 4 ./nbdx serve /tmp/disk.img -U "$SOCK"
backing
[ -x nbdkit/nbdkit ] && served nbdkit/file 4 $NBDKIT -f -U "$SOCK" ./nbdkit/nbdkit-file-plugin.so file=/tmp/disk.img
for c in 1 4; do looped "$c"; done
GUEST
chmod 755 "$STAGE/bench.sh"

say "running in the VM ($SECS s per measurement)"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
t0=$SECONDS
RUN_IN_VM_MEMORY=${RUN_IN_VM_MEMORY:-2G} bash "$run_in_vm" -t 900 "$STAGE" 'sh ./bench.sh' | tee "$STAGE/results.txt"
say "VM run took $((SECONDS - t0)) s"
load="host load average (1, 5, 15 min) $load_before before, $(cut -d' ' -f1-3 /proc/loadavg) after"
echo "# load: $load" >>"$STAGE/results.txt"

write_table "$SECS" "$nbdkit_note" "$load"
say "table written to ${OUT#"$ROOT"/}"
