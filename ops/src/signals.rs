//! Signals blocked in every thread and taken synchronously with
//! `sigtimedwait`, as tini does: no handler runs, and a signal that comes
//! while the supervisor is busy (in an HTTP call) waits, pending, for the
//! next wait. Block them first, before any thread starts, and give every
//! child an empty mask back ([`unblock_all`] before its exec): a signal
//! mask survives exec, and an Envoy started with SIGTERM blocked would
//! never see it.

use std::io;
use std::mem::MaybeUninit;
use std::time::Duration;

use libc::c_int;

/// A set of signals, blocked in the calling thread (and the threads it
/// starts afterwards).
pub struct Signals {
    set: libc::sigset_t,
}

impl Signals {
    /// Blocks `signals` in the calling thread.
    pub fn block(signals: &[c_int]) -> io::Result<Signals> {
        let mut set = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: sigemptyset initialises the set; sigaddset and
        // pthread_sigmask only read and write it.
        let set = unsafe {
            if libc::sigemptyset(set.as_mut_ptr()) != 0 {
                return Err(io::Error::last_os_error());
            }
            for &signal in signals {
                if libc::sigaddset(set.as_mut_ptr(), signal) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            let set = set.assume_init();
            let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
            set
        };
        Ok(Signals { set })
    }

    /// The next pending signal of the set, waiting at most `timeout`.
    pub fn wait(&self, timeout: Duration) -> Option<c_int> {
        let ts = libc::timespec {
            // At most 68 years: fits every time_t.
            tv_sec: timeout
                .as_secs()
                .min(i32::MAX as u64)
                .try_into()
                .unwrap_or_default(),
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: the set is initialised; no siginfo is asked for.
        let signal = unsafe { libc::sigtimedwait(&self.set, std::ptr::null_mut(), &ts) };
        // -1: the timeout (EAGAIN) or a signal outside the set (EINTR).
        (signal > 0).then_some(signal)
    }
}

/// Unblocks every signal in the calling thread. Async-signal-safe: for a
/// child between fork and exec (`CommandExt::pre_exec`).
pub fn unblock_all() -> io::Result<()> {
    let mut set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set; pthread_sigmask reads it.
    let rc = unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        libc::pthread_sigmask(libc::SIG_SETMASK, set.as_ptr(), std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Sends `signal` to `pid`; false if the process is gone.
pub fn send(pid: libc::pid_t, signal: c_int) -> bool {
    // SAFETY: kill(2) has no memory arguments.
    unsafe { libc::kill(pid, signal) == 0 }
}

/// The signal's conventional name, for messages.
pub fn name(signal: c_int) -> String {
    match signal {
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGINT => "SIGINT".into(),
        libc::SIGHUP => "SIGHUP".into(),
        libc::SIGUSR1 => "SIGUSR1".into(),
        libc::SIGUSR2 => "SIGUSR2".into(),
        libc::SIGCHLD => "SIGCHLD".into(),
        libc::SIGKILL => "SIGKILL".into(),
        other => format!("signal {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocked_signal_waits_pending_until_taken() {
        // SIGUSR2 is not used by the test harness.
        let signals = Signals::block(&[libc::SIGUSR2]).unwrap();
        assert_eq!(signals.wait(Duration::from_millis(10)), None);
        // SAFETY: raise(3) to the calling thread, blocked: it stays pending.
        unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGUSR2) };
        assert_eq!(signals.wait(Duration::from_secs(1)), Some(libc::SIGUSR2));
        assert_eq!(signals.wait(Duration::from_millis(10)), None);
    }
}
