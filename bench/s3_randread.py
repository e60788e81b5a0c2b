#!/usr/bin/python3
"""Random 4 KiB reads at a fixed queue depth against an NBD Unix socket, for bench/s3.sh.

    s3_randread.py SOCKET SECONDS QUEUE_DEPTH [SPAN_BYTES]

Reads 4 KiB-aligned blocks at uniformly random offsets in the first SPAN_BYTES of the export
(default: all of it), keeping QUEUE_DEPTH requests in flight for SECONDS, and prints
`iops=N`. libnbd's strict alignment checks are off so that servers advertising a large
minimum block size (nbdkit's S3 plugin: the object size) get the same 4 KiB requests.
"""

import random
import sys
import time

import nbd

BLOCK = 4096


def main() -> None:
    sock, seconds, depth = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    h = nbd.NBD()
    h.set_strict_mode(0)
    h.connect_unix(sock)
    span = int(sys.argv[4]) if len(sys.argv) > 4 else h.get_size()
    blocks = span // BLOCK
    rng = random.Random(4096)
    state = {"done": 0, "errors": 0, "inflight": 0}

    def completed(err):
        state["inflight"] -= 1
        if err.value != 0:
            state["errors"] += 1
        else:
            state["done"] += 1
        return 1  # auto-retire the command

    start = time.monotonic()
    deadline = start + seconds
    while True:
        now = time.monotonic()
        while now < deadline and state["inflight"] < depth:
            h.aio_pread(nbd.Buffer(BLOCK), rng.randrange(blocks) * BLOCK, completion=completed)
            state["inflight"] += 1
        if state["inflight"] == 0:
            break
        h.poll(-1)
    elapsed = time.monotonic() - start
    h.shutdown()
    if state["errors"]:
        sys.exit(f"{state['errors']} reads failed")
    print(f"iops={state['done'] / elapsed:.0f}")


if __name__ == "__main__":
    main()
