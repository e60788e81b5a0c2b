#!/usr/bin/env bash
# tests/s3/run.sh: the S3 suite. Starts a 3-node Garage cluster (tests/s3/garage-cluster.sh),
# runs against it
#   1. the Rust integration tests: cargo test --release -p nbdx --features s3
#      --test s3_garage --test s3_garage_safety
#   2. tests/s3/crash.sh: kill -9 of the server after a flush loses nothing (needs
#      target/release/nbdx with s3:// sources, else the s3_serve example; skips loudly)
# and stops the cluster, also on failure. Exit status non-zero if any step failed.
#
# Environment: NBDX_S3_KEEP_CLUSTER=1 leaves the cluster running; everything that
# garage-cluster.sh and crash.sh read is passed on.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
CLUSTER=tests/s3/garage-cluster.sh

stop_cluster() {
    if [ "${NBDX_S3_KEEP_CLUSTER:-0}" != 1 ]; then
        "$CLUSTER" stop || true
    fi
}
trap stop_cluster EXIT

env_lines=$("$CLUSTER" start)
eval "$env_lines"
echo "s3/run.sh: cluster up at $NBDX_S3_ENDPOINT (bucket $NBDX_S3_BUCKET)"

status=0
echo "==== s3: cargo test (Garage, 3 nodes) ===="
cargo test --release -p nbdx --features s3 --test s3_garage --test s3_garage_safety || status=1
echo "==== s3: kill -9 after flush ===="
tests/s3/crash.sh || status=1
exit "$status"
