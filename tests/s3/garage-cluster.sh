#!/usr/bin/env bash
# tests/s3/garage-cluster.sh: a local 3-node Garage cluster (replication factor 3) on 127.0.0.1
# for nbdx's S3 tests and benchmark.
#
#   garage-cluster.sh start         start 3 nodes, connect them, apply a layout, create a key
#                                   and a bucket, wait until S3 answers, print the env lines
#   garage-cluster.sh env           print the env lines of the running cluster:
#                                   export AWS_ACCESS_KEY_ID=… AWS_SECRET_ACCESS_KEY=…
#                                   NBDX_S3_ENDPOINT=… NBDX_S3_BUCKET=… NBDX_S3_REGION=…
#   garage-cluster.sh stop          kill the nodes and remove their directories
#   garage-cluster.sh kill-node N   kill -9 node N (1-3); the S3 endpoint is node 1's
#   garage-cluster.sh start-node N  start node N again (after kill-node)
#
# Use as: eval "$(tests/s3/garage-cluster.sh start)".
#
# The garage binary is $NBDX_GARAGE_BIN, else ~/.cache/nbdx/garage/bin/garage; when missing it
# is built once with `cargo install garage --locked` into that cache (about 9 minutes on 2 cores).
# Environment: NBDX_GARAGE_DIR (state, default ${TMPDIR:-/tmp}/nbdx-garage), NBDX_GARAGE_PORT
# (first port, default 39100; node N uses PORT+10N for S3, +1 for RPC, +3 for admin),
# NBDX_GARAGE_VERSION (version to build, default 2.5.0), NBDX_GARAGE_TIMEOUT (seconds to wait
# for readiness, default 60).
set -euo pipefail

readonly CACHE=${NBDX_GARAGE_CACHE:-$HOME/.cache/nbdx/garage}
readonly GARAGE=${NBDX_GARAGE_BIN:-$CACHE/bin/garage}
readonly VERSION=${NBDX_GARAGE_VERSION:-2.5.0}
readonly DIR=${NBDX_GARAGE_DIR:-${TMPDIR:-/tmp}/nbdx-garage}
readonly PORT=${NBDX_GARAGE_PORT:-39100}
readonly TIMEOUT=${NBDX_GARAGE_TIMEOUT:-60}
readonly NODES=(1 2 3)
readonly BUCKET=nbdx-test REGION=garage

say() { echo "garage-cluster: $*" >&2; }
die() { say "$*"; exit 1; }

s3_port() { echo $((PORT + 10 * $1)); }
rpc_port() { echo $((PORT + 10 * $1 + 1)); }
conf() { echo "$DIR/node$1/garage.toml"; }
gar() { local n=$1; shift; "$GARAGE" -c "$(conf "$n")" "$@"; }

# Polls COMMAND... until it succeeds or $TIMEOUT seconds pass.
wait_for() {
    local what=$1; shift
    local deadline=$((SECONDS + TIMEOUT))
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || die "timed out after ${TIMEOUT}s waiting for $what"
        sleep 0.2
    done
}

ensure_binary() {
    [ -x "$GARAGE" ] && return 0
    command -v cargo >/dev/null || die "no garage at $GARAGE and no cargo to build it"
    say "building garage $VERSION into $CACHE (cargo install, once; about 9 minutes on 2 cores)"
    cargo install garage --version "$VERSION" --locked --root "$CACHE" >&2
    [ -x "$GARAGE" ] || die "cargo install did not produce $GARAGE"
}

write_config() {
    local n=$1 secret=$2
    mkdir -p "$DIR/node$n/meta" "$DIR/node$n/data"
    cat >"$(conf "$n")" <<EOF
metadata_dir = "$DIR/node$n/meta"
data_dir = "$DIR/node$n/data"
db_engine = "lmdb"
replication_factor = 3
rpc_bind_addr = "127.0.0.1:$(rpc_port "$n")"
rpc_public_addr = "127.0.0.1:$(rpc_port "$n")"
rpc_secret = "$secret"

[s3_api]
s3_region = "$REGION"
api_bind_addr = "127.0.0.1:$(s3_port "$n")"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$((PORT + 10 * n + 3))"
EOF
}

start_node() {
    local n=$1
    "$GARAGE" -c "$(conf "$n")" server >>"$DIR/node$n/log" 2>&1 &
    echo $! >"$DIR/node$n/pid"
    wait_for "node $n to answer" gar "$n" node id -q
}

