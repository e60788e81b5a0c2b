//! `ceiling`: what this machine can move at all, as a yardstick for the NBD numbers of
//! bench/run.sh. Std only, so it builds offline in seconds.
//!
//! ```text
//! ceiling stream   --transport unix|tcp --size BYTES [--streams N] [--span BYTES] [--ring BYTES] [--seconds S]
//! ceiling rr       --transport unix|tcp --size BYTES [--depth D] [--dir read|write] [--seconds S]
//! ceiling memcpy   --size BYTES [--threads N] [--seconds S]
//! ```
//!
//! * `stream`: N independent connected socket pairs; on each, one thread writes messages of
//!   BYTES from a buffer and another reads them into a buffer of BYTES (the two copies an NBD
//!   read reply costs: server buffer to kernel, kernel to client buffer). Reports MiB/s.
//!   `--span`: the writers send consecutive messages from a shared region of that size (default:
//!   one message, so the source stays in the cache); `--ring`: each reader receives into a ring
//!   of that size (default one message). Large values model a transfer from and to RAM.
//! * `rr`: request/reply exchange shaped like NBD: 32-byte requests, 16-byte replies, BYTES of
//!   payload on the reply (`--dir read`) or on the request (`--dir write`), up to D requests in
//!   flight; the server side is one thread that does no work per request. Reports replies/s and
//!   the mean round trip (at depth 1, the latency floor of a 4 KiB QD1 NBD read).
//! * `memcpy`: N threads copying BYTES from one buffer to another. Reports MiB/s (bytes copied).
//!
//! Every mode warms up for a fifth of the duration (at most 0.5 s), then measures for S seconds
//! and prints one JSON object on stdout.

use std::hint::black_box;
use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

const REQUEST_HEADER: usize = 32;
const REPLY_HEADER: usize = 16;

#[derive(Clone, Copy, PartialEq)]
enum Transport {
    Unix,
    Tcp,
}

enum Sock {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Sock {
    fn try_clone(&self) -> io::Result<Sock> {
        Ok(match self {
            Sock::Unix(s) => Sock::Unix(s.try_clone()?),
            Sock::Tcp(s) => Sock::Tcp(s.try_clone()?),
        })
    }

    fn shutdown_write(&self) {
        let _ = match self {
            Sock::Unix(s) => s.shutdown(Shutdown::Write),
            Sock::Tcp(s) => s.shutdown(Shutdown::Write),
        };
    }
}

impl Read for Sock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Sock::Unix(s) => s.read(buf),
            Sock::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Sock {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sock::Unix(s) => s.write(buf),
            Sock::Tcp(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A connected pair of stream sockets (Unix socketpair or TCP over 127.0.0.1).
fn pair(t: Transport) -> io::Result<(Sock, Sock)> {
    match t {
        Transport::Unix => {
            let (a, b) = UnixStream::pair()?;
            Ok((Sock::Unix(a), Sock::Unix(b)))
        }
        Transport::Tcp => {
            let l = TcpListener::bind("127.0.0.1:0")?;
            let a = TcpStream::connect(l.local_addr()?)?;
            let (b, _) = l.accept()?;
            a.set_nodelay(true)?;
            b.set_nodelay(true)?;
            Ok((Sock::Tcp(a), Sock::Tcp(b)))
        }
    }
}

struct Opts {
    mode: String,
    transport: Transport,
    size: usize,
    streams: usize,
    depth: usize,
    write_dir: bool,
    span: usize,
    ring: usize,
    seconds: f64,
}

fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                _ => return Err(format!("bad size suffix in '{s}'")),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    let n: usize = num.parse().map_err(|_| format!("bad size '{s}'"))?;
    n.checked_mul(mult).filter(|&v| v > 0).ok_or_else(|| format!("bad size '{s}'"))
}

fn parse_args() -> Result<Opts, String> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().ok_or("missing mode (stream, rr, memcpy)")?;
    if !matches!(mode.as_str(), "stream" | "rr" | "memcpy") {
        return Err(format!("unknown mode '{mode}' (stream, rr, memcpy)"));
    }
    let mut o = Opts {
        mode,
        transport: Transport::Unix,
        size: 256 << 10,
        streams: 1,
        depth: 1,
        write_dir: false,
        span: 0,
        ring: 0,
        seconds: 2.0,
    };
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--transport" => {
                o.transport = match val()?.as_str() {
                    "unix" => Transport::Unix,
                    "tcp" => Transport::Tcp,
                    t => return Err(format!("unknown transport '{t}'")),
                }
            }
            "--size" => o.size = parse_size(&val()?)?,
            "--streams" | "--threads" => o.streams = val()?.parse().map_err(|_| "bad count")?,
            "--depth" => o.depth = val()?.parse().map_err(|_| "bad depth")?,
            "--dir" => {
                o.write_dir = match val()?.as_str() {
                    "read" => false,
                    "write" => true,
                    d => return Err(format!("unknown direction '{d}'")),
                }
            }
            "--span" => o.span = parse_size(&val()?)?,
            "--ring" => o.ring = parse_size(&val()?)?,
            "--seconds" => o.seconds = val()?.parse().map_err(|_| "bad seconds")?,
            _ => return Err(format!("unknown argument '{a}'")),
        }
    }
    if o.streams == 0 || o.depth == 0 || !(o.seconds > 0.0 && o.seconds <= 600.0) {
        return Err("counts must be positive, seconds in (0, 600]".into());
    }
    Ok(o)
}

