//! `--exit-with-parent`: stop serving when the process that started nbdx
//! exits, like `nbdkit --exit-with-parent`.
//!
//! On Linux this is `prctl(PR_SET_PDEATHSIG, SIGTERM)`: the kernel sends
//! SIGTERM, which starts the usual orderly shutdown (the signal handlers
//! are installed first, so it is never fatal). The kernel ties the signal
//! to the *thread* that forked nbdx, not to the whole parent process: a
//! multi-threaded parent must start nbdx from a thread that lives as long
//! as it wants nbdx to (usually its main thread). Other systems are not
//! supported.

use crate::util::CliResult;

/// The parent process, as seen when nbdx started.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Parent {
    pid: u32,
}

impl Parent {
    /// The current parent. Call it early: if the parent dies before
    /// [`exit_with`](Self::exit_with), the change of parent gives it away.
    pub(crate) fn current() -> Self {
        Self { pid: std::os::unix::process::parent_id() }
    }

    /// Asks for SIGTERM when the parent exits. Returns `false` when it has
    /// already exited (nbdx was adopted by another process meanwhile).
    #[cfg(target_os = "linux")]
    pub(crate) fn exit_with(self) -> CliResult<bool> {
        // SAFETY: PR_SET_PDEATHSIG takes a signal number by value; no
        // memory is passed to the kernel.
        let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong, 0, 0, 0) };
        if rc != 0 {
            return Err(format!("--exit-with-parent: prctl: {}", std::io::Error::last_os_error()));
        }
        // Set after the parent died: the signal will never come.
        Ok(std::os::unix::process::parent_id() == self.pid)
    }

    /// Other systems: refused.
    #[cfg(not(target_os = "linux"))]
    pub(crate) fn exit_with(self) -> CliResult<bool> {
        Err("--exit-with-parent is only supported on Linux".into())
    }
}
