#!/usr/bin/env bash
# Runs every cargo-fuzz target for a given time each.
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
# Seeds come from fuzz/corpus/<target> (checked in); new inputs go to
# fuzz/work/<target> (ignored). Findings land in fuzz/artifacts/<target>
# and make this script fail. cargo-fuzz needs nightly features: on a stable
# toolchain RUSTC_BOOTSTRAP=1 enables them.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-60}
shift || true
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi
cargo fuzz build -O
status=0
for t in "${targets[@]}"; do
    mkdir -p "work/$t" "corpus/$t"
    start=$(date +%s)
    if cargo fuzz run -O "$t" "work/$t" "corpus/$t" -- -max_total_time="$secs" -print_final_stats=1 \
        >"work/$t.log" 2>&1; then
        runs=$(grep -o 'Done [0-9]* runs' "work/$t.log" | tail -1 || true)
        final=$(grep -o 'cov: [0-9]* ft: [0-9]* corp: [0-9]*' "work/$t.log" | tail -1 || true)
        echo "PASS $t: $(( $(date +%s) - start ))s clean ($runs; $final)"
    else
        echo "FAIL $t: see fuzz/work/$t.log and fuzz/artifacts/$t"
        tail -30 "work/$t.log"
        status=1
    fi
done
exit $status
