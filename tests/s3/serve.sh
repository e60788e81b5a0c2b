# shellcheck shell=bash
# tests/s3/serve.sh: sourced helpers to run an NBD server on an s3:// source over a Unix socket.
#
# The server is target/release/nbdx (`nbdx serve -U SOCKET SOURCE`), or $NBDX_BIN; when that
# is missing or built without s3:// sources, the s3_serve example (target/release/examples/s3_serve SOCKET SOURCE), which
# `cargo build --release -p nbdx --features s3 --example s3_serve` builds.
#
#   s3_server_command            sets S3_SERVER (array) or returns 1 with a reason in S3_SKIP
#   s3_serve SOCKET SOURCE LOG   starts it in the background, sets S3_PID, waits for the socket
#   s3_stop                      SIGTERM and wait (bounded); returns the server's exit status
#   s3_source PREFIX [PARAMS]    an s3:// source on the test cluster

S3_SERVE_TIMEOUT=${S3_SERVE_TIMEOUT:-60}

s3_server_command() {
    local root nbdx example
    root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
    nbdx=${NBDX_BIN:-$root/target/release/nbdx}
    example=$root/target/release/examples/s3_serve
    if [ -x "$nbdx" ] && s3_cli_has_s3 "$nbdx"; then
        S3_SERVER=("$nbdx" serve -U)
    elif [ -x "$example" ]; then
        S3_SERVER=("$example")
    else
        # shellcheck disable=SC2034 # read by the scripts that source this file
        S3_SKIP="no $nbdx with s3:// sources (the CLI's feature s3) and no $example"
        return 1
    fi
}

# Whether NBDX accepts s3:// sources (an unreachable endpoint fails at once either way).
s3_cli_has_s3() {
    local out
    out=$(timeout 30 "$1" serve -U "${TMPDIR:-/tmp}/nbdx-s3-probe.$$" \
        "s3://probe/p?endpoint=http://127.0.0.1:9&retry-timeout=0" 2>&1 </dev/null) && return 1
    ! grep -qi "unknown source\|s3://.*not supported" <<<"$out"
}

s3_source() {
    local prefix=$1 params=${2:-}
    echo "s3://$NBDX_S3_BUCKET/$prefix?endpoint=$NBDX_S3_ENDPOINT&region=${NBDX_S3_REGION:-garage}${params:+&$params}"
}

# Starts the server; returns 1 if it exits before its socket appears.
s3_serve() {
    local socket=$1 source=$2 log=$3
    rm -f "$socket"
    "${S3_SERVER[@]}" "$socket" "$source" >"$log" 2>&1 &
    S3_PID=$!
    local deadline=$((SECONDS + S3_SERVE_TIMEOUT))
    until [ -S "$socket" ]; do
        if ! kill -0 "$S3_PID" 2>/dev/null; then
            wait "$S3_PID" || true
            return 1
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "server did not listen on $socket within ${S3_SERVE_TIMEOUT}s" >&2
            kill -9 "$S3_PID" 2>/dev/null || true
            return 1
        fi
        sleep 0.05
    done
}

s3_stop() {
    local pid=$S3_PID rc=0
    kill -TERM "$pid" 2>/dev/null || return 0
    local deadline=$((SECONDS + S3_SERVE_TIMEOUT))
    while kill -0 "$pid" 2>/dev/null; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "server $pid ignored SIGTERM for ${S3_SERVE_TIMEOUT}s" >&2
            kill -9 "$pid" 2>/dev/null || true
        fi
        sleep 0.05
    done
    wait "$pid" || rc=$?
    return "$rc"
}