node_alive() { [ -f "$DIR/node$1/pid" ] && kill -0 "$(cat "$DIR/node$1/pid")" 2>/dev/null; }

s3_ready() {
    # shellcheck disable=SC1091
    . "$DIR/env"
    curl -sf -o /dev/null --aws-sigv4 "aws:amz:$REGION:s3" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
        -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" \
        "$NBDX_S3_ENDPOINT/$BUCKET/?list-type=2&max-keys=1"
}

cmd_start() {
    if node_alive 1 && [ -f "$DIR/env" ]; then
        say "already running in $DIR"
        cmd_env
        return
    fi
    ensure_binary
    command -v curl >/dev/null || die "curl is needed to check S3 readiness"
    rm -rf "$DIR"
    mkdir -p "$DIR"
    local secret ids=() n key
    secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
    for n in "${NODES[@]}"; do
        write_config "$n" "$secret"
        start_node "$n"
        ids+=("$(gar "$n" node id -q 2>/dev/null | cut -d@ -f1)")
    done
    for n in 2 3; do
        wait_for "node 1 to connect to node $n" gar 1 node connect "${ids[n - 1]}@127.0.0.1:$(rpc_port "$n")"
    done
    for n in "${NODES[@]}"; do
        gar 1 layout assign -z dc1 -c 1G "${ids[n - 1]}" >/dev/null
    done
    gar 1 layout apply --version 1 >/dev/null
    key=$(gar 1 key create nbdx-test 2>/dev/null)
    local key_id secret_key
    key_id=$(awk -F': *' '/^Key ID/ {print $2}' <<<"$key")
    secret_key=$(awk -F': *' '/^Secret key/ {print $2}' <<<"$key")
    if [ -z "$key_id" ] || [ -z "$secret_key" ]; then die "could not read the key from: $key"; fi
    wait_for "bucket creation" gar 1 bucket create "$BUCKET"
    gar 1 bucket allow --read --write --owner "$BUCKET" --key nbdx-test >/dev/null
    cat >"$DIR/env" <<EOF
export AWS_ACCESS_KEY_ID=$key_id AWS_SECRET_ACCESS_KEY=$secret_key NBDX_S3_ENDPOINT=http://127.0.0.1:$(s3_port 1) NBDX_S3_BUCKET=$BUCKET NBDX_S3_REGION=$REGION AWS_REGION=$REGION NBDX_GARAGE_DIR=$DIR
EOF
    wait_for "S3 to list the bucket" s3_ready
    say "3 nodes up in $DIR, S3 at http://127.0.0.1:$(s3_port 1)"
    cmd_env
}

cmd_env() {
    [ -f "$DIR/env" ] || die "no cluster in $DIR (run: $0 start)"
    cat "$DIR/env"
}

cmd_stop() {
    local n pid
    for n in "${NODES[@]}"; do
        node_alive "$n" || continue
        pid=$(cat "$DIR/node$n/pid")
        kill "$pid" 2>/dev/null || true
    done
    for n in "${NODES[@]}"; do
        [ -f "$DIR/node$n/pid" ] || continue
        pid=$(cat "$DIR/node$n/pid")
        local deadline=$((SECONDS + 20))
        while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
    rm -rf "$DIR"
    say "stopped"
}

node_arg() {
    case "${1:-}" in 1 | 2 | 3) ;; *) die "node number 1, 2 or 3 expected, got '${1:-}'" ;; esac
}

cmd_kill_node() {
    node_arg "${1:-}"
    node_alive "$1" || die "node $1 is not running"
    local pid
    pid=$(cat "$DIR/node$1/pid")
    kill -9 "$pid"
    local deadline=$((SECONDS + TIMEOUT))
    while kill -0 "$pid" 2>/dev/null; do
        [ "$SECONDS" -lt "$deadline" ] || die "node $1 (pid $pid) survived kill -9"
        sleep 0.05
    done
    say "killed node $1 (pid $pid)"
}

cmd_start_node() {
    node_arg "${1:-}"
    node_alive "$1" && die "node $1 is already running"
    start_node "$1"
    say "started node $1"
}

case "${1:-}" in
start) cmd_start ;;
env) cmd_env ;;
stop) cmd_stop ;;
kill-node) cmd_kill_node "${2:-}" ;;
start-node) cmd_start_node "${2:-}" ;;
*) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
esac
