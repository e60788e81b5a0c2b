#!/usr/bin/env bash
# scripts/vm-test.sh: run the kernel tests (tests that drive /dev/nbdX) as root under a
# kernel that has the nbd driver.
#
# 1. Selects test targets of the workspace by name (NBDX_VM_TESTS, an extended regex
#    matched against cargo's target name: the crate name for unit tests, the file name
#    for tests/*.rs). None selected: SKIP (exit 77), with the reason.
# 2. Builds them, and the workspace's binaries (nbdx), as static executables:
#    RUSTFLAGS='-C target-feature=+crt-static' cargo test --release
#    --target x86_64-unknown-linux-gnu --no-run (output in target/x86_64-unknown-linux-gnu,
#    so normal builds are not disturbed).
# 3. Runs each selected executable with NBDX_VM_TEST_ARGS, with NBDX_BIN pointing to the
#    static nbdx: natively when this kernel has nbd (/sys/module/nbd, or `modprobe nbd`
#    works as root), else in a VM with run-in-vm (found at ../shared/vm/run-in-vm from
#    the repository, /work/shared/vm/run-in-vm, or the vendored scripts/vm/run-in-vm).
#    Neither possible: SKIP. Note: run-in-vm replaces qemu-utils 10 by bookworm's 7.2.
#
# Exit status: 0 all selected tests passed; 1 a failure (or a selected executable ran no
# test); 77 skipped. With VM_SKIP_REASON_FILE set, a skip writes its reason there.
#
# Environment (defaults in brackets):
#   NBDX_VM_TESTS       regex selecting test targets [kernel]
#   NBDX_VM_TEST_ARGS   arguments for each test executable, split on spaces [--test-threads=1]
#   NBDX_VM_MODE        auto, native or vm [auto]
#   NBDX_VM_TIMEOUT     seconds for the VM run, boot included [480]
#   RUN_IN_VM_MODULES   kernel modules in the VM [nbd ext4 crc32c_generic]
#   and the other RUN_IN_VM_* variables of run-in-vm.
set -euo pipefail
shopt -s inherit_errexit

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

readonly PY=/usr/bin/python3
readonly TARGET=x86_64-unknown-linux-gnu
# Which test targets are kernel tests. Kernel-test authors: adjust here (or set the
# variables) when your tests live elsewhere, e.g. NBDX_VM_TESTS='^nbdx_netlink$' with
# NBDX_VM_TEST_ARGS='kernel:: --include-ignored --test-threads=1'.
VM_TESTS=${NBDX_VM_TESTS:-kernel}
VM_TEST_ARGS=${NBDX_VM_TEST_ARGS:---test-threads=1}
MODE=${NBDX_VM_MODE:-auto}
VM_TIMEOUT=${NBDX_VM_TIMEOUT:-480}
export RUN_IN_VM_MODULES=${RUN_IN_VM_MODULES:-nbd ext4 crc32c_generic}
STAGE=$ROOT/target/vm-tests

say() { printf 'vm-test: %s\n' "$*"; }

skip() {
    printf '\n'
    say "################################################################"
    say "SKIP: $*"
    say "################################################################"
    [ -z "${VM_SKIP_REASON_FILE:-}" ] || printf '%s\n' "$*" >"$VM_SKIP_REASON_FILE"
    exit 77
}

fail() { say "FAIL: $*"; exit 1; }

# ------------------------------------------------------------- selection --
# Prints "package kind name" for each selected test target, and "- all NAMES" with the
# names of every test target.
select_targets() {
    cargo metadata --no-deps --format-version 1 | "$PY" -c '
import json, re, sys
rx = re.compile(sys.argv[1])
meta = json.load(sys.stdin)
members = set(meta["workspace_members"])
names = []
for pkg in meta["packages"]:
    if pkg["id"] not in members:
        continue
    for t in pkg["targets"]:
        kind = next((k for k in t["kind"] if k in ("lib", "bin", "test")), None)
        if kind is None or (kind != "test" and not t.get("test", True)):
            continue
        names.append(t["name"])
        if rx.search(t["name"]):
            print(pkg["name"], kind, t["name"])
print("- all", " ".join(sorted(set(names))))
' "$VM_TESTS"
}

# -------------------------------------------------------------- runners --
find_run_in_vm() {
    local c
    for c in "$ROOT/../shared/vm/run-in-vm" /work/shared/vm/run-in-vm "$ROOT/scripts/vm/run-in-vm"; do
        if [ -f "$c" ]; then realpath "$c"; return 0; fi
    done
    return 1
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null; then sudo -n "$@"
    else return 1; fi
}

choose_mode() {
    case $MODE in
        native|vm) echo "$MODE"; return 0 ;;
        auto) ;;
        *) fail "NBDX_VM_MODE must be auto, native or vm (not '$MODE')" ;;
    esac
    if [ -d /sys/module/nbd ] || as_root modprobe nbd >/dev/null 2>&1; then
        echo native
    else
        echo vm
    fi
}

# ---------------------------------------------------------------- build --
# Builds the selected targets statically; prints "package--name executable" lines.
build_tests() {
    local args=() pkg kind name
    while read -r pkg kind name; do
        case $kind in
            lib) args+=(-p "$pkg" --lib) ;;
            bin) args+=(-p "$pkg" --bin "$name") ;;
            test) args+=(-p "$pkg" --test "$name") ;;
        esac
    done <<<"$1"
    RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
        cargo test --release --target "$TARGET" --no-run --message-format=json "${args[@]}" \
        | "$PY" -c '
