#!/usr/bin/env bash
# scripts/test.sh: run every test of nbdx (or only the named suites) on Debian bookworm.
#
#   scripts/test.sh                  all suites
#   scripts/test.sh interop          one suite (several may be named)
#
# Suites, in the order they run:
#   lint     cargo fmt --check; cargo clippy --all-targets -D warnings
#   unit     cargo test --workspace --release
#   interop  tests/interop/run.py: real clients (libnbd, qemu, nbdcopy) against
#            target/release/nbdx; NBDX_INTEROP_SERVER=nbdkit runs it against nbdkit
#   hostile  tests/hostile/run.py: malformed and abusive clients, lame-duck shutdown and
#            kill -9 crash consistency against target/release/nbdx (docs/security.md)
#   vm       scripts/vm-test.sh: kernel tests under a VM (last: it downgrades qemu-utils)
#
# Before the suites it installs missing peers with apt (non-interactive, as root or via
# sudo; `apt-get update` only if an install fails) and builds with
# `cargo build --release`. Every suite ends with PASS, FAIL or SKIP and the reason; the
# exit status is non-zero if any step failed.
#
# Environment: NBDX_TEST_NO_INSTALL=1 skips the apt step; NBDX_INTEROP_SERVER,
# NBDX_INTEROP_SEED, NBDX_HOSTILE_SEED, NBDX_VM_* are passed on (see tests/interop/run.py, scripts/vm-test.sh).
set -euo pipefail
shopt -s inherit_errexit

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

# Debian's python3-libnbd belongs to the system python; another python3 may come first on PATH.
readonly PY=/usr/bin/python3
readonly ALL_SUITES=(lint unit interop hostile vm)
# Debian packages the suites use, and a command (or python module) that proves each is there
# (gnutls-bin: certtool and psktool make the TLS cases' credentials; libssl-dev and
# pkg-config build nbdx's TLS-PSK support, which uses OpenSSL).
readonly APT_PACKAGES=(nbdkit libnbd-bin python3-libnbd qemu-utils nbd-server nbd-client python3 strace gnutls-bin
    libssl-dev pkg-config)
readonly COMMANDS=(nbdkit nbdinfo nbdcopy nbdsh qemu-img qemu-io qemu-nbd nbd-server nbd-client strace certtool psktool)
# Time limits (seconds) so that a hang cannot eat CI's 90 minutes.
readonly LIMIT_BUILD=1800 LIMIT_LINT=900 LIMIT_UNIT=1200 LIMIT_INTEROP=900 LIMIT_HOSTILE=600 LIMIT_VM=900

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}

# ------------------------------------------------------------------ results --
RESULT_NAMES=()
RESULT_STATUS=()
RESULT_NOTES=()
record() {   # NAME STATUS [NOTE]
    RESULT_NAMES+=("$1")
    RESULT_STATUS+=("$2")
    RESULT_NOTES+=("${3:-}")
    printf '\n---- %s: %s%s\n' "$1" "$2" "${3:+ ($3)}"
}

section() { printf '\n==== %s ====\n' "$*"; }

# Runs a command with a time limit; prints how long it took. Returns its status.
timed() {
    local limit=$1; shift
    local t0=$SECONDS rc=0 fg=()
    # On a terminal, let Ctrl-C reach the command (children are then not timed out).
    [ -t 0 ] && fg=(--foreground)
    timeout "${fg[@]}" -k 30 "$limit" "$@" || rc=$?
    if [ "$rc" -eq 124 ]; then
        echo "test.sh: TIMEOUT: '$*' ran longer than ${limit}s"
    fi
    echo "test.sh: '$*' took $((SECONDS - t0))s, exit status $rc"
    return "$rc"
}

# --------------------------------------------------------------------- deps --
as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null; then sudo -n "$@"
    else echo "test.sh: need root (or sudo) for: $*" >&2; return 1; fi
}

package_installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = installed ]
}

apt_install() {
    local opts=(-y -q -o DPkg::Lock::Timeout=300 --no-install-recommends)
    echo "test.sh: apt-get install $*"
    if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get "${opts[@]}" install "$@"; then
        echo "test.sh: install failed; apt-get update and retry"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=300 update
        as_root env DEBIAN_FRONTEND=noninteractive apt-get "${opts[@]}" install "$@"
    fi
}

