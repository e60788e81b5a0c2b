#!/usr/bin/env bash
# bench/run.sh: the benchmark suite; the one command that reproduces docs/performance.md.
#
#   bench/run.sh                     full run (5 rounds, 1G, fio 5 s) -> docs/performance.md
#   bench/run.sh --quick             smoke test (1 round, 256M, fio 1 s) -> target/bench/performance-quick.md
#
# Options:
#   --quick               one round, short runtimes, small exports (numbers are not conclusive)
#   --out FILE            where the report goes (default docs/performance.md; with --quick
#                         target/bench/performance-quick.md)
#   --rounds N            interleaved rounds (default 5)
#   --seconds S           fio runtime per workload (default 5)
#   --size SIZE           export and copy size (default 1G)
#   --sections LIST       ceilings,servers,copy,scaling,profile (default all)
#   --servers LIST        nbdx,nbdkit,qemu-nbd,nbd-server (default all)
#   --backends LIST       memory,file        --transports LIST   unix,tcp
#   --flamegraph [DIR]    also write flamegraph SVGs (default DIR docs/flamegraphs; installs
#                         inferno with `cargo install` when missing)
#   --with-others         first run the per-issue scripts bench/{copy,tls,kernel,s3}.sh that
#                         exist (each refreshes its bench/results/NAME.md, which the report
#                         includes in any case)
#   --time-limit SECONDS  upper bound for the measuring program (default 14400)
#   --no-install          do not apt-get install missing tools (also NBDX_BENCH_NO_INSTALL=1)
#   --no-build            use the existing target/release/nbdx and ceiling binaries
#   --render-only         re-render the report from target/bench/results.json (after editing
#                         bench/notes.md); measures nothing
#   -h, --help            this text
# Other options are passed on to bench/bench.py (see its --help).
#
# Before measuring it installs missing tools with apt (non-interactive, as root or via sudo;
# `apt-get update` only if an install fails), builds `cargo build --release` and the ceiling
# tool (bench/ceiling, its own cargo project), and warns when the machine is busy. Scratch
# files live in one directory under /dev/shm, removed at the end; servers are stopped on any
# exit, including Ctrl-C. Exit status: 0, or 1 if any measurement failed (see the report's
# "Errors" section), 2 for bad usage.
set -euo pipefail
shopt -s inherit_errexit

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
readonly PY=/usr/bin/python3
readonly APT_PACKAGES=(nbdkit libnbd-bin qemu-utils nbd-server fio linux-perf python3)
readonly COMMANDS=(nbdkit nbdcopy nbdinfo qemu-img qemu-nbd nbd-server fio perf)
readonly LIMIT_BUILD=1800

say() { printf 'run.sh: %s\n' "$*" >&2; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

# ------------------------------------------------------------------ options --
QUICK=0 OUT="" NO_INSTALL=${NBDX_BENCH_NO_INSTALL:-0} NO_BUILD=0 RENDER_ONLY=0 WITH_OTHERS=0
FLAMEGRAPH="" TIME_LIMIT=14400
PASS=()
ORIG_ARGS=("$@")
while [ $# -gt 0 ]; do
    case $1 in
        -h|--help) usage; exit 0 ;;
        --quick) QUICK=1; PASS+=(--quick) ;;
        --out) [ $# -ge 2 ] || { say "--out needs a file"; exit 2; }; OUT=$2; shift ;;
        --out=*) OUT=${1#*=} ;;
        --no-install) NO_INSTALL=1 ;;
        --no-build) NO_BUILD=1 ;;
        --render-only) RENDER_ONLY=1 ;;
        --with-others) WITH_OTHERS=1 ;;
        --time-limit) [ $# -ge 2 ] || { say "--time-limit needs seconds"; exit 2; }; TIME_LIMIT=$2; shift ;;
        --flamegraph)
            if [ $# -ge 2 ] && [[ $2 != -* ]]; then FLAMEGRAPH=$2; shift; else FLAMEGRAPH=docs/flamegraphs; fi ;;
        --flamegraph=*) FLAMEGRAPH=${1#*=} ;;
        --rounds|--seconds|--size|--sections|--servers|--backends|--transports|--conns|--request-sizes)
            [ $# -ge 2 ] || { say "$1 needs a value"; exit 2; }; PASS+=("$1" "$2"); shift ;;
        *) PASS+=("$1") ;;
    esac
    shift
done
[[ $TIME_LIMIT =~ ^[0-9]+$ ]] || { say "--time-limit needs a number of seconds"; exit 2; }
if [ -z "$OUT" ]; then
    if [ "$QUICK" = 1 ]; then OUT=target/bench/performance-quick.md; else OUT=docs/performance.md; fi
fi

# --------------------------------------------------------------- clean-up --
WORK="" CHILD=""
cleanup() {
    local f pid
    if [ -n "$CHILD" ]; then kill -TERM "$CHILD" 2>/dev/null || true; fi
    # Servers the measuring program could not stop itself (it died): listed by pid.
    if [ -n "$WORK" ] && [ -d "$WORK/pids" ]; then
        for f in "$WORK"/pids/*; do
            [ -e "$f" ] || continue
            pid=${f##*/}
            [[ $pid =~ ^[0-9]+$ ]] || continue
            say "stopping leftover server $pid"
            kill -TERM -- "-$pid" 2>/dev/null || true
            kill -TERM "$pid" 2>/dev/null || true
        done
        sleep 1
        for f in "$WORK"/pids/*; do
            [ -e "$f" ] || continue
            pid=${f##*/}
            [[ $pid =~ ^[0-9]+$ ]] || continue
            kill -KILL -- "-$pid" 2>/dev/null || true
            kill -KILL "$pid" 2>/dev/null || true
        done
    fi
    if [ -n "$WORK" ]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT
