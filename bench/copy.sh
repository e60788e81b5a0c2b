#!/usr/bin/env bash
# bench/copy.sh: `nbdx copy -C 4` against `nbdcopy -C 4`, from and to nbdkit memory exports.
#
#   bench/copy.sh [ROUNDS]          (default 5 rounds; SIZE=2G by default)
#
# Cases (each run by both tools, interleaved, ROUNDS times; the table shows medians):
#   read     nbdkit memory (SIZE of data)         → null:
#   nbd→nbd  nbdkit memory (SIZE of data)         → nbdkit memory
#   upload   file (SIZE of data, in page cache)   → nbdkit memory
#   download nbdkit memory (SIZE of data)         → new file
#   sparse   nbdkit memory (4G, 64M of data)      → new file
# Wall time is what counts; "cpu" is the copying process's user+system time. The
# results table goes to bench/results/copy.md. Needs nbdkit, nbdcopy, and
# target/release/nbdx (cargo build --release -p nbdx-cli).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROUNDS=${1:-5}
SIZE=${SIZE:-2G}
NBDX=${NBDX_BIN:-$ROOT/target/release/nbdx}
OUT=$ROOT/bench/results/copy.md
WORK=$(mktemp -d /tmp/nbdx-bench.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

[ -x "$NBDX" ] || { echo "copy.sh: $NBDX missing (cargo build --release -p nbdx-cli)" >&2; exit 2; }

# Starts `nbdkit memory SIZE` on a Unix socket; sets URI once it accepts connections.
memory() {   # NAME SIZE
    local sock=$WORK/$1.sock
    URI="nbd+unix:///?socket=$sock"
    nbdkit -f -U "$sock" memory "$2" >/dev/null 2>&1 &
    PIDS+=($!)
    for _ in $(seq 400); do   # up to 20 s
        nbdinfo --size "$URI" >/dev/null 2>&1 && return
        sleep 0.05
    done
    echo "copy.sh: nbdkit did not start" >&2
    exit 1
}

memory src "$SIZE"; SRC=$URI
memory dst "$SIZE"; DST=$URI
memory sparse 4G; SPARSE=$URI
echo "filling the source with $SIZE of random data..."
nbdkit -U - random "$SIZE" --run "nbdcopy \"\$uri\" '$SRC'"
nbdcopy "$SRC" "$WORK/data.img"
# 64M of data over the sparse export, 8 pieces of 8M, 512M apart.
/usr/bin/python3 - "$SPARSE" <<'PY'
import os, sys
import nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
for i in range(8):
    h.pwrite(os.urandom(8 << 20), i * (512 << 20))
h.flush()
h.shutdown()
PY

# Runs one copy; prints "wall cpu" in seconds.
one() {   # TOOL SRC DST
    local tool=$1 src=$2 dst=$3 argv
    # nbdx always flushes the destination at the end; nbdcopy does with --flush.
    if [ "$tool" = nbdx ]; then argv=("$NBDX" copy -C 4); else argv=(nbdcopy -C 4 --flush); fi
    case $dst in "$WORK"/*.img) rm -f "$dst" ;; esac
    /usr/bin/time -f "%e %U %S" -o "$WORK/time" "${argv[@]}" "$src" "$dst"
    awk '{printf "%.3f %.3f\n", $1, $2 + $3}' "$WORK/time"
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

CASES=(read nbd2nbd upload download sparse)
declare -A SRC_OF=([read]=$SRC [nbd2nbd]=$SRC [upload]=$WORK/data.img [download]=$SRC [sparse]=$SPARSE)
declare -A DST_OF=([read]=null: [nbd2nbd]=$DST [upload]=$DST [download]=$WORK/out.img [sparse]=$WORK/out.img)
declare -A LABEL=([read]="nbdkit memory → null:" [nbd2nbd]="nbdkit memory → nbdkit memory"
    [upload]="file → nbdkit memory" [download]="nbdkit memory → new file" [sparse]="4G sparse (64M data) → new file")

for c in "${CASES[@]}"; do : > "$WORK/$c.nbdx"; : > "$WORK/$c.nbdcopy"; done
for r in $(seq "$ROUNDS"); do
    for c in "${CASES[@]}"; do
        # Alternate which tool goes first, so that neither always gets the warmer cache.
        if [ $((r % 2)) -eq 1 ]; then order=(nbdx nbdcopy); else order=(nbdcopy nbdx); fi
        for t in "${order[@]}"; do
            one "$t" "${SRC_OF[$c]}" "${DST_OF[$c]}" >> "$WORK/$c.$t"
        done
    done
    echo "round $r of $ROUNDS done"
done

{
    echo "| case ($SIZE unless said) | nbdx wall s | nbdcopy wall s | nbdcopy/nbdx | best nbdx / nbdcopy s | nbdx cpu s | nbdcopy cpu s |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    for c in "${CASES[@]}"; do
        nw=$(cut -d' ' -f1 "$WORK/$c.nbdx" | median); cw=$(cut -d' ' -f1 "$WORK/$c.nbdcopy" | median)
        nc=$(cut -d' ' -f2 "$WORK/$c.nbdx" | median); cc=$(cut -d' ' -f2 "$WORK/$c.nbdcopy" | median)
        ratio=$(awk -v a="$cw" -v b="$nw" 'BEGIN {printf "%.2f", (b > 0) ? a / b : 0}')
        nb=$(cut -d' ' -f1 "$WORK/$c.nbdx" | sort -n | head -n1); cb=$(cut -d' ' -f1 "$WORK/$c.nbdcopy" | sort -n | head -n1)
        echo "| ${LABEL[$c]} | $nw | $cw | $ratio× | $nb / $cb | $nc | $cc |"
    done
    echo
    echo "Medians (and best) of $ROUNDS interleaved rounds; ratio > 1 means nbdx is faster;"
    echo "\`-C 4\` for both (nbdcopy with \`--flush\`, as nbdx"
    echo "always flushes), Unix sockets; $(nproc) cores;"
    echo "nbdkit $(nbdkit --version | cut -d' ' -f2), $(nbdcopy --version | head -n1); $(date -u +%Y-%m-%d)."
    echo "Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg) (the machine is shared)."
} > "$OUT"
cat "$OUT"
