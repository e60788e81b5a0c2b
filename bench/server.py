#!/usr/bin/python3
"""Side-by-side server benchmark: nbdx serve vs nbdkit (and optionally
qemu-nbd, nbd-server) on the same machine, in one run, interleaved.

Workloads (each on a fresh server):
  seq-write   nbdcopy -C 4 from a 1 GiB random file in /dev/shm to the export
  seq-read    nbdcopy -C 4 from the (filled) export to null:
  rand-read   fio (nbd engine) 4 KiB random reads, QD32 and QD1
  rand-write  fio 4 KiB random writes, QD32

Backends: memory (nbdx memory:1G, nbdkit memory 1G) and file (a 1 GiB file
in /dev/shm, so the numbers measure the servers, not the disk).
Transports: Unix socket and TCP loopback.

Prints a table of medians and the ratio nbdx/nbdkit, and writes it as
markdown with --out FILE.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NBDX = os.environ.get("NBDX_BIN", os.path.join(ROOT, "target/release/nbdx"))
SIZE = 1 << 30


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(addr, timeout=10.0):
    """Waits until the server sends its greeting."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if isinstance(addr, str):
                s = socket.socket(socket.AF_UNIX)
                s.connect(addr)
            else:
                s = socket.create_connection(addr)
            s.settimeout(2)
            data = s.recv(8)
            s.close()
            if data == b"NBDMAGIC":
                return
        except OSError:
            pass
        time.sleep(0.02)
    raise RuntimeError(f"server at {addr} not ready")


class Server:
    def __init__(self, kind, backend, transport, workdir):
        self.kind, self.backend, self.transport = kind, backend, transport
        self.dir = tempfile.mkdtemp(dir=workdir)
        self.file = os.path.join("/dev/shm", f"nbdx-bench-{os.getpid()}-{kind}.img")
        if transport == "unix":
            self.sock = os.path.join(self.dir, "s")
            self.uri = f"nbd+unix:///?socket={self.sock}"
            self.addr = self.sock
        else:
            self.port = free_port()
            self.uri = f"nbd://127.0.0.1:{self.port}/"
            self.addr = ("127.0.0.1", self.port)

    def command(self):
        if self.backend == "file":
            with open(self.file, "wb") as f:
                f.truncate(SIZE)
        if self.kind == "nbdx":
            src = "memory:1G" if self.backend == "memory" else f"file:{self.file}"
            where = ["-U", self.sock] if self.transport == "unix" else ["-i", "127.0.0.1", "-p", str(self.port)]
            return [NBDX, "serve", src] + where
        if self.kind == "nbdkit":
            where = ["-U", self.sock] if self.transport == "unix" else ["-i", "127.0.0.1", "-p", str(self.port)]
            plugin = ["memory", "1G"] if self.backend == "memory" else ["file", self.file]
            return ["nbdkit", "-f", "--exit-with-parent"] + where + plugin
        if self.kind == "qemu-nbd":
            if self.backend != "file":
                return None
            where = ["-k", self.sock] if self.transport == "unix" else ["-b", "127.0.0.1", "-p", str(self.port)]
            return ["qemu-nbd", "-f", "raw", "-t", "--cache=writeback", "--aio=threads", "-e", "8"] + where + [self.file]
        raise ValueError(self.kind)

    def __enter__(self):
        cmd = self.command()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_ready(self.addr)
        return self

    def __exit__(self, *exc):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
        if os.path.exists(self.file):
            os.unlink(self.file)


def run_timed(cmd):
    t = time.monotonic()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.monotonic() - t


def fio(uri, rw, qd, seconds):
    cmd = ["fio", "--name=b", "--ioengine=nbd", f"--uri={uri}", f"--rw={rw}", "--bs=4k", f"--iodepth={qd}",
           f"--runtime={seconds}", "--time_based", "--output-format=json", f"--size={SIZE}", "--norandommap",
           "--randrepeat=0"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    job = json.loads(out[out.index("{"):])["jobs"][0]
    side = job["read"] if "read" in rw else job["write"]
    return side["iops"], side["lat_ns"]["mean"] / 1000.0


def one_round(kind, backend, transport, src, workdir, seconds):
    """All workloads against one server kind; returns {metric: value}."""
    res = {}
    with Server(kind, backend, transport, workdir) as s:
        t = run_timed(["nbdcopy", "-C", "4", src, s.uri])
        res["seq-write MiB/s"] = SIZE / t / 2**20
        t = run_timed(["nbdcopy", "-C", "4", s.uri, "null:"])
        res["seq-read MiB/s"] = SIZE / t / 2**20
        res["rand-read QD32 IOPS"], _ = fio(s.uri, "randread", 32, seconds)
        res["rand-write QD32 IOPS"], _ = fio(s.uri, "randwrite", 32, seconds)
        iops, lat = fio(s.uri, "randread", 1, seconds)
        res["rand-read QD1 latency us"] = lat
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5, help="fio runtime per workload")
    ap.add_argument("--servers", default="nbdx,nbdkit")
    ap.add_argument("--backends", default="memory,file")
    ap.add_argument("--transports", default="unix,tcp")
    ap.add_argument("--out", help="write the markdown table here")
    args = ap.parse_args()
    kinds = args.servers.split(",")
    workdir = tempfile.mkdtemp(prefix="nbdx-bench-")
    src = os.path.join("/dev/shm", f"nbdx-bench-src-{os.getpid()}.img")
    with open(src, "wb") as f:
        for _ in range(SIZE // (1 << 20)):
            f.write(os.urandom(1 << 20))
    results = {}
    try:
        for r in range(args.rounds):
            for backend in args.backends.split(","):
                for transport in args.transports.split(","):
                    for kind in kinds:
                        if Server(kind, backend, transport, workdir).command() is None:
                            continue
                        print(f"round {r + 1}: {kind} {backend} {transport}", file=sys.stderr, flush=True)
                        res = one_round(kind, backend, transport, src, workdir, args.seconds)
                        for metric, v in res.items():
                            results.setdefault((backend, transport, metric), {}).setdefault(kind, []).append(v)
    finally:
        os.unlink(src)
        shutil.rmtree(workdir, ignore_errors=True)
    lines = [f"| backend | transport | metric | " + " | ".join(kinds) + " | nbdx/nbdkit |",
             "|---|---|---|" + "---|" * len(kinds) + "---|"]
    for (backend, transport, metric), per in results.items():
        med = {k: statistics.median(v) for k, v in per.items()}
        cells = [f"{med[k]:.0f}" if k in med else "-" for k in kinds]
        ratio = ""
        if "nbdx" in med and "nbdkit" in med and med["nbdkit"]:
            r = med["nbdx"] / med["nbdkit"]
            if "latency" in metric:
                r = 1 / r  # lower is better: report the speedup
            ratio = f"{r:.2f}x"
        lines.append(f"| {backend} | {transport} | {metric} | " + " | ".join(cells) + f" | {ratio} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