on_signal() {
    say "interrupted; stopping"
    if [ -n "$CHILD" ]; then kill -TERM "$CHILD" 2>/dev/null || true; fi
}
trap on_signal INT TERM HUP

# Runs a command in the background (so that signals reach this script) and waits for it.
run_child() {
    local rc
    "$@" &
    CHILD=$!
    while :; do
        rc=0
        wait "$CHILD" || rc=$?
        # Above 128: a trapped signal interrupted `wait`, or the child died of a signal. In the
        # first case it is still ending (bounded by `timeout`): wait for it again.
        if [ "$rc" -gt 128 ] && kill -0 "$CHILD" 2>/dev/null; then continue; fi
        break
    done
    CHILD=""
    return "$rc"
}

# --------------------------------------------------------------------- deps --
as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null; then sudo -n "$@"
    else say "need root (or sudo) for: $*"; return 1; fi
}

package_installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = installed ]
}

install_tools() {
    local missing=() pkg cmd opts=(-y -q -o DPkg::Lock::Timeout=300 --no-install-recommends)
    if [ "$NO_INSTALL" != 1 ] && command -v dpkg-query >/dev/null; then
        for pkg in "${APT_PACKAGES[@]}"; do package_installed "$pkg" || missing+=("$pkg"); done
        if [ ${#missing[@]} -gt 0 ]; then
            say "apt-get install ${missing[*]}"
            if ! as_root env DEBIAN_FRONTEND=noninteractive timeout 900 apt-get "${opts[@]}" install "${missing[@]}"; then
                say "install failed; apt-get update and retry"
                as_root env DEBIAN_FRONTEND=noninteractive timeout 900 apt-get -q -o DPkg::Lock::Timeout=300 update || true
                as_root env DEBIAN_FRONTEND=noninteractive timeout 900 apt-get "${opts[@]}" install "${missing[@]}" \
                    || say "WARNING: apt-get install ${missing[*]} failed; sections needing them will report errors"
            fi
        fi
    fi
    missing=()
    for cmd in "${COMMANDS[@]}"; do command -v "$cmd" >/dev/null || missing+=("$cmd"); done
    if [ ${#missing[@]} -gt 0 ]; then
        say "WARNING: missing tools: ${missing[*]} (their parts of the report will show errors or be skipped)"
    fi
    if [ -n "$FLAMEGRAPH" ] && ! command -v inferno-flamegraph >/dev/null; then
        if [ -x "$HOME/.cargo/bin/inferno-flamegraph" ]; then
            PATH=$HOME/.cargo/bin:$PATH
        else
            say "cargo install inferno --locked (for flamegraphs)"
            timeout 1800 cargo install --locked inferno || say "WARNING: inferno did not install: no flamegraphs"
        fi
    fi
}

# -------------------------------------------------------------------- build --
build() {
    say "cargo build --release"
    timeout "$LIMIT_BUILD" cargo build --release --workspace
    say "cargo build --release (bench/ceiling)"
    timeout "$LIMIT_BUILD" cargo build --release --manifest-path bench/ceiling/Cargo.toml \
        --target-dir target/bench-ceiling
}

# -------------------------------------------------------------- other scripts --
run_others() {
    local name script
    for name in copy tls kernel s3; do
        script=bench/$name.sh
        [ -f "$script" ] || { say "no $script: skipped"; continue; }
        say "running $script (results into bench/results/$name.md)"
        run_child timeout -k 60 3600 bash "$script" || say "WARNING: $script failed (exit $?); its old results stay"
    done
}

# --------------------------------------------------------------------- main --
main() {
    local cmdline="bench/run.sh${ORIG_ARGS[*]:+ ${ORIG_ARGS[*]}}"
    if [ "$RENDER_ONLY" = 1 ]; then
        exec "$PY" bench/bench.py --render-only target/bench/results.json --out "$OUT" "${PASS[@]}"
    fi
    "$PY" bench/bench.py --check-args "${PASS[@]}" || exit 2
    install_tools
    if [ "$NO_BUILD" != 1 ]; then build; fi
    [ -x target/release/nbdx ] || { say "target/release/nbdx is missing (cargo build --release)"; exit 1; }
    if [ "$WITH_OTHERS" = 1 ]; then run_others; fi
    WORK=$(mktemp -d /dev/shm/nbdx-bench.XXXXXX)
    local fg=()
    if [ -n "$FLAMEGRAPH" ]; then fg=(--flamegraph "$FLAMEGRAPH"); fi
    say "load average before: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs"
    local rc=0
    run_child timeout -k 60 "$TIME_LIMIT" "$PY" bench/bench.py --workdir "$WORK" --out "$OUT" \
        --command "$cmdline" "${fg[@]}" "${PASS[@]}" || rc=$?
    say "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
    [ "$rc" -ne 124 ] || say "TIMEOUT: the measuring program ran longer than ${TIME_LIMIT}s"
    return "$rc"
}

main
