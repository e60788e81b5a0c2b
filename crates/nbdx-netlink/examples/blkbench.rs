//! `blkbench DEVICE MODE BLOCK THREADS SECONDS`: a minimal fio for
//! `bench/kernel.sh`, static so it runs in the test VM.
//!
//! MODE is `seq-read`, `seq-write`, `rand-read`, `rand-write` or `fill`.
//! Each of THREADS threads (the queue depth) issues BLOCK-sized `O_DIRECT`
//! requests for SECONDS seconds: sequential modes on a stripe of the device
//! of their own, random modes at uniformly random aligned offsets; `fill`
//! writes every block of the device once, sequentially, however long that
//! takes. Writes end with one fsync per thread, counted in the time.
//! Prints one line:
//!
//! ```text
//! seq-read bs=1048576 threads=1 secs=5.00 MiB/s=180.2 IOPS=180
//! ```

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 6 {
        eprintln!("usage: blkbench DEVICE seq-read|seq-write|rand-read|rand-write|fill BLOCK THREADS SECONDS");
        std::process::exit(2);
    }
    let (path, mode) = (&args[1], args[2].as_str());
    let parse = |s: &str| s.parse::<u64>().unwrap_or_else(|_| panic!("not a number: {s}"));
    let (block, threads, seconds) = (parse(&args[3]), parse(&args[4]), parse(&args[5]));
    let fill = mode == "fill";
    let write = fill || mode.ends_with("write");
    let random = mode.starts_with("rand");
    let file = OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    let size = device_size(&file);
    let blocks = size / block;
    let stripe = blocks / threads;
    let duration = Duration::from_secs(seconds);
    let start = Instant::now();
    let done: u64 = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let file = &file;
                scope.spawn(move || {
                    let mut buf = Aligned::new(block as usize);
                    buf.slice().iter_mut().enumerate().for_each(|(i, b)| *b = (i as u8) ^ (t as u8));
                    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ (t + 1);
                    let mut n = 0u64;
                    while if fill { n < stripe } else { start.elapsed() < duration } {
                        let index = if random {
                            rng ^= rng << 13;
                            rng ^= rng >> 7;
                            rng ^= rng << 17;
                            rng % blocks
                        } else {
                            t * stripe + n % stripe
                        };
                        let offset = index * block;
                        let result = match write {
                            true => file.write_all_at(buf.slice(), offset),
                            false => file.read_exact_at(buf.slice(), offset),
                        };
                        result.unwrap_or_else(|e| panic!("{mode} at {offset}: {e}"));
                        n += 1;
                    }
                    if write {
                        file.sync_all().unwrap();
                    }
                    n
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    let secs = start.elapsed().as_secs_f64();
    let mib = (done * block) as f64 / secs / f64::from(1 << 20);
    println!("{mode} bs={block} threads={threads} secs={secs:.2} MiB/s={mib:.1} IOPS={:.0}", done as f64 / secs);
}

/// The size of a block device (or file) in bytes.
fn device_size(file: &File) -> u64 {
    use std::io::{Seek, SeekFrom};
    let mut file = file;
    file.seek(SeekFrom::End(0)).expect("seekable device")
}

/// A buffer aligned for `O_DIRECT`.
struct Aligned {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Self {
        let storage = vec![0; len + 4096];
        let start = storage.as_ptr().align_offset(4096);
        Aligned { storage, start, len }
    }

    fn slice(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
}