import json, re, sys
rx = re.compile(sys.argv[1])
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-message" and m["message"].get("level") == "error":
        print(m["message"].get("rendered", ""), file=sys.stderr)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"] \
            and rx.search(m["target"]["name"]):
        # package_id: "path+file:///dir/nbdx-proto#0.1.0" or ".../dir#name@0.1.0"
        where, _, version = m["package_id"].partition("#")
        pkg = version.split("@")[0] if "@" in version else where.rstrip("/").split("/")[-1]
        print(pkg + "--" + m["target"]["name"], m["executable"])
' "$VM_TESTS"
}

build_nbdx() {
    RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
        cargo build --release --target "$TARGET" --workspace --bins
}

is_static() {
    case $(LC_ALL=C ldd "$1" 2>&1 || true) in
        *'not a dynamic'*|*'statically linked'*) return 0 ;;
        *) return 1 ;;
    esac
}

# The script that runs in the guest (busybox sh) or natively.
write_runner() {
    local quoted=${VM_TEST_ARGS//\'/\'\\\'\'}
    cat >"$STAGE/run-tests.sh" <<EOF
#!/bin/sh
# Generated by scripts/vm-test.sh: runs every kernel test executable listed in tests.list.
cd "\$(dirname "\$0")"
ARGS='$quoted'
EOF
    cat >>"$STAGE/run-tests.sh" <<'EOF'
[ -x ./nbdx ] && export NBDX_BIN="$PWD/nbdx"
export RUST_BACKTRACE=1
out=$(mktemp) || exit 1
total=0 failed_bins=""
for t in $(cat tests.list); do
    echo "==== vm-test: ./$t $ARGS"
    # shellcheck disable=SC2086 # ARGS is split on purpose
    { ./"$t" $ARGS 2>&1; echo "@@rc $?"; } | tee "$out"
    rc=$(sed -n 's/^@@rc //p' "$out")
    ran=$(sed -n 's/^test result: [a-zA-Z]*\. \([0-9]*\) passed; \([0-9]*\) failed.*/\1 \2/p' "$out" \
          | awk '{ n += $1 + $2 } END { print n + 0 }')
    total=$((total + ran))
    if [ "$rc" != 0 ]; then
        failed_bins="$failed_bins $t(exit $rc)"
    elif [ "$ran" = 0 ]; then
        failed_bins="$failed_bins $t(ran no test)"
    fi
done
rm -f "$out"
echo "==== vm-test: $total tests run"
if [ -n "$failed_bins" ]; then
    echo "vm-test: FAIL:$failed_bins"
    exit 1
fi
echo "vm-test: all selected executables passed"
EOF
    chmod 755 "$STAGE/run-tests.sh"
}

# ----------------------------------------------------------------- main --
main() {
    local t0=$SECONDS selected mode runner="" built name exe
    [ "$(uname -m)" = x86_64 ] || skip "kernel tests need an x86_64 host (this is $(uname -m))"

    say "selecting test targets matching NBDX_VM_TESTS='$VM_TESTS'"
    selected=$(select_targets)
    local all
    all=$(sed -n 's/^- all //p' <<<"$selected")
    selected=$(grep -v '^- all' <<<"$selected" || true)
    if [ -z "$selected" ]; then
        skip "no kernel tests: no test target matches NBDX_VM_TESTS='$VM_TESTS' (test targets: $all)"
    fi
    say "selected:"$'\n'"$selected"

    mode=$(choose_mode)
    if [ "$mode" = vm ]; then
        runner=$(find_run_in_vm) \
            || skip "this kernel has no nbd driver and no run-in-vm was found (../shared/vm, /work/shared/vm, scripts/vm)"
        as_root true || skip "this kernel has no nbd driver and run-in-vm needs root or sudo"
        say "mode: VM ($runner)"
    else
        as_root true || skip "the nbd driver is here, but kernel tests need root or sudo"
        say "mode: native (this kernel has nbd)"
    fi

    say "building static test executables ($TARGET, crt-static)"
    built=$(build_tests "$selected") || fail "building the kernel tests failed"
    [ -n "$built" ] || fail "cargo built no executable for the selected targets"
    build_nbdx || fail "building the static nbdx failed"

    rm -rf "$STAGE"
    mkdir -p "$STAGE"
    : >"$STAGE/tests.list"
    while read -r name exe; do
        is_static "$exe" || fail "$exe is not statically linked"
        cp "$exe" "$STAGE/$name"
        echo "$name" >>"$STAGE/tests.list"
    done <<<"$built"
    if [ -x "target/$TARGET/release/nbdx" ]; then
        is_static "target/$TARGET/release/nbdx" || fail "target/$TARGET/release/nbdx is not static"
        cp "target/$TARGET/release/nbdx" "$STAGE/nbdx"
    else
        say "note: no nbdx binary in the workspace yet; NBDX_BIN is not set for the tests"
    fi
    write_runner
    say "staged in $STAGE: $(tr '\n' ' ' <"$STAGE/tests.list")"

    local rc=0
    if [ "$mode" = vm ]; then
        say "running in a VM (modules: $RUN_IN_VM_MODULES; timeout ${VM_TIMEOUT}s)"
        bash "$runner" -t "$VM_TIMEOUT" "$STAGE" 'sh ./run-tests.sh' || rc=$?
    else
        as_root sh "$STAGE/run-tests.sh" || rc=$?
    fi
    case $rc in
        0) say "PASS ($((SECONDS - t0))s, $mode)" ;;
        124) fail "the VM run timed out after ${VM_TIMEOUT}s" ;;
        125) fail "run-in-vm could not run the tests: the VM did not come up, or the guest kernel panicked or oopsed (see above)" ;;
        *) fail "kernel tests failed (exit status $rc, $mode)" ;;
    esac
}

main "$@"
