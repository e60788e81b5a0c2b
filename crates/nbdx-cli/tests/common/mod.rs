//! Fixtures of the CLI kernel tests: the `nbdx` binary, bounded runs of
//! it, `nbdx serve` as a separate process, direct I/O on `/dev/nbdN`.
//!
//! The binary is `$NBDX_BIN` (set by scripts/vm-test.sh to the static build
//! copied into the VM) or cargo's build of it. Every test needs the nbd
//! driver and root; without them it prints `SKIP: ...` and returns.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Says why a test did not run, on the real stderr: the test harness
/// captures `println!`, but not writes to the stream itself, so the skip
/// shows in every `cargo test` run.
pub fn skip(reason: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIP: {} ({reason})", std::thread::current().name().unwrap_or("?"));
}

/// Serialises the tests: they share the machine's devices.
static KERNEL: Mutex<()> = Mutex::new(());

/// Bound on any one nbdx command.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(90);

/// The test environment: a private run directory for monitor files.
pub struct Env {
    _guard: MutexGuard<'static, ()>,
    pub dir: tempfile::TempDir,
}

/// Whether the tests can run here; prints why not.
pub fn kernel_env() -> Option<Env> {
    if !Path::new("/sys/module/nbd").exists() {
        skip("no nbd driver (/sys/module/nbd does not exist)");
        return None;
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        skip("not root (the nbd driver needs CAP_SYS_ADMIN)");
        return None;
    }
    let guard = KERNEL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let dir = tempfile::Builder::new().prefix("nbdx-kernel-").tempdir_in(scratch()).unwrap();
    Some(Env { _guard: guard, dir })
}

/// Where test files go: /tmp (a tmpfs in the VM, which punches holes).
pub fn scratch() -> PathBuf {
    std::env::temp_dir()
}

/// The nbdx binary under test.
pub fn nbdx_bin() -> PathBuf {
    std::env::var_os("NBDX_BIN").map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_nbdx")), PathBuf::from)
}

impl Env {
    /// `nbdx ARGS` with the private run directory.
    pub fn nbdx<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut command = Command::new(nbdx_bin());
        command.args(args).env("NBDX_RUN_DIR", self.dir.path()).env_remove("NBDX_KERNEL_INTERFACE");
        command
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// What a finished command printed.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Asserts success and returns stdout without the final newline.
    pub fn ok(&self) -> String {
        assert!(self.status.success(), "command failed: {self:?}");
        self.stdout.trim_end().to_owned()
    }

    /// Asserts a failure with exit status 1 and a single `nbdx: ` line
    /// on stderr; returns that line.
    pub fn one_line_error(&self) -> String {
        assert_eq!(self.status.code(), Some(1), "{self:?}");
        let lines: Vec<_> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line on stderr: {self:?}");
        assert!(lines[0].starts_with("nbdx: "), "{self:?}");
        lines[0].to_owned()
    }
}

/// Runs `command` to the end, reading stdout and stderr to end of file, as
/// `$(...)` does: a process left holding either pipe fails the test.
pub fn run(mut command: Command) -> Output {
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let pipes: [Box<dyn Read + Send>; 2] =
        [Box::new(child.stdout.take().unwrap()), Box::new(child.stderr.take().unwrap())];
    for (which, mut pipe) in pipes.into_iter().enumerate() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            let _ = tx.send((which, text));
        });
    }
    let mut texts = [String::new(), String::new()];
    for _ in 0..2 {
        match rx.recv_timeout(COMMAND_TIMEOUT) {
            Ok((which, text)) => texts[which] = text,
            Err(_) => {
                let _ = child.kill();
                panic!("{command:?}: its output was not closed within {COMMAND_TIMEOUT:?}");
            }
        }
    }
    let status = wait_bounded(&mut child, COMMAND_TIMEOUT);
    let [stdout, stderr] = texts;
    println!("$ {command:?} -> {status}\n{stdout}{stderr}");
    Output { status, stdout, stderr }
}

