#!/usr/bin/env bash
# bench/s3.sh: nbdx's S3 device against nbdkit's S3 plugin on one 3-node Garage cluster.
#
# For each server, RUNS times (fresh prefix each run):
#   in     nbdcopy a random SIZE_MIB file to the export, flushed (nbdcopy --flush)
#   out    nbdcopy the export to null: from a freshly started server (so from the store)
#   rand   4 KiB random reads at queue depth 8 for RAND_SECONDS (bench/s3_randread.py),
#          from another freshly started server
# plus the store's own PUT/GET rate for 4 MiB objects at 32 in flight (s3_rawbench), measured
# in each nbdx run (the machine is shared: rates drift from minute to minute).
# Prints medians and ratios and writes them to bench/results/s3.md.
#
# Environment: NBDX_BENCH_MIB (default 512), NBDX_BENCH_RUNS (3), NBDX_BENCH_RAND_SECONDS (10),
# NBDX_BENCH_REQUEST (nbdcopy --request-size, default 4194304 = the object size). nbdkit's
# S3 plugin runs through bench/nbdkit_s3_shim.py: Debian's plugin (nbdkit 1.32) advertises its
# object size as minimum block size, which nbdkit refuses above 64 KiB. Uses the cluster in the
# environment (garage-cluster.sh env), else starts one and stops it at the end. Installs
# nbdkit-plugin-python and python3-boto3 with apt when missing. Servers listen on Unix sockets.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
MIB=${NBDX_BENCH_MIB:-512}
RUNS=${NBDX_BENCH_RUNS:-3}
RAND_SECONDS=${NBDX_BENCH_RAND_SECONDS:-10}
REQUEST=${NBDX_BENCH_REQUEST:-4194304}
OBJ=4M
PY=/usr/bin/python3
OUT=bench/results/s3.md
# shellcheck source=tests/s3/serve.sh
. tests/s3/serve.sh

say() { echo "bench/s3: $*" >&2; }

# ------------------------------------------------------------------ set-up --
if ! dpkg-query -W -f='${Status}' nbdkit-plugin-python python3-boto3 libnbd-bin python3-libnbd 2>/dev/null |
    grep -qv "not-installed"; then
    say "installing nbdkit-plugin-python python3-boto3 libnbd-bin python3-libnbd"
    apt-get install -y -q --no-install-recommends nbdkit nbdkit-plugin-python python3-boto3 libnbd-bin \
        python3-libnbd >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q \
        --no-install-recommends nbdkit nbdkit-plugin-python python3-boto3 libnbd-bin python3-libnbd >/dev/null; }
fi
say "building nbdx (release, feature s3)"
cargo build --release -q -p nbdx --features s3 --example s3_serve --example s3_rawbench
s3_server_command || { say "$S3_SKIP"; exit 1; }

STARTED=0
if [ -z "${NBDX_S3_ENDPOINT:-}" ]; then
    eval "$(tests/s3/garage-cluster.sh start)"
    STARTED=1
fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/nbdx-bench-s3.XXXXXX")
cleanup() {
    [ -n "${S3_PID:-}" ] && kill -9 "$S3_PID" 2>/dev/null
    rm -rf "$WORK"
    [ "$STARTED" = 1 ] && tests/s3/garage-cluster.sh stop
}
trap cleanup EXIT
SOCK=$WORK/sock
export AWS_DEFAULT_REGION=${NBDX_S3_REGION:-garage} AWS_REGION=${NBDX_S3_REGION:-garage}
say "writing a ${MIB} MiB random source file"
head -c $((MIB << 20)) /dev/urandom >"$WORK/src.img"

# --------------------------------------------------------------- servers --
# start_server KIND PREFIX MODE [PARAMS] (MODE: create | open; PARAMS: more nbdx parameters)
start_server() {
    local kind=$1 prefix=$2 mode=$3
    if [ "$kind" = nbdx ]; then
        local params="object-size=$OBJ${4:+&$4}"
        [ "$mode" = create ] && params="size=${MIB}M&$params"
        s3_serve "$SOCK" "$(s3_source "$prefix" "$params")" "$WORK/server.log" ||
            { tail "$WORK/server.log"; exit 1; }
    else
        rm -f "$SOCK"
        nbdkit -f -U "$SOCK" python bench/nbdkit_s3_shim.py endpoint-url="$NBDX_S3_ENDPOINT" bucket="$NBDX_S3_BUCKET" key="$prefix" \
            size="${MIB}M" object-size="$OBJ" >"$WORK/server.log" 2>&1 &
        S3_PID=$!
        local deadline=$((SECONDS + 60))
        until [ -S "$SOCK" ]; do
            kill -0 "$S3_PID" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ] || { tail "$WORK/server.log"; exit 1; }
            sleep 0.05
        done
    fi
}

stop_server() { s3_stop || true; S3_PID=; }

# Seconds that COMMAND takes.
timed() {
    local t0 t1
    t0=$(date +%s.%N)
    "$@" >/dev/null || { say "failed: $*"; return 1; }
    t1=$(date +%s.%N)
    calc "$t1 - $t0"
}

calc() { awk "BEGIN { print $* }"; }

median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