/// Waits until every worker has made progress (at most 30 s: buffers are being set up),
/// warms up, then returns (counter delta, elapsed seconds) over the measured window.
fn measure(counters: &[Arc<AtomicU64>], seconds: f64) -> (u64, f64) {
    let total = || counters.iter().map(|c| c.load(Ordering::Relaxed)).sum::<u64>();
    let started = Instant::now();
    while counters.iter().any(|c| c.load(Ordering::Relaxed) == 0) && started.elapsed() < Duration::from_secs(30) {
        thread::sleep(Duration::from_millis(5));
    }
    thread::sleep(Duration::from_secs_f64((seconds / 5.0).min(0.5)));
    let (c0, t0) = (total(), Instant::now());
    thread::sleep(Duration::from_secs_f64(seconds));
    let (c1, dt) = (total(), t0.elapsed().as_secs_f64());
    (c1 - c0, dt)
}

fn stream(o: &Opts) -> io::Result<String> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut counters = Vec::new();
    let mut threads = Vec::new();
    // Writers send consecutive messages out of one shared source region of `span` bytes;
    // readers receive into a ring of `ring` bytes each. Both default to one message (hot in
    // the cache); large values make the data come from and go to RAM, as in a real transfer.
    let span = (o.span.max(o.size) / o.size) * o.size;
    let ring = (o.ring.max(o.size) / o.size) * o.size;
    let source = Arc::new(vec![0x5au8; span]);
    for _ in 0..o.streams {
        let (mut tx, mut rx) = pair(o.transport)?;
        let counter = Arc::new(AtomicU64::new(0));
        counters.push(counter.clone());
        let size = o.size;
        let (stop_w, source) = (stop.clone(), source.clone());
        threads.push(thread::spawn(move || {
            let mut off = 0;
            while !stop_w.load(Ordering::Relaxed) {
                if tx.write_all(&source[off..off + size]).is_err() {
                    break;
                }
                off = (off + size) % span;
            }
            tx.shutdown_write();
        }));
        threads.push(thread::spawn(move || {
            let mut buf = vec![1u8; ring];
            let mut off = 0;
            while rx.read_exact(&mut buf[off..off + size]).is_ok() {
                black_box(&buf[off..off + size]);
                counter.fetch_add(size as u64, Ordering::Relaxed);
                off = (off + size) % ring;
            }
        }));
    }
    let (bytes, dt) = measure(&counters, o.seconds);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    Ok(format!(
        "{{\"mode\":\"stream\",\"transport\":\"{}\",\"size\":{},\"streams\":{},\"span\":{},\"ring\":{},\"seconds\":{:.3},\"bytes\":{},\"mib_per_s\":{:.1}}}",
        tname(o.transport),
        o.size,
        o.streams,
        span,
        ring,
        dt,
        bytes,
        bytes as f64 / dt / (1u64 << 20) as f64
    ))
}