install_peers() {
    section "deps: ${APT_PACKAGES[*]}"
    local missing=() pkg cmd
    if [ "${NBDX_TEST_NO_INSTALL:-0}" != 1 ]; then
        for pkg in "${APT_PACKAGES[@]}"; do
            package_installed "$pkg" || missing+=("$pkg")
        done
        if [ ${#missing[@]} -gt 0 ] && ! apt_install "${missing[@]}"; then
            record deps FAIL "apt-get install ${missing[*]} failed"
            return 0
        fi
    fi
    missing=()
    for cmd in "${COMMANDS[@]}"; do
        command -v "$cmd" >/dev/null || missing+=("$cmd")
    done
    "$PY" -c 'import nbd' 2>/dev/null || missing+=("python3-libnbd for $PY")
    if [ ${#missing[@]} -gt 0 ]; then
        record deps FAIL "missing: ${missing[*]}"
    else
        record deps PASS "$(qemu-img --version | head -n1); nbdkit $(nbdkit --version | cut -d' ' -f2); libnbd $(nbdinfo --version | head -n1 | awk '{print $NF}')"
    fi
}

# -------------------------------------------------------------------- build --
build() {
    section "build: cargo build --release"
    if timed "$LIMIT_BUILD" cargo build --release --workspace; then
        record build PASS
    else
        record build FAIL "cargo build --release failed"
    fi
}

# ------------------------------------------------------------------- suites --
suite_lint() {
    section "lint: cargo fmt --check, cargo clippy"
    local failed=()
    timed 120 cargo fmt --all -- --check || failed+=("cargo fmt --check")
    timed "$LIMIT_LINT" cargo clippy --workspace --all-targets --release -- -D warnings \
        || failed+=("cargo clippy")
    if [ ${#failed[@]} -gt 0 ]; then record lint FAIL "${failed[*]}"; else record lint PASS; fi
}

suite_unit() {
    section "unit: cargo test --workspace --release"
    if timed "$LIMIT_UNIT" cargo test --workspace --release; then
        record unit PASS
    else
        record unit FAIL "cargo test failed"
    fi
}

suite_interop() {
    local server=${NBDX_INTEROP_SERVER:-nbdx} rc=0
    section "interop: tests/interop against $server"
    timed "$LIMIT_INTEROP" "$PY" tests/interop/run.py --server "$server" || rc=$?
    case $rc in
        0) record interop PASS "server $server" ;;
        2) record interop FAIL "the suite could not start (server $server); see above" ;;
        *) record interop FAIL "server $server; failed cases are listed above" ;;
    esac
}

suite_hostile() {
    section "hostile: tests/hostile against target/release/nbdx"
    local rc=0
    timed "$LIMIT_HOSTILE" "$PY" tests/hostile/run.py || rc=$?
    case $rc in
        0) record hostile PASS ;;
        2) record hostile FAIL "the suite could not start; see above" ;;
        *) record hostile FAIL "failed cases are listed above" ;;
    esac
}

suite_vm() {
    section "vm: scripts/vm-test.sh"
    local rc=0
    timed "$LIMIT_VM" scripts/vm-test.sh || rc=$?
    case $rc in
        0) record vm PASS ;;
        77) record vm SKIP "$(cat "${VM_SKIP_REASON_FILE}" 2>/dev/null || echo 'see above')" ;;
        *) record vm FAIL "scripts/vm-test.sh exit status $rc" ;;
    esac
}

# --------------------------------------------------------------------- main --
main() {
    local suites=() s
    for s in "$@"; do
        case $s in
            -h|--help) usage; exit 0 ;;
            all) suites+=("${ALL_SUITES[@]}") ;;
            lint|unit|interop|hostile|vm) suites+=("$s") ;;
            *) echo "test.sh: unknown suite '$s' (suites: ${ALL_SUITES[*]})" >&2; exit 2 ;;
        esac
    done
    [ ${#suites[@]} -gt 0 ] || suites=("${ALL_SUITES[@]}")
    local selected=" ${suites[*]} "
    local t0=$SECONDS

    install_peers
    # The interop suite needs the binary only when it tests nbdx; the hostile suite always does.
    if [[ $selected == *" unit "* || $selected == *" lint "* || $selected == *" hostile "* ]] \
        || { [[ $selected == *" interop "* ]] && [ "${NBDX_INTEROP_SERVER:-nbdx}" = nbdx ]; }; then
        build
    fi
    VM_SKIP_REASON_FILE=$(mktemp)
    export VM_SKIP_REASON_FILE
    trap 'rm -f "$VM_SKIP_REASON_FILE"' EXIT
    # Fixed order: the VM suite must come last (it replaces qemu-utils 10 by 7.2).
    for s in "${ALL_SUITES[@]}"; do
        if [[ $selected == *" $s "* ]]; then "suite_$s"; fi
    done

    section "summary ($((SECONDS - t0))s)"
    local i passed=0 nfailed=0 skipped=0
    for i in "${!RESULT_NAMES[@]}"; do
        printf '  %-8s %-4s %s\n' "${RESULT_NAMES[$i]}" "${RESULT_STATUS[$i]}" "${RESULT_NOTES[$i]}"
        case ${RESULT_STATUS[$i]} in
            PASS) passed=$((passed + 1)) ;;
            SKIP) skipped=$((skipped + 1)) ;;
            *) nfailed=$((nfailed + 1)) ;;
        esac
    done
    echo "steps: $passed passed, $nfailed failed, $skipped skipped"
    [ "$nfailed" -eq 0 ]
}

main "$@"
