//! Running blocking system calls from async device methods.

use tokio::runtime::{Handle, RuntimeFlavor};

/// Runs `f`, a call that may block, without stalling other tasks of a
/// multi-threaded tokio runtime.
///
/// Devices backed by files or block devices make syscalls that can block
/// for milliseconds (`pread`, `fdatasync`, `fallocate`). Moving them to
/// `spawn_blocking` would force every buffer to be owned and `'static`, so
/// a read could no longer land directly in the server's pooled buffer.
/// Instead this uses [`tokio::task::block_in_place`] on the
/// multi-threaded runtime: the worker hands its queue to another thread and
/// becomes a blocking thread for the duration of the call, borrowing
/// buffers as they are. On a current-thread runtime (where `block_in_place`
/// would panic) and outside any runtime the call runs inline.
///
/// ```
/// # async fn demo() -> std::io::Result<()> {
/// use std::os::unix::fs::FileExt;
/// let file = std::fs::File::open("/dev/zero")?;
/// let mut buf = [1u8; 16];
/// nbdx::device::run_blocking(|| file.read_exact_at(&mut buf, 0))?;
/// assert_eq!(buf, [0; 16]);
/// # Ok(()) }
/// ```
pub fn run_blocking<T>(f: impl FnOnce() -> T) -> T {
    match Handle::try_current() {
        Ok(handle) if matches!(handle.runtime_flavor(), RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    /// Generous bound that only turns a deadlock into a failure; it is never
    /// reached when the code is right.
    const DEADLOCK_GUARD: Duration = Duration::from_secs(30);

    #[test]
    fn runs_inline_outside_any_runtime() {
        let caller = std::thread::current().id();
        assert_eq!(run_blocking(|| std::thread::current().id()), caller);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn runs_inline_on_a_current_thread_runtime_instead_of_panicking() {
        let caller = std::thread::current().id();
        assert_eq!(run_blocking(|| std::thread::current().id()), caller);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_blocked_call_lets_other_tasks_of_its_worker_run() {
        // With one worker, the spawned task can only run if the blocking
        // call gave the worker's queue away: waiting inline would deadlock.
        let (tx, rx) = mpsc::channel();
        let sender = tokio::spawn(async move { tx.send(42).is_ok() });
        let got = run_blocking(|| rx.recv_timeout(DEADLOCK_GUARD));
        assert_eq!(got, Ok(42));
        assert!(sender.await.is_ok_and(|sent| sent));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn borrowed_buffers_are_filled_in_place() {
        let mut buf = vec![0u8; 4096];
        run_blocking(|| buf.fill(7));
        assert!(buf.iter().all(|&b| b == 7));
    }
}
