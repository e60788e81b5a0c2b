#!/usr/bin/python3
"""nbdx benchmark suite: nbdx against nbdkit, qemu-nbd, nbd-server and nbdcopy, side by side
in one run on one machine, interleaved over rounds. Normally started by bench/run.sh, which
installs the tools and builds the binaries first; this program measures and writes the report.

Sections (--sections, comma-separated; default all):
  ceilings  what the machine can carry at all: Unix-socket and TCP-loopback streams and
            NBD-shaped request/reply exchanges (bench/ceiling), memcpy
  servers   nbdx vs nbdkit (memory and file), qemu-nbd and nbd-server (file), on Unix sockets
            and TCP loopback, each driven by nbdcopy (seq write/read), qemu-img convert
            (write/read) and fio's nbd engine (4 KiB randread, randwrite, 70/30 randrw at QD32
            and QD1), a fresh server per round and server kind, kinds interleaved per round
  copy      client: `nbdx copy -C 4` vs `nbdcopy -C 4` from and to nbdkit memory exports
            (skipped with a note when the nbdx binary has no `copy` command)
  scaling   nbdx and nbdkit (memory, Unix socket): throughput vs connections (nbdcopy -C N,
            fio with N jobs = N connections) and vs request size (nbdcopy --request-size)
  profile   perf record -e cpu-clock of nbdx and nbdkit during seq write, seq read and 4 KiB
            randread QD32 (memory backend) and 4 KiB randread QD32 (file backend): top symbols
            (and flamegraphs with --flamegraph DIR when inferno is installed)

The report (markdown) goes to --out; the raw numbers to --json, from which --render-only
re-renders the report without measuring (e.g. after editing bench/notes.md).
"""

import argparse
import ctypes
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MiB = 1 << 20
GiB = 1 << 30

LIBC = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

# Server workloads, in the order they run on each fresh server:
# (key, label, unit, higher is better).
METRICS = [
    ("nbdcopy-write", "seq write, nbdcopy -C 4", "MiB/s", True),
    ("nbdcopy-read", "seq read, nbdcopy -C 4", "MiB/s", True),
    ("qemu-img-write", "seq write, qemu-img convert -W -m 8", "MiB/s", True),
    ("qemu-img-read", "seq read, qemu-img convert -m 8", "MiB/s", True),
    ("randread-qd32", "4K randread QD32", "IOPS", True),
    ("randwrite-qd32", "4K randwrite QD32", "IOPS", True),
    ("randrw-qd32", "4K randrw 70/30 QD32", "IOPS", True),
    ("randread-qd1", "4K randread QD1 latency", "µs", False),
    ("randwrite-qd1", "4K randwrite QD1 latency", "µs", False),
    ("randrw-qd1", "4K randrw 70/30 QD1 latency", "µs", False),
]
METRIC = {m[0]: m for m in METRICS}
KINDS = ["nbdx", "nbdkit", "qemu-nbd", "nbd-server"]
# The "cold" socket ceiling: writers send from a 256 MiB region, readers receive into a 16 MiB
# ring each (nbdcopy's default queue), so data comes from and goes to RAM as in a 1 GiB copy.
COLD_SPAN, COLD_RING = "256M", "16M"
# Which server kinds exist for which backend.
BACKEND_KINDS = {"memory": ["nbdx", "nbdkit"], "file": ["nbdx", "nbdkit", "qemu-nbd", "nbd-server"]}


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def fmt_size(n):
    for unit, div in (("G", GiB), ("M", MiB), ("K", 1024)):
        if n >= div and n % div == 0:
            return f"{n // div}{unit}"
    return str(n)


def parse_size(s):
    m = re.fullmatch(r"(\d+)([KMG]?)i?B?", s.strip(), re.I)
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {s!r}")
    return int(m.group(1)) * {"": 1, "K": 1024, "M": MiB, "G": GiB}[m.group(2).upper()]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_setup():
    """In each child: die with us (SIGTERM when this process goes away)."""
    LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def run(cmd, timeout, **kw):
    """Runs a command to completion; raises with the tail of its stderr on failure."""
    try:
        p = subprocess.run(cmd, stdout=kw.pop("stdout", subprocess.PIPE), stderr=subprocess.PIPE, text=True,
                           timeout=timeout, preexec_fn=child_setup, **kw)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"timed out after {timeout}s: {' '.join(cmd)}") from None
    if p.returncode != 0:
        tail = " | ".join((p.stderr or "").strip().splitlines()[-3:])
        raise RuntimeError(f"exit {p.returncode}: {' '.join(cmd)}: {tail}")
    return p.stdout


def timed(cmd, timeout):
    t0 = time.monotonic()
    run(cmd, timeout, stdout=subprocess.DEVNULL)
    return time.monotonic() - t0