fn rr(o: &Opts) -> io::Result<String> {
    let (client, server) = pair(o.transport)?;
    let (req_len, rep_len) =
        if o.write_dir { (REQUEST_HEADER + o.size, REPLY_HEADER) } else { (REQUEST_HEADER, REPLY_HEADER + o.size) };
    // Server: read a request, write its reply; no work in between.
    let srv = thread::spawn(move || {
        let mut w = match server.try_clone() {
            Ok(w) => w,
            Err(_) => return,
        };
        let mut r = BufReader::with_capacity(256 << 10, server);
        let mut req = vec![0u8; req_len];
        let rep = vec![0x5au8; rep_len];
        while r.read_exact(&mut req).is_ok() {
            if w.write_all(&rep).is_err() {
                break;
            }
        }
        w.shutdown_write();
    });
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    // In-flight window: a token goes in before a request is sent, comes out with its reply.
    let (tok_tx, tok_rx) = mpsc::sync_channel::<()>(o.depth);
    let mut cw = client.try_clone()?;
    let stop_s = stop.clone();
    let sender = thread::spawn(move || {
        let req = vec![0xa5u8; req_len];
        while !stop_s.load(Ordering::Relaxed) {
            if tok_tx.send(()).is_err() || cw.write_all(&req).is_err() {
                break;
            }
        }
        cw.shutdown_write();
    });
    let done_r = done.clone();
    let receiver = thread::spawn(move || {
        let mut r = BufReader::with_capacity(256 << 10, client);
        let mut rep = vec![0u8; rep_len];
        while r.read_exact(&mut rep).is_ok() {
            black_box(&rep);
            let _ = tok_rx.recv();
            done_r.fetch_add(1, Ordering::Relaxed);
        }
    });
    let (n, dt) = measure(&[done], o.seconds);
    stop.store(true, Ordering::Relaxed);
    for t in [sender, receiver, srv] {
        let _ = t.join();
    }
    let ops = n as f64 / dt;
    Ok(format!(
        "{{\"mode\":\"rr\",\"transport\":\"{}\",\"size\":{},\"depth\":{},\"dir\":\"{}\",\"seconds\":{:.3},\"ops\":{},\"ops_per_s\":{:.0},\"mean_rtt_us\":{:.2},\"mib_per_s\":{:.1}}}",
        tname(o.transport),
        o.size,
        o.depth,
        if o.write_dir { "write" } else { "read" },
        dt,
        n,
        ops,
        if n > 0 { o.depth as f64 * 1e6 / ops } else { 0.0 },
        ops * o.size as f64 / (1u64 << 20) as f64
    ))
}

fn memcpy(o: &Opts) -> io::Result<String> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut counters = Vec::new();
    let mut threads = Vec::new();
    for _ in 0..o.streams {
        let counter = Arc::new(AtomicU64::new(0));
        counters.push(counter.clone());
        let (size, stop) = (o.size, stop.clone());
        threads.push(thread::spawn(move || {
            let src = vec![0x5au8; size];
            let mut dst = vec![1u8; size];
            while !stop.load(Ordering::Relaxed) {
                dst.copy_from_slice(black_box(&src));
                black_box(&mut dst);
                counter.fetch_add(size as u64, Ordering::Relaxed);
            }
        }));
    }
    let (bytes, dt) = measure(&counters, o.seconds);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    Ok(format!(
        "{{\"mode\":\"memcpy\",\"size\":{},\"threads\":{},\"seconds\":{:.3},\"bytes\":{},\"mib_per_s\":{:.1}}}",
        o.size,
        o.streams,
        dt,
        bytes,
        bytes as f64 / dt / (1u64 << 20) as f64
    ))
}

fn tname(t: Transport) -> &'static str {
    match t {
        Transport::Unix => "unix",
        Transport::Tcp => "tcp",
    }
}

fn main() -> ExitCode {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("ceiling: {e}");
            eprintln!("usage: ceiling stream|rr|memcpy [--transport unix|tcp] [--size N[K|M|G]] [--streams N] [--span N] [--ring N] [--depth D] [--dir read|write] [--seconds S]");
            return ExitCode::from(2);
        }
    };
    let r = match o.mode.as_str() {
        "stream" => stream(&o),
        "rr" => rr(&o),
        _ => memcpy(&o),
    };
    match r {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ceiling: {e}");
            ExitCode::FAILURE
        }
    }
}