declare -A RESULT
bench_server() {
    local kind=$1 run prefix t raw ins=() outs=() rands=() smalls=() puts=() gets=()
    for run in $(seq "$RUNS"); do
        prefix=nbdx-bench/$kind-$(date +%s%N)
        start_server "$kind" "$prefix" create
        t=$(timed nbdcopy --flush --request-size="$REQUEST" "$WORK/src.img" "nbd+unix:///?socket=$SOCK") || exit 1
        stop_server
        ins+=("$(calc "$MIB / $t")")
        start_server "$kind" "$prefix" open
        t=$(timed nbdcopy --request-size="$REQUEST" "nbd+unix:///?socket=$SOCK" null:) || exit 1
        stop_server
        outs+=("$(calc "$MIB / $t")")
        if [ "$kind" = nbdx ]; then
            # The store's own rate, measured next to each run: the machine's load varies.
            raw=$(target/release/examples/s3_rawbench "$NBDX_S3_ENDPOINT" "$NBDX_S3_BUCKET" "$AWS_REGION" "$MIB" 4 32)
            puts+=("$(sed 's/.*put_mib_s=\([0-9.]*\).*/\1/' <<<"$raw")")
            gets+=("$(sed 's/.*get_mib_s=\([0-9.]*\).*/\1/' <<<"$raw")")
        fi
        start_server "$kind" "$prefix" open
        t=$($PY bench/s3_randread.py "$SOCK" "$RAND_SECONDS" 8) || exit 1
        rands+=("${t#iops=}")
        stop_server
        if [ "$kind" = nbdx ]; then
            # With an 8 MiB cache nearly every read goes to the store (aligned 256 KiB windows).
            start_server "$kind" "$prefix" open cache-size=8M
            t=$($PY bench/s3_randread.py "$SOCK" "$RAND_SECONDS" 8) || exit 1
            smalls+=("${t#iops=}")
            stop_server
        fi
        say "$kind run $run: in $(printf %.1f "${ins[-1]}") MiB/s, out $(printf %.1f "${outs[-1]}") MiB/s," \
            "rand ${rands[-1]} IOPS${raw:+, store $raw}"
    done
    RESULT[$kind-in]=$(printf '%s\n' "${ins[@]}" | median)
    RESULT[$kind-out]=$(printf '%s\n' "${outs[@]}" | median)
    RESULT[$kind-rand]=$(printf '%s\n' "${rands[@]}" | median)
    if [ "$kind" = nbdx ]; then
        RESULT[nbdx-small]=$(printf '%s\n' "${smalls[@]}" | median)
        RESULT[raw-put]=$(printf '%s\n' "${puts[@]}" | median)
        RESULT[raw-get]=$(printf '%s\n' "${gets[@]}" | median)
    fi
    return 0
}

LOAD_START=$(cut -d' ' -f1 /proc/loadavg)
bench_server nbdx
bench_server nbdkit
RAW_PUT=${RESULT[raw-put]}
RAW_GET=${RESULT[raw-get]}

# ---------------------------------------------------------------- report --
f1() { printf %.1f "$1"; }
ratio() { printf %.2f "$(calc "$1 / $2")"; }
mkdir -p "$(dirname "$OUT")"
{
    echo "| S3 on 3-node Garage (RF 3, 127.0.0.1) | nbdx | nbdkit S3 plugin | nbdx / nbdkit | target | store raw |"
    echo "|---|---|---|---|---|---|"
    echo "| nbdcopy in, flushed (MiB/s) | $(f1 "${RESULT[nbdx-in]}") | $(f1 "${RESULT[nbdkit-in]}") |" \
        "$(ratio "${RESULT[nbdx-in]}" "${RESULT[nbdkit-in]}")× | ≥ 1.1× | PUT $(f1 "$RAW_PUT") |"
    echo "| nbdcopy out, fresh server (MiB/s) | $(f1 "${RESULT[nbdx-out]}") | $(f1 "${RESULT[nbdkit-out]}") |" \
        "$(ratio "${RESULT[nbdx-out]}" "${RESULT[nbdkit-out]}")× | ≥ 1.2×, ≥ 90% of raw | GET $(f1 "$RAW_GET")" \
        "(nbdx at $(printf %.0f "$(calc "100 * ${RESULT[nbdx-out]} / $RAW_GET")")%) |"
    echo "| 4 KiB random reads, QD 8 (IOPS) | ${RESULT[nbdx-rand]} | ${RESULT[nbdkit-rand]} |" \
        "$(ratio "${RESULT[nbdx-rand]}" "${RESULT[nbdkit-rand]}")× | ≥ 5× | |"
    echo "| … nbdx with cache-size=8M (store-bound) | ${RESULT[nbdx-small]} | ${RESULT[nbdkit-rand]} |" \
        "$(ratio "${RESULT[nbdx-small]}" "${RESULT[nbdkit-rand]}")× | | |"
    echo
    echo "Medians of $RUNS runs; ${MIB} MiB image, 4 MiB objects, nbdx with its defaults (256 MiB cache," \
        "32 requests in flight, read-ahead 8); nbdcopy --request-size=$REQUEST;" \
        "2 cores shared by the 3 Garage nodes, the server and the client;" \
        "$(nbdkit --version | head -1) (S3 plugin through bench/nbdkit_s3_shim.py), garage $(${NBDX_GARAGE_BIN:-$HOME/.cache/nbdx/garage/bin/garage} --version 2>/dev/null | awk '{print $2}');" \
        "store raw: object_store, 4 MiB objects, 32 in flight, measured after each nbdx run. Measured $(date -u +%Y-%m-%d)," \
        "load average $LOAD_START at the start, $(cut -d' ' -f1 /proc/loadavg) at the end."
} >"$OUT"
cat "$OUT"