def first_line(cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        text = (out.stdout or out.stderr).strip()
        return text.splitlines()[0] if text else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"


def loadavg():
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def median(v):
    return statistics.median(v) if v else None


def spread(v):
    """Half the min–max range, as a fraction of the median."""
    if len(v) < 2 or not median(v):
        return None
    return (max(v) - min(v)) / 2 / median(v)


# --------------------------------------------------------------------------- CPU accounting --

class CpuMeter:
    """How much CPU other processes took while we measured: all busy time of the machine
    (user+nice+system+steal from /proc/stat) minus the CPU time of this process and its
    waited-for descendants (servers and drivers). Interrupt time is left out on both sides."""

    def __init__(self):
        self.tck = os.sysconf("SC_CLK_TCK")
        self.ncpu = os.cpu_count() or 1

    def snap(self):
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
        user, nice, system, _idle, _iowait, _irq, _softirq, steal = v
        t = os.times()
        return {"t": time.monotonic(), "busy": (user + nice + system + steal) / self.tck, "steal": steal / self.tck,
                "own": t.user + t.system + t.children_user + t.children_system, "load": loadavg()}

    def diff(self, a, b):
        dt = max(b["t"] - a["t"], 1e-9)
        cap = dt * self.ncpu
        foreign = max(0.0, (b["busy"] - a["busy"]) - (b["own"] - a["own"]))
        if dt < 1.0:  # too short to say (clock ticks are 10 ms; children's time is counted when they end)
            return None
        return {"elapsed_s": round(dt, 1), "foreign_share": round(min(1.0, foreign / cap), 3),
                "steal_share": round((b["steal"] - a["steal"]) / cap, 3),
                "own_share": round((b["own"] - a["own"]) / cap, 3),
                "load_before": a["load"], "load_after": b["load"]}


# ------------------------------------------------------------------------------- servers --

class Server:
    """One NBD server process serving one export, on a Unix socket or TCP 127.0.0.1."""

    def __init__(self, cfg, kind, backend, transport, size=None):
        self.cfg, self.kind, self.backend, self.transport = cfg, kind, backend, transport
        self.size = size or cfg.size
        tag = f"{kind}-{backend}-{transport}"
        self.dir = tempfile.mkdtemp(prefix=tag + ".", dir=cfg.work)
        self.file = os.path.join(self.dir, "disk.img")
        self.export = "bench" if kind == "nbd-server" else ""
        self.proc = None
        self.pid = None
        if transport == "unix":
            self.sock = os.path.join(self.dir, "sock")
            self.uri = f"nbd+unix:///{self.export}?socket={self.sock}"
            self.addr = self.sock
        else:
            self.port = free_port()
            self.uri = f"nbd://127.0.0.1:{self.port}/{self.export}"
            self.addr = ("127.0.0.1", self.port)

    def command(self):
        size, f = self.size, self.file
        unix = self.transport == "unix"
        if self.kind == "nbdx":
            src = f"memory:{size}" if self.backend == "memory" else f"file:{f}"
            where = ["-U", self.sock] if unix else ["-i", "127.0.0.1", "-p", str(self.port)]
            return [self.cfg.nbdx, "serve", src] + where
        if self.kind == "nbdkit":
            where = ["-U", self.sock] if unix else ["-i", "127.0.0.1", "-p", str(self.port)]
            plugin = ["memory", str(size)] if self.backend == "memory" else ["file", f]
            return ["nbdkit", "-f", "--exit-with-parent"] + where + plugin
        if self.kind == "qemu-nbd":
            where = ["-k", self.sock] if unix else ["-b", "127.0.0.1", "-p", str(self.port)]
            return ["qemu-nbd", "-f", "raw", "-t", "--cache=writeback", "--aio=threads", "-e", "8"] + where + [f]
        if self.kind == "nbd-server":
            return ["nbd-server", "-C", os.path.join(self.dir, "config"), "-p", os.path.join(self.dir, "pid")]
        raise ValueError(self.kind)

    def nbd_server_config(self):
        lines = ["[generic]"]
        if self.transport == "unix":
            lines.append(f"unixsock = {self.sock}")
        else:
            lines += [f"port = {self.port}", "listenaddr = 127.0.0.1"]
        # flush/fua/trim on, as the other servers offer them (nbdcopy --flush needs flush).
        lines += [f"[{self.export}]", f"exportname = {self.file}", "flush = true", "fua = true", "trim = true", ""]
        with open(os.path.join(self.dir, "config"), "w") as f:
            f.write("\n".join(lines))

    def __enter__(self):
        if self.backend == "file":
            with open(self.file, "wb") as f:
                f.truncate(self.size)
        if self.kind == "nbd-server":
            self.nbd_server_config()
        cmd = self.command()
        self.errlog = open(os.path.join(self.dir, "stderr"), "w")
        # Own session: Ctrl-C reaches this program, which then stops the server itself.
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.errlog,
                                     preexec_fn=child_setup, start_new_session=True)
        try:
            if self.kind == "nbd-server":
                # It forks into the background (we are its subreaper) and writes its pid file.
                self.proc.wait(20)
                if self.proc.returncode != 0:
                    raise RuntimeError(f"nbd-server exited {self.proc.returncode}")
                pidfile = os.path.join(self.dir, "pid")
                deadline = time.monotonic() + 20
                while self.pid is None and time.monotonic() < deadline:
                    try:
                        with open(pidfile) as f:
                            self.pid = int(f.read().split()[0])
                    except (OSError, ValueError, IndexError):
                        time.sleep(0.02)
                if self.pid is None:
                    raise RuntimeError("nbd-server wrote no pid file")
            else:
                self.pid = self.proc.pid
            self.cfg.track_pid(self.pid, True)
            self.wait_ready()
        except BaseException:
            self.__exit__()
            raise
        return self

    def wait_ready(self, timeout=30.0):
        """Waits until the server sends its greeting."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.kind != "nbd-server" and self.proc.poll() is not None:
                break
            try:
                s = socket.socket(socket.AF_UNIX) if isinstance(self.addr, str) else socket.socket()
                with s:
                    s.settimeout(2)
                    s.connect(self.addr)
                    if s.recv(8, socket.MSG_WAITALL) == b"NBDMAGIC":
                        return
            except OSError:
                pass
            time.sleep(0.02)
        with open(os.path.join(self.dir, "stderr")) as f:
            err = f.read().strip()[-300:]
        raise RuntimeError(f"{self.kind} at {self.uri} not ready: {err}")

    def __exit__(self, *exc):
        if self.pid is not None:
            if self.kind == "nbd-server":
                stop_daemon(self.pid)
            else:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(15)
            self.cfg.track_pid(self.pid, False)
        elif self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(15)
        reap_orphans()
        if hasattr(self, "errlog"):
            self.errlog.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def stop_daemon(pid, timeout=15.0):
    """SIGTERM to a daemon that re-parented to us, and to its process group (its children) when
    that group is its own, not ours; wait for it; then SIGKILL."""
    try:
        group = os.getpgid(pid)
        group = group if group != os.getpgid(0) else None
    except OSError:
        group = None
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for target in ([lambda: os.killpg(group, sig)] if group else []) + [lambda: os.kill(pid, sig)]:
            try:
                target()
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid if not os.path.exists(f"/proc/{pid}") else 0
            if done == pid:
                return
            time.sleep(0.02)


def reap_orphans():
    """Reaps daemons' children that re-parented to us (we are a child subreaper)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def proc_cpu(pid, children=False):
    """CPU seconds used so far by a server: the process (all threads, and children it has
    reaped) plus its live children (nbd-server forks one per connection)."""
    tck = os.sysconf("SC_CLK_TCK")

    def stat(p):
        with open(f"/proc/{p}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    try:
        v = stat(pid)
        total = sum(int(x) for x in v[11:15])  # utime stime cutime cstime
    except (OSError, ValueError, IndexError):
        return None
    for d in os.listdir("/proc") if children else []:
        if d.isdigit() and d != str(pid):
            try:
                c = stat(d)
                if int(c[1]) == pid:  # ppid
                    total += int(c[11]) + int(c[12])
            except (OSError, ValueError, IndexError):
                pass
    return total / tck


# ------------------------------------------------------------------------------- drivers --

def nbdcopy(src, dst, conns=4, request_size=None, flush=True, threads=True, timeout=900):
    cmd = ["nbdcopy", "-C", str(conns)]
    if threads:
        cmd += ["-T", str(conns)]
    if request_size:
        cmd += [f"--request-size={request_size}", f"--queue-size={max(16 * MiB, 4 * request_size)}"]
    if flush and not dst.startswith("null:"):
        cmd.append("--flush")
    return timed(cmd + [src, dst], timeout)


def qemu_img_write(src_file, uri, timeout=900):
    return timed(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", "-W", "-m", "8", src_file, uri], timeout)


def qemu_img_read(uri, size, timeout=900):
    return timed(["qemu-img", "convert", "-n", "-f", "raw", "-m", "8", uri,
                  "--target-image-opts", f"driver=null-co,size={size}"], timeout)


def fio(uri, rw, qd, seconds, size, bs="4k", numjobs=1, ramp=0):
    cmd = ["fio", "--name=bench", "--ioengine=nbd", f"--uri={uri}", f"--rw={rw}", f"--bs={bs}",
           f"--iodepth={qd}", f"--numjobs={numjobs}", "--group_reporting", f"--runtime={seconds}", "--time_based",
           f"--ramp_time={ramp}", f"--size={size}", "--norandommap", "--randrepeat=0", "--output-format=json"]
    if rw == "randrw":
        cmd.append("--rwmixread=70")
    out = run(cmd, timeout=seconds + ramp + 120)
    job = json.loads(out[out.index("{"):])["jobs"][0]
    iops = job["read"]["iops"] + job["write"]["iops"]
    if iops <= 0:
        raise RuntimeError(f"fio {rw} QD{qd}: no I/O completed")
    rd, wr = job["read"], job["write"]
    lat = (rd["iops"] * rd["lat_ns"]["mean"] + wr["iops"] * wr["lat_ns"]["mean"]) / iops
    return {"iops": iops, "lat_us": lat / 1000.0, "mib_s": iops * parse_size(bs) / MiB}


# ------------------------------------------------------------------------------ sections --

class Suite:
    def __init__(self, args):
        self.args = args
        self.size = args.size
        self.nbdx = args.nbdx
        self.work = args.workdir or tempfile.mkdtemp(prefix="nbdx-bench.", dir="/dev/shm")
        self.own_work = args.workdir is None
        os.makedirs(os.path.join(self.work, "pids"), exist_ok=True)
        self.meter = CpuMeter()
        self.res = {"config": {}, "env": {}, "cpu": {}, "errors": [], "notes": [], "ceilings": [], "servers": {},
                    "copy": {}, "scaling": {}, "profiles": []}

    def track_pid(self, pid, alive):
        """bench/run.sh kills whatever is listed here if this program dies abnormally."""
        path = os.path.join(self.work, "pids", str(pid))
        if alive:
            open(path, "w").close()
        elif os.path.exists(path):
            os.unlink(path)

    def error(self, what, e):
        msg = f"{what}: {e}"
        log("ERROR " + msg)
        self.res["errors"].append(msg)

    def attempt(self, what, fn, *a, **kw):
        try:
            return fn(*a, **kw)
        except (RuntimeError, OSError, ValueError, KeyError, subprocess.SubprocessError) as e:
            self.error(what, e)
            return None

    def source_file(self):
        """SIZE bytes of random data in /dev/shm (the page cache: reading it costs ~nothing)."""
        path = os.path.join(self.work, "src.img")
        if not os.path.exists(path):
            log(f"writing {fmt_size(self.size)} of random data to {path}")
            with open(path, "wb") as f:
                left = self.size
                while left:
                    n = min(left, 16 * MiB)
                    f.write(os.urandom(n))
                    left -= n
        return path

    def section(self, name, fn):
        log(f"== {name} (load average {' '.join(map(str, loadavg()))})")
        a = self.meter.snap()
        try:
            fn()
        finally:
            c = self.meter.diff(a, self.meter.snap())
            if c:
                self.res["cpu"][name] = c
                log(f"== {name} done in {c['elapsed_s']}s; other processes used {c['foreign_share']:.0%} of the CPU")

    # -- ceilings --------------------------------------------------------------------------
    def ceilings(self):
        exe = self.args.ceiling
        if not exe or not os.access(exe, os.X_OK):
            self.res["notes"].append("ceilings: the bench/ceiling binary was not built; section skipped")
            return
        secs = "0.5" if self.args.quick else "1"
        reps = 1 if self.args.quick else min(3, self.args.rounds)
        runs = []
        for t in ("unix", "tcp"):
            for size in ("4K", "64K", "256K", "1M", "4M"):
                for streams in (1, 4):
                    runs.append(["stream", "--transport", t, "--size", size, "--streams", str(streams)])
                    if size != "4K":  # RAM-to-RAM: as large as a 1 GiB copy behaves
                        runs.append(["stream", "--transport", t, "--size", size, "--streams", str(streams),
                                     "--span", COLD_SPAN, "--ring", COLD_RING])
            for d in ("read", "write"):
                for depth in (1, 32):
                    runs.append(["rr", "--transport", t, "--size", "4K", "--depth", str(depth), "--dir", d])
        for size in ("256K", "256M"):
            for threads in sorted({1, self.meter.ncpu}):
                runs.append(["memcpy", "--size", size, "--threads", str(threads)])
        for rep in range(reps):
            for r in runs:
                out = self.attempt("ceiling " + " ".join(r), run, [exe] + r + ["--seconds", secs], 120)
                if out:
                    d = json.loads(out)
                    d["rep"] = rep
                    self.res["ceilings"].append(d)

    # -- servers ---------------------------------------------------------------------------
    def server_round(self, kind, backend, transport, src):
        out = {}
        secs, ramp = self.args.seconds, (0 if self.args.quick else 1)
        gib = self.size / GiB
        with Server(self, kind, backend, transport) as s:
            def do(key, fn):
                """fn() -> (value, units of work); also records the server's CPU time per unit:
                seconds per GiB for copies, µs per request for fio."""
                c0 = proc_cpu(s.pid, kind == "nbd-server")
                v = self.attempt(f"{kind} {backend} {transport} {key}", fn)
                c1 = proc_cpu(s.pid, kind == "nbd-server")
                if v is not None:
                    out[key] = v[0]
                    if c0 is not None and c1 is not None and v[1] > 0:
                        out[key + "|cpu"] = (c1 - c0) / v[1]

            def copy(t):
                return self.size / t / MiB, gib

            def rand(rw, qd, field):
                r = fio(s.uri, rw, qd, secs, self.size, ramp=ramp)
                return r[field], r["iops"] * (secs + ramp) / 1e6  # CPU per request, in µs
            do("nbdcopy-write", lambda: copy(nbdcopy(src, s.uri)))
            do("nbdcopy-read", lambda: copy(nbdcopy(s.uri, "null:")))
            if shutil.which("qemu-img"):
                do("qemu-img-write", lambda: copy(qemu_img_write(src, s.uri)))
                do("qemu-img-read", lambda: copy(qemu_img_read(s.uri, self.size)))
            for qd, field in ((32, "iops"), (1, "lat_us")) if self.have_fio else ():
                for rw in ("randread", "randwrite", "randrw"):
                    do(f"{rw}-qd{qd}", lambda rw=rw, qd=qd, field=field: rand(rw, qd, field))
        return out

    def servers(self):
        src = self.source_file()
        kinds_wanted = self.kinds
        for r in range(self.args.rounds):
            for backend in self.args.backends:
                for transport in self.args.transports:
                    kinds = [k for k in BACKEND_KINDS[backend] if k in kinds_wanted]
                    # Rotate the order each round: no server always runs first (or last).
                    kinds = kinds[r % len(kinds):] + kinds[:r % len(kinds)] if kinds else kinds
                    for kind in kinds:
                        log(f"round {r + 1}/{self.args.rounds}: {kind} {backend} {transport}")
                        try:
                            res = self.server_round(kind, backend, transport, src)
                        except (RuntimeError, OSError, subprocess.SubprocessError) as e:
                            self.error(f"{kind} {backend} {transport}", e)
                            continue
                        for metric, v in res.items():
                            per = self.res["servers"].setdefault(f"{backend}|{transport}|{metric}", {})
                            per.setdefault(kind, []).append(v)

    # -- client copy -----------------------------------------------------------------------
    def nbdx_has_copy(self):
        try:
            p = subprocess.run([self.nbdx, "copy", "--help"], capture_output=True, timeout=20)
            return p.returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False

    def copy(self):
        c = self.res["copy"]
        if not self.nbdx_has_copy():
            c["note"] = f"`{os.path.relpath(self.nbdx, ROOT)} copy` does not exist yet: section skipped"
            return
        src = self.source_file()
        c["cases"] = {}
        with Server(self, "nbdkit", "memory", "unix") as a, Server(self, "nbdkit", "memory", "unix") as b:
            nbdcopy(src, a.uri)  # the source export holds SIZE of random data
            cases = [("nbdkit memory → null:", a.uri, "null:"),
                     ("file in /dev/shm → nbdkit memory", src, b.uri),
                     ("nbdkit memory → nbdkit memory", a.uri, b.uri)]
            for r in range(self.args.rounds):
                order = ["nbdx", "nbdcopy"] if r % 2 == 0 else ["nbdcopy", "nbdx"]
                for label, s, d in cases:
                    for tool in order:
                        if tool == "nbdx":
                            cmd = [self.nbdx, "copy", "-C", "4", s, d]
                        else:
                            cmd = ["nbdcopy", "-C", "4"] + (["--flush"] if d != "null:" else []) + [s, d]
                        log(f"round {r + 1}/{self.args.rounds}: {' '.join(cmd)}")
                        u0 = os.times()
                        t = self.attempt(f"copy {tool} {label}", timed, cmd, 900)
                        u1 = os.times()
                        if t:
                            case = c["cases"].setdefault(label, {})
                            case.setdefault(tool, []).append(self.size / t / MiB)
                            cpu = (u1.children_user + u1.children_system) - (u0.children_user + u0.children_system)
                            case.setdefault(tool + "|cpu", []).append(cpu / (self.size / GiB))

    # -- scaling ---------------------------------------------------------------------------
    def scaling(self):
        src = self.source_file()
        secs = max(1, self.args.seconds // 2)
        kinds = [k for k in ("nbdx", "nbdkit") if k in self.kinds]
        sc = self.res["scaling"]

        def put(key, kind, v):
            if v is not None:
                sc.setdefault(key, {}).setdefault(kind, []).append(v)

        rounds = min(3, self.args.rounds)
        for r in range(rounds):
            for kind in (kinds if r % 2 == 0 else kinds[::-1]):
                log(f"round {r + 1}/{rounds}: scaling {kind}")
                try:
                    with Server(self, kind, "memory", "unix") as s:
                        for n in self.args.conns:
                            w = self.attempt(f"scaling {kind} write C{n}", nbdcopy, src, s.uri, n)
                            put(f"conns|{n}|nbdcopy-write", kind, w and self.size / w / MiB)
                            rd = self.attempt(f"scaling {kind} read C{n}", nbdcopy, s.uri, "null:", n)
                            put(f"conns|{n}|nbdcopy-read", kind, rd and self.size / rd / MiB)
                            if self.have_fio:
                                f = self.attempt(f"scaling {kind} fio jobs {n}", fio, s.uri, "randread", 8, secs,
                                                 self.size, numjobs=n)
                                put(f"conns|{n}|randread-qd8", kind, f and f["iops"])
                        for rs in self.args.request_sizes:
                            w = self.attempt(f"scaling {kind} write rs {rs}", nbdcopy, src, s.uri, 4, rs)
                            put(f"reqsize|{rs}|nbdcopy-write", kind, w and self.size / w / MiB)
                            rd = self.attempt(f"scaling {kind} read rs {rs}", nbdcopy, s.uri, "null:", 4, rs)
                            put(f"reqsize|{rs}|nbdcopy-read", kind, rd and self.size / rd / MiB)
                except (RuntimeError, OSError, subprocess.SubprocessError) as e:
                    self.error(f"scaling {kind}", e)

    # -- profile ---------------------------------------------------------------------------
    def profile(self):
        if not shutil.which("perf"):
            self.res["notes"].append("profile: perf is not installed; section skipped")
            return
        fg_dir = self.args.flamegraph
        inferno = fg_dir and shutil.which("inferno-collapse-perf") and shutil.which("inferno-flamegraph")
        if fg_dir and not inferno:
            self.res["notes"].append("profile: inferno is not installed (cargo install inferno): no flamegraphs")
        src = self.source_file()
        secs = max(2, self.args.seconds)
        def repeat(fn):
            """Runs fn until secs have passed (at least once): enough samples even for fast copies."""
            t0 = time.monotonic()
            while True:
                fn()
                if time.monotonic() - t0 >= secs:
                    return

        # (name, file tag, backend, fill the export first, workload)
        workloads = [
            ("seq write, nbdcopy -C 4 (repeated)", "write", "memory", False,
             lambda s: repeat(lambda: nbdcopy(src, s.uri))),
            ("seq read, nbdcopy -C 4 (repeated)", "read", "memory", True,
             lambda s: repeat(lambda: nbdcopy(s.uri, "null:"))),
            ("4K randread QD32, fio", "randread", "memory", True, lambda s: fio(s.uri, "randread", 32, secs, self.size)),
            ("4K randread QD32, fio", "file-randread", "file", True,
             lambda s: fio(s.uri, "randread", 32, secs, self.size)),
        ]
        if not self.have_fio:
            workloads = [w for w in workloads if not w[0].startswith("4K")]
        for kind in [k for k in ("nbdx", "nbdkit") if k in self.kinds]:
            for wname, tag, backend, fill, wl in workloads:
                log(f"profile: {kind} {backend} unix: {wname}")
                data = os.path.join(self.work, "perf.data")
                with Server(self, kind, backend, "unix") as s:
                    if fill:
                        nbdcopy(src, s.uri)  # read data, not holes
                    graph = ["--call-graph", "dwarf,16384"] if inferno else ["-g"]
                    perf = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", "999"] + graph +
                                            ["-p", str(s.pid), "-o", data], stdout=subprocess.DEVNULL,
                                            stderr=subprocess.PIPE, text=True, preexec_fn=child_setup)
                    time.sleep(0.5)
                    err = None
                    c0 = proc_cpu(s.pid)
                    try:
                        wl(s)
                    except (RuntimeError, OSError) as e:
                        err = e
                    c1 = proc_cpu(s.pid)
                    perf.send_signal(signal.SIGINT)
                    try:
                        _, perr = perf.communicate(timeout=120)
                    except subprocess.TimeoutExpired:
                        perf.kill()
                        _, perr = perf.communicate()
                if err or perf.returncode not in (0, -signal.SIGINT):
                    self.error(f"profile {kind} {wname}", err or (perr or "").strip()[-300:])
                    continue
                entry = {"kind": kind, "workload": wname, "backend": backend,
                         "cpu_s": None if c0 is None or c1 is None else round(c1 - c0, 2)}
                entry.update(self.perf_top(data))
                if inferno:
                    svg = os.path.join(fg_dir, f"{kind}-{tag}.svg")
                    if self.attempt(f"flamegraph {svg}", self.flamegraph, data, svg, f"{kind}: {wname}"):
                        entry["svg"] = os.path.relpath(svg, os.path.dirname(os.path.abspath(self.args.out)))
                self.res["profiles"].append(entry)
                os.unlink(data)

    def perf_top(self, data, n=12):
        out = run(["perf", "report", "-i", data, "--stdio", "--no-children", "-g", "none", "--sort", "dso,sym",
                   "--percent-limit", "0.3"], 300)
        rows, samples = [], None
        m = re.search(r"# Samples: (\S+)", out)
        if m:
            samples = m.group(1)
        for line in out.splitlines():
            m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.*\S)", line)
            if m:
                rows.append([float(m.group(1)), m.group(2), m.group(3), m.group(4)])
        kernel = sum(r[0] for r in rows if r[2] == "k")
        return {"samples": samples, "top": rows[:n], "kernel_pct": round(kernel, 1)}

    def flamegraph(self, data, svg, title):
        os.makedirs(os.path.dirname(svg), exist_ok=True)
        script = subprocess.run(["perf", "script", "-i", data], capture_output=True, timeout=600, check=True)
        folded = subprocess.run(["inferno-collapse-perf"], input=script.stdout, capture_output=True, timeout=600,
                                check=True)
        graph = subprocess.run(["inferno-flamegraph", "--title", title, "--width", "1200"], input=folded.stdout,
                               capture_output=True, timeout=600, check=True)
        with open(svg, "wb") as f:
            f.write(graph.stdout)
        return True

    # -- environment -----------------------------------------------------------------------
    def environment(self):
        e = self.res["env"]
        cpu = "?"
        try:
            with open("/proc/cpuinfo") as f:
                m = re.search(r"^model name\s*:\s*(.*)$", f.read(), re.M)
                cpu = m.group(1) if m else cpu
        except OSError:
            pass
        try:
            with open("/proc/meminfo") as f:
                mem = int(re.search(r"MemTotal:\s*(\d+)", f.read()).group(1)) * 1024
        except (OSError, AttributeError):
            mem = 0
        osname = "?"
        try:
            with open("/etc/os-release") as f:
                m = re.search(r'^PRETTY_NAME="?([^"\n]*)', f.read(), re.M)
                osname = m.group(1) if m else osname
        except OSError:
            pass
        virt = first_line(["systemd-detect-virt"]) if shutil.which("systemd-detect-virt") else "?"
        commit = first_line(["git", "-C", ROOT, "describe", "--always", "--dirty", "--abbrev=12"])
        e.update({
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "host cpu": f"{cpu}; {os.cpu_count()} logical CPUs, {os.sched_getaffinity(0).__len__()} usable",
            "memory": f"{mem / GiB:.1f} GiB",
            "kernel": f"{platform.system()} {platform.release()} ({platform.machine()})",
            "os": osname,
            "virtualization": virt,
            "nbdx": f"{first_line([self.nbdx, '--version'])} (commit {commit})",
            "nbdkit": first_line(["nbdkit", "--version"]),
            "libnbd (nbdcopy)": first_line(["nbdcopy", "--version"]),
            "qemu-img / qemu-nbd": f"{first_line(['qemu-img', '--version'])} / {first_line(['qemu-nbd', '--version'])}",
            "nbd-server": first_line(["nbd-server", "-V"]),
            "fio": first_line(["fio", "--version"]),
            "rustc": first_line(["rustc", "--version"]),
            "perf": first_line(["perf", "--version"]),
            "python": platform.python_version(),
        })

    # -- main --------------------------------------------------------------------------------
    def run(self):
        try:
            return self.measure()
        finally:
            src = os.path.join(self.work, "src.img")
            if os.path.exists(src):
                os.unlink(src)
            if self.own_work:
                shutil.rmtree(self.work, ignore_errors=True)

    def measure(self):
        a = self.args
        self.res["config"] = {"rounds": a.rounds, "seconds": a.seconds, "size": a.size, "quick": a.quick,
                              "sections": a.sections, "servers": a.servers, "backends": a.backends,
                              "transports": a.transports, "conns": a.conns, "request_sizes": a.request_sizes,
                              "command": a.command or "bench/bench.py " + " ".join(sys.argv[1:])}
        # What is there to run? Missing peers and drivers are skipped with a note, not failed on
        # every round.
        if not os.access(self.nbdx, os.X_OK):
            raise SystemExit(f"bench: {self.nbdx} is missing (cargo build --release)")
        for tool in ("nbdcopy", "nbdkit"):
            if not shutil.which(tool):
                raise SystemExit(f"bench: {tool} is missing (bench/run.sh installs it with apt)")
        binary = {"nbdx": self.nbdx, "nbdkit": "nbdkit", "qemu-nbd": "qemu-nbd", "nbd-server": "nbd-server"}
        self.kinds = [k for k in a.servers if shutil.which(binary[k])]
        for k in sorted(set(a.servers) - set(self.kinds)):
            self.res["notes"].append(f"{k} is not installed: its columns are empty")
        self.have_fio = bool(shutil.which("fio")) and subprocess.run(
            ["fio", "--enghelp=nbd"], capture_output=True, timeout=30).returncode == 0
        if not self.have_fio:
            self.res["notes"].append("fio with the nbd engine is not available: no 4 KiB random I/O numbers")
        if not shutil.which("qemu-img"):
            self.res["notes"].append("qemu-img is not installed: no qemu-img convert numbers")
        # Daemons (nbd-server) re-parent to us, so we can wait for them and count their CPU.
        LIBC.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        self.environment()
        # Is anything else running? Sample the machine for a few seconds before measuring.
        idle = self.meter.snap()
        time.sleep(3)
        self.res["cpu"]["idle check (3 s before)"] = self.meter.diff(idle, self.meter.snap())
        log(f"other processes use {self.res['cpu']['idle check (3 s before)']['foreign_share']:.0%} of the CPU")
        total = self.meter.snap()
        try:
            for name in ("ceilings", "servers", "copy", "scaling", "profile"):
                if name in a.sections:
                    self.section(name, getattr(self, name))
        finally:
            c = self.meter.diff(total, self.meter.snap())
            if c:
                self.res["cpu"]["total"] = c
        return self.res


# ------------------------------------------------------------------------------- report --

def fmt_val(v, unit):
    if v is None:
        return "–"
    if unit == "µs":
        return f"{v:.1f}"
    if unit == "s":
        return f"{v:.2f}"
    return f"{v:,.0f}"


def cell(vals, unit):
    if not vals:
        return "–"
    s = fmt_val(median(vals), unit)
    sp = spread(vals)
    return s + (f" ±{sp:.0%}" if sp is not None and sp >= 0.005 else "")


def ratio(a, b, higher_better):
    """nbdx vs peer: speed ratio (higher is better for nbdx), or latency speedup."""
    if not a or not b:
        return None
    ma, mb = median(a), median(b)
    if not ma or not mb:
        return None
    return ma / mb if higher_better else mb / ma


def fmt_ratio(r):
    return "–" if r is None else f"{r:.2f}×"


def load_warning(res, ncpu):
    """A loud warning when other processes took a noticeable share of the CPU."""
    cpu = res.get("cpu", {})
    msgs = []
    if cpu:
        before = next(iter(cpu.values()))["load_before"][0]
        worst = max((c["foreign_share"] for c in cpu.values()), default=0)
        if worst > 0.10:
            msgs.append(f"> **⚠ WARNING: the machine was busy — these numbers are not trustworthy.** Other processes "
                        f"used up to {worst:.0%} of the CPU while this ran (load average {before:.2f} at the start, "
                        f"{ncpu} CPUs; see Environment). Rerun on a quiet machine.")
    if res["config"].get("quick"):
        msgs.append("> **⚠ Quick run (`--quick`): one round, short runtimes. For a smoke test of the script, not for "
                    "conclusions.**")
    return msgs


def server_tables(res):
    out = []
    rounds = res["config"]["rounds"]
    for backend in res["config"]["backends"]:
        kinds = [k for k in BACKEND_KINDS[backend] if k in res["config"]["servers"]]
        rows = []
        for transport in res["config"]["transports"]:
            for key, label, unit, hb in METRICS:
                per = res["servers"].get(f"{backend}|{transport}|{key}")
                if not per:
                    continue
                peers = [k for k in kinds if k != "nbdx" and per.get(k)]
                best = None
                if peers and per.get("nbdx"):
                    best = min((ratio(per["nbdx"], per[k], hb) for k in peers), default=None)
                rows.append(f"| {transport} | {label} | {unit} | " + " | ".join(cell(per.get(k), unit) for k in kinds)
                            + f" | **{fmt_ratio(ratio(per.get('nbdx'), per.get('nbdkit'), hb))}**"
                            + (f" | {fmt_ratio(best)}" if len(kinds) > 2 else "") + " |")
        if not rows:
            continue
        extra = len(kinds) > 2
        out.append(f"### {backend.capitalize()} backend\n")
        out.append("| transport | workload | unit | " + " | ".join(kinds) + " | nbdx vs nbdkit |"
                   + (" nbdx vs best peer |" if extra else ""))
        out.append("|---|---|---|" + "---:|" * len(kinds) + "---:|" + ("---:|" if extra else ""))
        out += rows
        out.append("")
    out.append(f"Medians of {rounds} round(s), ±: half the min–max range. Ratios: throughput and IOPS "
               "nbdx ÷ peer; latency peer ÷ nbdx (a speedup). Above 1 means nbdx is better.\n")
    return out


def cpu_tables(res):
    """Server CPU time per unit of work: less disturbed by a busy machine than rates are."""
    out = []
    for backend in res["config"]["backends"]:
        kinds = [k for k in BACKEND_KINDS[backend] if k in res["config"]["servers"]]
        rows = []
        for transport in res["config"]["transports"]:
            for key, label, unit, _ in METRICS:
                per = res["servers"].get(f"{backend}|{transport}|{key}|cpu")
                if not per:
                    continue
                seq = unit == "MiB/s"
                # Seconds per GiB for copies, µs per request for fio (one decimal place either way).
                cells = [cell(per.get(k), "s" if seq else "µs") for k in kinds]
                label = label.replace(" latency", "")
                rows.append(f"| {transport} | {label} | {'s/GiB' if seq else 'µs/req'} | " + " | ".join(cells)
                            + f" | {fmt_ratio(ratio(per.get('nbdx'), per.get('nbdkit'), False))} |")
        if rows:
            out.append(f"Server CPU time per unit of work, {backend} backend (user+system of the server process; "
                       "lower is better; ratio nbdkit ÷ nbdx):\n")
            out.append("| transport | workload | unit | " + " | ".join(kinds) + " | nbdx vs nbdkit |")
            out.append("|---|---|---|" + "---:|" * len(kinds) + "---:|")
            out += rows
            out.append("")
    return out


def stream_ceiling(res, transport, size, streams, cold):
    """`ceiling stream` results; cold: RAM-to-RAM runs (a span larger than one message)."""
    return [c for c in ceiling_lookup(res, "stream", transport=transport, size=size, streams=streams)
            if (c.get("span", c["size"]) > c["size"]) == cold]


def ceiling_lookup(res, mode, **want):
    vals = [c for c in res.get("ceilings", []) if c["mode"] == mode and all(c.get(k) == v for k, v in want.items())]
    return vals


def ceiling_tables(res):
    out = []
    cs = res.get("ceilings", [])
    if not cs:
        return out
    out.append("Sockets: `ceiling stream` — N independent connections, each a writer thread sending messages of "
               "the given size and a reader thread reading them (the two copies an NBD read reply costs). *hot*: "
               "one message-sized buffer on each side, so the data stays in the CPU cache; *RAM*: the writers send "
               f"consecutive messages from a {COLD_SPAN} region and each reader receives into a {COLD_RING} ring "
               "(nbdcopy's queue size), so the data comes from and goes to memory as in a 1 GiB copy. MiB/s, "
               "median over repetitions.\n")
    sizes = sorted({c["size"] for c in cs if c["mode"] == "stream"})
    out.append("| transport | streams | buffers | " + " | ".join(fmt_size(s) for s in sizes) + " |")
    out.append("|---|---:|---|" + "---:|" * len(sizes))
    for t in ("unix", "tcp"):
        for n in sorted({c["streams"] for c in cs if c["mode"] == "stream"}):
            for cold in (False, True):
                vals = [median([c["mib_per_s"] for c in stream_ceiling(res, t, s, n, cold)] or [0]) for s in sizes]
                if any(vals):
                    out.append(f"| {t} | {n} | {'RAM' if cold else 'hot'} | "
                               + " | ".join(f"{v:,.0f}" if v else "–" for v in vals) + " |")
    out.append("")
    rr = [c for c in cs if c["mode"] == "rr"]
    if rr:
        out.append("Request/reply: `ceiling rr` — NBD-shaped exchange (32-byte requests, 16-byte replies, 4 KiB "
                   "payload on the reply for read, on the request for write), a server that does no work, up to D "
                   "requests in flight. This is the floor for 4 KiB latency and the roof for 4 KiB IOPS.\n")
        out.append("| transport | direction | depth | ops/s | mean round trip µs |")
        out.append("|---|---|---:|---:|---:|")
        for t in ("unix", "tcp"):
            for d in ("read", "write"):
                for depth in sorted({c["depth"] for c in rr}):
                    v = ceiling_lookup(res, "rr", transport=t, dir=d, depth=depth)
                    if v:
                        out.append(f"| {t} | {d} | {depth} | {median([c['ops_per_s'] for c in v]):,.0f} | "
                                   f"{median([c['mean_rtt_us'] for c in v]):.1f} |")
        out.append("")
    mc = [c for c in cs if c["mode"] == "memcpy"]
    if mc:
        out.append("| memcpy | threads | MiB/s |")
        out.append("|---|---:|---:|")
        for s in sorted({c["size"] for c in mc}):
            for th in sorted({c["threads"] for c in mc}):
                v = ceiling_lookup(res, "memcpy", size=s, threads=th)
                if v:
                    where = "in cache" if s <= MiB else "in RAM"
                    out.append(f"| {fmt_size(s)} buffers ({where}) | {th} | {median([c['mib_per_s'] for c in v]):,.0f} |")
        out.append("")
    return out


def socket_fraction(res, transport="unix", key="nbdcopy-read", cold=True):
    """nbdx nbdcopy throughput (memory backend) as a fraction of the socket ceiling with the same
    shape: 4 streams of 256 KiB messages (RAM-to-RAM by default, or hot in the cache)."""
    ceil = stream_ceiling(res, transport, 256 * 1024, 4, cold)
    per = res["servers"].get(f"memory|{transport}|{key}", {})
    if not ceil or not per.get("nbdx"):
        return None, None, None
    c = median([x["mib_per_s"] for x in ceil])
    v = median(per["nbdx"])
    return v / c if c else None, v, c


def targets(res):
    """Rows: issue | target | measured | status."""
    rows = []

    def status(ok):
        return "n/a" if ok is None else ("met" if ok else "**NOT met**")

    sv = res["servers"]
    tr = res["config"]["transports"]
    short = {"nbdcopy-write": "seq write", "nbdcopy-read": "seq read", "randread-qd32": "randread QD32",
             "randwrite-qd32": "randwrite QD32"}
    for backend, need, issue in (("memory", 1.0, "2"), ("memory", 1.2, "7"), ("file", 1.2, "7")):
        for t in tr:
            got = []
            for k in short:
                per = sv.get(f"{backend}|{t}|{k}", {})
                r = ratio(per.get("nbdx"), per.get("nbdkit"), True)
                if r is not None:
                    got.append((r, k))
            if not got:
                continue
            worst = min(got)
            ok = len(got) == len(short) and worst[0] >= need
            missing = [short[k] for k in short if k not in {k2 for _, k2 in got}]
            rows.append((issue, f"{backend}, {t}: nbdx ≥ {need:.1f}× nbdkit on seq write/read (nbdcopy -C 4) and "
                         "4K randread/randwrite QD32",
                         ", ".join(f"{short[k]} {r:.2f}×" for r, k in got) + (f"; not measured: {', '.join(missing)}"
                                                                             if missing else ""),
                         status(None if missing and worst[0] >= need else ok)))
    for backend in res["config"]["backends"]:
        for t in tr:
            per = sv.get(f"{backend}|{t}|randread-qd1", {})
            r = ratio(per.get("nbdx"), per.get("nbdkit"), False)
            if r is not None:
                rows.append(("7", f"{backend}, {t}: 4K randread QD1 latency within 10% of nbdkit or better",
                             f"nbdx {median(per['nbdx']):.1f} µs, nbdkit {median(per['nbdkit']):.1f} µs ({r:.2f}×)",
                             status(r >= 1 / 1.1)))
    for key, what in (("nbdcopy-read", "seq read"), ("nbdcopy-write", "seq write")):
        f, v, c = socket_fraction(res, "unix", key)
        if f is not None:
            hot = socket_fraction(res, "unix", key, cold=False)
            rows.append(("7", f"memory, unix: nbdx {what} (nbdcopy -C 4) ≥ 70% of the Unix-socket ceiling "
                         "(4 streams of 256 KiB, RAM to RAM)", f"{v:,.0f} of {c:,.0f} MiB/s = {f:.0%}"
                         + (f" (of the cache-hot ceiling {hot[2]:,.0f}: {hot[0]:.0%})" if hot[0] is not None else ""),
                         status(f >= 0.70)))
    cases = res.get("copy", {}).get("cases", {})
    if cases:
        rs = [(ratio(p.get("nbdx"), p.get("nbdcopy"), True), label) for label, p in cases.items()]
        got = [x for x in rs if x[0] is not None]
        if got:
            worst = min(got)
            rows.append(("3, 7", "nbdx copy -C 4 ≥ nbdcopy -C 4 (aim 1.2×), to and from nbdkit memory",
                         f"lowest {worst[0]:.2f}× ({worst[1]}); all: " + " · ".join(f"{r:.2f}" for r, _ in got),
                         status(worst[0] >= 1.0) + (" (aim 1.2× met)" if worst[0] >= 1.2 else "")))
    else:
        rows.append(("3, 7", "nbdx copy -C 4 ≥ nbdcopy -C 4", res.get("copy", {}).get("note", "not measured"), "n/a"))
    for issue, name, what in (("3", "copy", "bench/copy.sh: nbdx copy vs nbdcopy (more cases)"),
                              ("4", "kernel", "/dev/nbdN throughput, nbdx vs nbdkit (in the VM)"),
                              ("5", "tls", "TLS vs plaintext throughput, nbdx and nbdkit"),
                              ("9", "s3", "S3: ≥1.1× nbdkit-S3 writes, ≥1.2× reads, ≥5× its 4K random-read IOPS")):
        have = os.path.exists(os.path.join(ROOT, "bench", "results", f"{name}.md"))
        rows.append((issue, what, f"see [{name}](#{name}-benchmark) below" if have else f"bench/results/{name}.md missing",
                     "see below" if have else "n/a"))
    return rows


def scaling_tables(res):
    sc = res.get("scaling", {})
    if not sc:
        return []
    out = []
    kinds = [k for k in ("nbdx", "nbdkit") if any(k in v for v in sc.values())]

    def table(prefix, label, points, fmtp):
        metrics = [("nbdcopy-write", "write MiB/s"), ("nbdcopy-read", "read MiB/s"), ("randread-qd8", "4K randread IOPS")]
        metrics = [m for m in metrics if any(k.startswith(prefix + "|") and k.endswith("|" + m[0]) for k in sc)]
        hdr = f"| {label} | " + " | ".join(f"{k} {m}" for _, m in metrics for k in kinds) + " | " + \
              " | ".join(f"nbdx vs nbdkit {m.split()[0]}" for _, m in metrics) + " |"
        out.append(hdr)
        out.append("|---:|" + "---:|" * (len(metrics) * len(kinds) + len(metrics)))
        for p in points:
            cells = []
            for key, _ in metrics:
                per = sc.get(f"{prefix}|{p}|{key}", {})
                cells += [cell(per.get(k), "") for k in kinds]
            pers = [sc.get(f"{prefix}|{p}|{key}", {}) for key, _ in metrics]
            rs = [fmt_ratio(ratio(per.get("nbdx"), per.get("nbdkit"), True)) for per in pers]
            out.append(f"| {fmtp(p)} | " + " | ".join(cells) + " | " + " | ".join(rs) + " |")
        out.append("")

    conns = res["config"]["conns"]
    out.append(f"Medians of {min(3, res['config']['rounds'])} round(s), the two servers alternating.\n")
    out.append("Connections (memory backend, Unix socket): `nbdcopy -C N -T N` (N connections, N threads; "
               "256 KiB requests) and fio with N jobs of one connection each at QD8.\n")
    table("conns", "connections", conns, str)
    out.append("Request size (memory backend, Unix socket): `nbdcopy -C 4 -T 4 --request-size=S "
               "--queue-size=max(16M,4·S)`.\n")
    table("reqsize", "request size", res["config"]["request_sizes"], fmt_size)
    return out


def profile_section(res):
    out = []
    for p in res.get("profiles", []):
        out.append(f"**{p['kind']}**, {p.get('backend', 'memory')} backend — {p['workload']} "
                   f"({p.get('samples') or '?'} samples, server CPU {p.get('cpu_s', '?')} s, "
                   f"{p['kernel_pct']}% in the kernel)" + (f" — [flamegraph]({p['svg']})" if p.get("svg") else "") + "\n")
        out.append("| self % | where | symbol |")
        out.append("|---:|---|---|")
        for pct, dso, ring, sym in p["top"]:
            sym = sym.replace("|", "\\|")
            if len(sym) > 90:
                sym = sym[:87] + "…"
            out.append(f"| {pct:.1f} | {'kernel' if ring == 'k' else dso} | `{sym}` |")
        out.append("")
    return out


def env_section(res):
    e, out = res["env"], []
    out.append("| | |")
    out.append("|---|---|")
    for k, v in e.items():
        out.append(f"| {k} | {v} |")
    cpu = res.get("cpu", {})
    if cpu:
        out.append("")
        out.append("CPU taken by other processes while measuring (machine busy time minus this run's own processes; "
                   "above ~10% the numbers are disturbed):\n")
        out.append("| section | duration s | other processes | steal | this run | load average before | after |")
        out.append("|---|---:|---:|---:|---:|---|---|")
        for name, c in cpu.items():
            flag = " ⚠" if c["foreign_share"] > 0.10 else ""
            out.append(f"| {name} | {c['elapsed_s']:.0f} | {c['foreign_share']:.0%}{flag} | {c['steal_share']:.0%} | "
                       f"{c['own_share']:.0%} | {' '.join(f'{x:.2f}' for x in c['load_before'])} | "
                       f"{' '.join(f'{x:.2f}' for x in c['load_after'])} |")
    return out


def demote_headings(text):
    """Puts a Markdown file's own headings below ours (#### and deeper), code blocks untouched."""
    out, fence = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fence = not fence
        elif not fence and re.match(r"#{1,3} ", line):
            line = "###" + line
        out.append(line)
    return "\n".join(out)


def file_origin(rel):
    """'committed DATE in COMMIT' for a file as committed, else 'written DATE' (its mtime)."""
    try:
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", rel], capture_output=True,
                               text=True, timeout=20).stdout.strip()
        last = subprocess.run(["git", "-C", ROOT, "log", "-1", "--format=%cs in %h", "--", rel], capture_output=True,
                              text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        dirty, last = "?", ""
    if last and not dirty:
        return f"committed {last}"
    mtime = datetime.datetime.fromtimestamp(os.path.getmtime(os.path.join(ROOT, rel)), datetime.timezone.utc)
    return f"written {mtime:%Y-%m-%d %H:%M UTC}, not committed"


def others_section():
    """The per-issue result files of the other benchmark scripts, under their own headings."""
    d = os.path.join(ROOT, "bench", "results")
    out = []
    titles = {"copy": "Copy benchmark (bench/copy.sh, issue 3)", "kernel": "Kernel benchmark (bench/kernel.sh, issue 4)",
              "tls": "TLS benchmark (bench/tls.sh, issue 5)", "s3": "S3 benchmark (bench/s3.sh, issue 9)"}
    names = sorted(f[:-3] for f in os.listdir(d) if f.endswith(".md")) if os.path.isdir(d) else []
    for name in names:
        with open(os.path.join(d, name + ".md")) as f:
            text = f.read().strip()
        text = demote_headings(text)
        out_of = file_origin(os.path.join("bench", "results", name + ".md"))
        out.append(f'<a id="{name}-benchmark"></a>\n')
        out.append(f"### {titles.get(name, name.capitalize() + ' benchmark (bench/' + name + '.sh)')}\n")
        out.append(f"_Included from `bench/results/{name}.md` ({out_of}); produced by `bench/{name}.sh`, "
                   "not by this run._\n")
        out.append(text + "\n")
    if not names:
        out.append("No per-issue result files (`bench/results/*.md`) yet.\n")
    return out


def commands_section(res):
    size = res["config"]["size"]
    return [
        "Servers (`SOCK` a Unix socket in a temporary directory under /dev/shm; on TCP `-i 127.0.0.1 -p PORT` or "
        "the peer's equivalent with a free port; `FILE` a fresh sparse file in /dev/shm, so no disk is involved):\n",
        "```",
        f"target/release/nbdx serve memory:{size} -U SOCK        target/release/nbdx serve file:FILE -U SOCK",
        f"nbdkit -f --exit-with-parent -U SOCK memory {size}    nbdkit -f --exit-with-parent -U SOCK file FILE",
        "qemu-nbd -f raw -t --cache=writeback --aio=threads -e 8 -k SOCK FILE",
        "nbd-server -C CONFIG -p PIDFILE      # CONFIG: [generic] unixsock = SOCK (or port, listenaddr) / [bench] exportname = FILE",
        "```\n",
        f"Drivers (`SRC` = {fmt_size(size)} of random data in /dev/shm):\n",
        "```",
        "nbdcopy -C 4 -T 4 --flush SRC URI                       # seq write",
        "nbdcopy -C 4 -T 4 URI null:                             # seq read",
        "qemu-img convert -n -f raw -O raw -W -m 8 SRC URI       # seq write",
        f"qemu-img convert -n -f raw -m 8 URI --target-image-opts driver=null-co,size={size}   # seq read",
        f"fio --name=bench --ioengine=nbd --uri=URI --rw=randread|randwrite|randrw [--rwmixread=70] --bs=4k \\",
        f"    --iodepth=32|1 --numjobs=1 --runtime={res['config']['seconds']} --time_based --size={size} --norandommap --randrepeat=0",
        "nbdx copy -C 4 SRC DST    vs    nbdcopy -C 4 [--flush] SRC DST",
        "perf record -e cpu-clock -F 999 -g -p SERVER_PID        # profiles",
        "```",
        "",
        "Each server kind gets a fresh server per round; within a round the kinds run one after the other in an "
        "order that rotates from round to round. `-T 4` makes nbdcopy open all 4 connections even on machines "
        "with fewer cores (without it, nbdcopy uses at most one connection per core).",
        "",
    ]


def render(res):
    ncpu = os.cpu_count() or 1
    cfg = res["config"]
    out = ["# Performance", ""]
    out += [m + "\n" for m in load_warning(res, ncpu)]
    out += ["Generated by the benchmark suite in `bench/` — do not edit by hand (edit `bench/notes.md` for the "
            "notes, then re-render with `bench/run.sh --render-only`).", "",
            "## How to reproduce", "",
            "This file was produced by:", "", "```", cfg["command"], "```", "",
            "The full run is `bench/run.sh` (5 rounds, 1 GiB, fio 5 s per workload; 60–80 minutes on 2 cores). It "
            "installs missing tools with apt (nbdkit, libnbd-bin, qemu-utils, nbd-server, fio, linux-perf), builds "
            "`cargo build --release` and the ceiling tool `bench/ceiling`, runs every section and writes this file; "
            "`bench/run.sh --help` lists the options (`--quick` for a smoke test, `--flamegraph` for SVGs, "
            "`--with-others` to refresh the per-issue results first). "
            f"This run: {cfg['rounds']} round(s), fio {cfg['seconds']} s per workload, "
            f"{fmt_size(cfg['size'])} exports and copies.", ""]
    out += ["## Environment", ""] + env_section(res) + [""]
    out += ["## Targets", "",
            "| issue | target | measured (this run) | status |", "|---|---|---|---|"]
    for issue, what, got, st in targets(res):
        out.append(f"| {issue} | {what} | {got} | {st} |")
    out.append("")
    if res.get("ceilings"):
        out += ["## Ceilings of this machine", ""] + ceiling_tables(res)
    if res.get("servers"):
        out += ["## Servers", "", "Every server serves the same size; every workload runs against each server kind "
                "on the same machine in the same run.", ""] + server_tables(res)
        out += cpu_tables(res)
        frac = [(t, k) + socket_fraction(res, t, k) for t in cfg["transports"] for k in ("nbdcopy-read", "nbdcopy-write")]
        frac = [f for f in frac if f[2] is not None]
        if frac:
            out += ["nbdx (memory backend, nbdcopy -C 4) as a fraction of the socket ceiling (4 streams of 256 KiB "
                    "messages on the same transport, RAM to RAM; see Ceilings):", "",
                    "| transport | workload | nbdx MiB/s | ceiling MiB/s | fraction |", "|---|---|---:|---:|---:|"]
            out += [f"| {t} | {METRIC[k][1]} | {v:,.0f} | {c:,.0f} | {f:.0%} |" for t, k, f, v, c in frac]
            out.append("")
    c = res.get("copy", {})
    if c:
        out += ["## Client copy: nbdx copy vs nbdcopy", ""]
        if c.get("cases"):
            out += [f"`nbdx copy -C 4` vs `nbdcopy -C 4` (`--flush` when the destination is NBD; nbdx flushes "
                    f"always), {fmt_size(cfg['size'])}, Unix sockets, tools alternating who goes first. MiB/s.", "",
                    "| case | nbdx copy MiB/s | nbdcopy MiB/s | nbdx vs nbdcopy | nbdx copy CPU s/GiB | "
                    "nbdcopy CPU s/GiB |", "|---|---:|---:|---:|---:|---:|"]
            for label, p in c["cases"].items():
                out.append(f"| {label} | {cell(p.get('nbdx'), '')} | {cell(p.get('nbdcopy'), '')} | "
                           f"**{fmt_ratio(ratio(p.get('nbdx'), p.get('nbdcopy'), True))}** | "
                           f"{cell(p.get('nbdx|cpu'), 's')} | {cell(p.get('nbdcopy|cpu'), 's')} |")
            out.append("")
        else:
            out += [c.get("note", "not measured"), ""]
    if res.get("scaling"):
        out += ["## Scaling", ""] + scaling_tables(res)
    if res.get("profiles"):
        out += ["## Profiles", "", "`perf record -e cpu-clock` of the server process alone (all its threads) while "
                "the workload runs, Unix socket; self time per symbol (top 12). Samples are taken only while the server "
                "runs, so they measure where its CPU time goes, not where time is waited.", ""]
        out += profile_section(res)
    notes = os.path.join(ROOT, "bench", "notes.md")
    if os.path.exists(notes):
        with open(notes) as f:
            text = f.read().strip()
        out += ["## Notes: what limits each number", "", re.sub(r"^# .*\n+", "", text) + "\n"]
    out += ["## Per-issue benchmarks", ""] + others_section()
    out += ["## Commands", ""] + commands_section(res)
    if res.get("errors") or res.get("notes"):
        out += ["## Errors and skipped parts", ""]
        out += [f"- {n}" for n in res.get("notes", [])]
        out += [f"- ERROR: `{e}`" for e in res.get("errors", [])]
        out.append("")
    return "\n".join(out).rstrip() + "\n"


# --------------------------------------------------------------------------------- main --

def csv(conv=str):
    return lambda s: [conv(x) for x in s.split(",") if x]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 round, 1 s fio runs, 256M exports (a smoke test)")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 5; --quick 1)")
    ap.add_argument("--seconds", type=int, help="fio runtime per workload (default 5; --quick 1)")
    ap.add_argument("--size", type=parse_size, help="export and copy size (default 1G; --quick 256M)")
    ap.add_argument("--sections", type=csv(), default=["ceilings", "servers", "copy", "scaling", "profile"])
    ap.add_argument("--servers", type=csv(), default=KINDS)
    ap.add_argument("--backends", type=csv(), default=["memory", "file"])
    ap.add_argument("--transports", type=csv(), default=["unix", "tcp"])
    ap.add_argument("--conns", type=csv(int), default=[1, 2, 4, 8])
    ap.add_argument("--request-sizes", type=csv(parse_size),
                    default=[4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20, 32 << 20])
    ap.add_argument("--nbdx", default=os.environ.get("NBDX_BIN", os.path.join(ROOT, "target/release/nbdx")))
    ap.add_argument("--ceiling", default=os.path.join(ROOT, "target/bench-ceiling/release/ceiling"))
    ap.add_argument("--flamegraph", metavar="DIR", help="write flamegraph SVGs here (needs inferno)")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "performance.md"))
    ap.add_argument("--json", default=os.path.join(ROOT, "target", "bench", "results.json"),
                    help="write the raw results here (default target/bench/results.json)")
    ap.add_argument("--render-only", metavar="JSON", help="render the report from a results file; measure nothing")
    ap.add_argument("--workdir", help="scratch directory (default: a new one under /dev/shm, removed at the end)")
    ap.add_argument("--command", help="the command line to show in the report")
    ap.add_argument("--check-args", action="store_true", help="only check the arguments (bench/run.sh does first)")
    a = ap.parse_args()
    for s in a.sections:
        if s not in ("ceilings", "servers", "copy", "scaling", "profile"):
            ap.error(f"unknown section {s!r}")
    for k in a.servers:
        if k not in KINDS:
            ap.error(f"unknown server {k!r}")
    for b in a.backends:
        if b not in BACKEND_KINDS:
            ap.error(f"unknown backend {b!r}")
    for t in a.transports:
        if t not in ("unix", "tcp"):
            ap.error(f"unknown transport {t!r}")
    a.rounds = a.rounds or (1 if a.quick else 5)
    a.seconds = a.seconds or (1 if a.quick else 5)
    a.size = a.size or (256 * MiB if a.quick else GiB)
    if a.rounds < 1 or a.seconds < 1 or a.size < MiB:
        ap.error("--rounds and --seconds must be at least 1, --size at least 1M")

    if a.check_args:
        return 0
    if a.render_only:
        with open(a.render_only) as f:
            res = json.load(f)
    else:
        # SIGTERM/SIGHUP end the run like Ctrl-C: servers stopped, scratch files removed.
        def stop(signum, _frame):
            raise KeyboardInterrupt(f"signal {signum}")
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGHUP, stop)
        if a.flamegraph:
            a.flamegraph = os.path.abspath(a.flamegraph)
        suite = Suite(a)
        res = suite.run()
        jpath = a.json
        os.makedirs(os.path.dirname(os.path.abspath(jpath)), exist_ok=True)
        with open(jpath, "w") as f:
            json.dump(res, f, indent=1)
        log(f"raw results: {jpath}")
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        f.write(render(res))
    log(f"report: {a.out}")
    for w in load_warning(res, os.cpu_count() or 1):
        log(w.lstrip("> ").replace("**", ""))
    return 1 if res.get("errors") else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as e:
        log(f"interrupted ({e or 'Ctrl-C'}); servers stopped, scratch files removed")
        sys.exit(130)
