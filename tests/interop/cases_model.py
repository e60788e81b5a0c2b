"""A seeded random model test: many requests in flight through libnbd's async API.

Each batch submits BATCH requests (reads, writes, trims, zeroes with FUA/NO_HOLE/
FAST_ZERO flags, flushes, caches) before collecting any reply, so at least 64 are in
flight at once. Requests of one batch never overlap (their order is undefined), so the
expected result of every read is the model (a bytearray) before the batch; after the
batch the model takes the writes, and every range the batch changed is read back and
compared. At the end the whole export is compared, over a fresh connection too.

The model assumes what a sparse memory device does: trimmed ranges read as zeroes.
Reproduce a run with NBDX_INTEROP_SEED=N (the seed is printed).
"""

import errno
import os
import random
import time

import nbd

from runner import case
from servers import Export, memory
from util import KiB, MiB, read_all

SIZE = 64 * MiB
BATCH = 96
BATCHES = 48
MIN_IN_FLIGHT = 64
BATCH_TIMEOUT = 60.0


class Batch:
    """Non-overlapping requests of one batch."""

    def __init__(self, rng, align, maximum, fast_zero, df):
        self.rng, self.align, self.maximum = rng, align, maximum
        self.fast_zero, self.df = fast_zero, df
        self.taken = []  # (start, end) of the ranges used so far
        self.ops = []

    def free_range(self, length):
        for _ in range(50):
            start = self.rng.randrange(0, (SIZE - length) // self.align + 1) * self.align
            end = start + length
            if all(end <= s or start >= e for s, e in self.taken):
                self.taken.append((start, end))
                return start
        return None

    def length(self):
        kind = self.rng.random()
        if kind < 0.5:
            n = self.rng.randint(1, 16 * KiB)
        elif kind < 0.9:
            n = self.rng.randint(16 * KiB, 512 * KiB)
        else:
            n = self.rng.randint(512 * KiB, min(4 * MiB, self.maximum))
        return max(self.align, n // self.align * self.align)

    def add_random(self):
        rng = self.rng
        kind = rng.choices(["read", "write", "zero", "trim", "flush", "cache"],
                           weights=[35, 33, 12, 10, 6, 4])[0]
        if kind == "flush":
            self.ops.append(("flush", 0, 0, 0))
            return
        length = self.length()
        start = self.free_range(length)
        if start is None:
            return
        flags = 0
        if kind in ("write", "zero", "trim") and rng.random() < 0.3:
            flags |= nbd.CMD_FLAG_FUA
        if kind == "zero" and rng.random() < 0.3:
            flags |= nbd.CMD_FLAG_NO_HOLE
        if kind == "zero" and self.fast_zero and rng.random() < 0.2:
            flags |= nbd.CMD_FLAG_FAST_ZERO
        if kind == "read" and self.df and rng.random() < 0.2:
            flags |= nbd.CMD_FLAG_DF
        self.ops.append((kind, start, length, flags))


def submit(h, op, rng):
    """Submits one request; returns (cookie, buffer, payload)."""
    kind, start, length, flags = op
    if kind == "read":
        buf = nbd.Buffer(length)
        if flags & nbd.CMD_FLAG_DF:  # libnbd takes DF only on structured reads
            return h.aio_pread_structured(buf, start, lambda *chunk: 0, flags=flags), buf, None
        return h.aio_pread(buf, start, flags=flags), buf, None
    if kind == "write":
        data = rng.randbytes(length)
        buf = nbd.Buffer.from_bytearray(bytearray(data))  # kept alive until completion
        return h.aio_pwrite(buf, start, flags=flags), buf, data
    if kind == "zero":
        return h.aio_zero(length, start, flags=flags), None, None
    if kind == "trim":
        return h.aio_trim(length, start, flags=flags), None, None
    if kind == "cache":
        return h.aio_cache(length, start), None, None
    return h.aio_flush(), None, None


def wait_all(h, cookies):
    """Polls until every cookie completed; returns {cookie: None or nbd.Error}."""
    results = {}
    pending = set(cookies)
    deadline = time.monotonic() + BATCH_TIMEOUT
    while pending:
        for cookie in list(pending):
            try:
                done = h.aio_command_completed(cookie)
            except nbd.Error as exc:
                results[cookie] = exc
                pending.discard(cookie)
                continue
            if done:
                results[cookie] = None
                pending.discard(cookie)
        if not pending:
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(pending)} requests still in flight after {BATCH_TIMEOUT}s")
        h.poll(1000)
    return results


@case(timeout=300)
def random_requests_with_64_in_flight_match_an_in_memory_model(ctx):
    seed = int(os.environ.get("NBDX_INTEROP_SEED") or random.SystemRandom().randrange(1 << 32))
    print(f"    model seed: {seed} (reproduce with NBDX_INTEROP_SEED={seed})", flush=True)
    ctx.note(f"model seed {seed}")
    rng = random.Random(seed)
    srv = ctx.server(Export("", memory(SIZE)))
    h = srv.connect()
    align = max(1, h.get_block_size(nbd.SIZE_MINIMUM))
    maximum = h.get_block_size(nbd.SIZE_MAXIMUM) or 32 * MiB
    model = bytearray(SIZE)
    most_in_flight = 0
    counts = {}
    for batch_no in range(BATCHES):
        batch = Batch(rng, align, maximum, h.can_fast_zero(), h.can_df())
        while len(batch.ops) < BATCH:
            batch.add_random()
        submitted = [(op, *submit(h, op, rng)) for op in batch.ops]
        most_in_flight = max(most_in_flight, h.aio_in_flight())
        results = wait_all(h, [cookie for _, cookie, _, _ in submitted])
        changed = []
        for op, cookie, buf, payload in submitted:
            kind, start, length, flags = op
            err = results[cookie]
            where = f"batch {batch_no}, {kind} [{start}, +{length}) flags {flags:#x} (seed {seed})"
            if err is not None:
                if kind == "zero" and flags & nbd.CMD_FLAG_FAST_ZERO and err.errnum == errno.ENOTSUP:
                    continue  # allowed: the range is left unchanged
                raise AssertionError(f"{where} failed: {err}")
            counts[kind] = counts.get(kind, 0) + 1
            if kind == "read":
                got = buf.to_bytearray()
                if got != model[start:start + length]:
                    bad = next(i for i in range(length) if got[i] != model[start + i])
                    raise AssertionError(f"{where}: first difference at {start + bad}")
            elif kind == "write":
                model[start:start + length] = payload
                changed.append((start, length))
            elif kind in ("zero", "trim"):
                model[start:start + length] = bytes(length)
                changed.append((start, length))
        for start, length in changed:
            got = h.pread(length, start)
            assert got == model[start:start + length], \
                f"batch {batch_no}: [{start}, +{length}) differs from the model after the batch (seed {seed})"
    assert most_in_flight >= MIN_IN_FLIGHT, f"only {most_in_flight} requests were in flight at once"
    assert read_all(h) == model, f"the export differs from the model at the end (seed {seed})"
    h.shutdown()
    fresh = srv.connect()
    assert read_all(fresh) == model, f"a new connection sees different data (seed {seed})"
    fresh.shutdown()
    ctx.note(f"{sum(counts.values())} requests ({counts}), up to {most_in_flight} in flight")