/// Waits for `child`, killing it after `timeout`.
pub fn wait_bounded(child: &mut Child, timeout: Duration) -> ExitStatus {
    let start = Instant::now();
    let mut interval = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() >= timeout {
            let _ = child.kill();
            panic!("process {} did not exit within {timeout:?}", child.id());
        }
        std::thread::sleep(interval);
        interval = (interval * 2).min(Duration::from_millis(50));
    }
}

/// Polls `condition` until it holds, for at most `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    let mut interval = Duration::from_millis(1);
    while !condition() {
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(interval);
        interval = (interval * 2).min(Duration::from_millis(50));
    }
}

/// `nbdx serve` in a process of its own; killed when dropped.
pub struct ServeProcess {
    pub child: Child,
    /// The URI it printed.
    pub uri: String,
}

impl ServeProcess {
    /// Starts `nbdx serve ARGS` and waits until it listens (it prints its URI then).
    pub fn start(env: &Env, args: &[&str]) -> Self {
        let mut child =
            env.nbdx(["serve"].iter().chain(args)).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let uri = rx.recv_timeout(COMMAND_TIMEOUT).expect("nbdx serve printed its URI").trim().to_owned();
        assert!(!uri.is_empty(), "nbdx serve exited early: {:?}", child.try_wait());
        ServeProcess { child, uri }
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Indices of the started devices (those with `/sys/block/nbdN/pid`).
pub fn started_devices() -> BTreeSet<u32> {
    let mut started = BTreeSet::new();
    for entry in std::fs::read_dir("/sys/block").unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if let Some(index) = name.strip_prefix("nbd").and_then(|n| n.parse().ok()) {
            if Path::new(&format!("/sys/block/{name}/pid")).exists() {
                started.insert(index);
            }
        }
    }
    started
}

/// The index of `/dev/nbdN`.
pub fn index_of(dev: &str) -> u32 {
    dev.strip_prefix("/dev/nbd").and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("not a device: {dev:?}"))
}

/// `nbdx status DEVICE --json`.
pub fn status(env: &Env, dev: &str) -> serde_json::Value {
    serde_json::from_str(&run(env.nbdx(["status", dev, "--json"])).ok()).unwrap()
}

/// `/dev/nbdN` (or any file) opened with `O_DIRECT`.
pub struct Direct(File);

const ALIGN: usize = 4096;

impl Direct {
    pub fn open(path: &str, write: bool) -> io::Result<Self> {
        OpenOptions::new().read(true).write(write).custom_flags(libc::O_DIRECT).open(path).map(Direct)
    }

    pub fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut buf = aligned(data.len());
        buf.as_mut_slice()[..data.len()].copy_from_slice(data);
        self.0.write_all_at(&buf.as_mut_slice()[..data.len()], offset)?;
        self.0.sync_all()
    }

    pub fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = aligned(len);
        self.0.read_exact_at(&mut buf.as_mut_slice()[..len], offset)?;
        Ok(buf.as_mut_slice()[..len].to_vec())
    }
}

/// A buffer whose start is aligned for `O_DIRECT`.
pub struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
}

impl AlignedBuf {
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..]
    }
}

fn aligned(len: usize) -> AlignedBuf {
    let storage = vec![0; len + ALIGN];
    let start = storage.as_ptr().align_offset(ALIGN);
    AlignedBuf { storage, start }
}

/// Deterministic test data.
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (state >> 16) as u8
        })
        .collect()
}

/// A file of `size` bytes whose first `filled` bytes are `pattern(filled, seed)`.
pub fn make_file(path: &Path, size: u64, filled: usize, seed: u32) {
    let file = File::create(path).unwrap();
    file.set_len(size).unwrap();
    file.write_all_at(&pattern(filled, seed), 0).unwrap();
}

/// Bytes of a file (read with the page cache: the server writes through it).
pub fn file_bytes(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    File::open(path).unwrap().read_exact_at(&mut buf, offset).unwrap();
    buf
}
