//! The chat wake-up: a futex word in the segment that every worker can sleep on (directly, or
//! through io_uring's FUTEX_WAIT on kernels that have it), bumped and woken after every room
//! event; and, for workers whose loop is epoll (or a kernel without io_uring futex ops), one
//! eventfd per worker, which the master creates before forking so every worker holds them all.

use core::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::segment::Segment;

/// The futex word workers wait on.
pub fn epoch(seg: &Segment) -> &AtomicU32 {
    &seg.globals().chat_epoch
}

/// Bumps the epoch and wakes every waiter, in any process.
pub fn notify(seg: &Segment) {
    let word = epoch(seg);
    word.fetch_add(1, Ordering::Release);
    wake_word(word);
}

/// Sleeps while the epoch equals `seen`, at most `timeout`; returns the epoch now.
pub fn wait(seg: &Segment, seen: u32, timeout: Duration) -> u32 {
    let word = epoch(seg);
    wait_word(word, seen, timeout);
    word.load(Ordering::Acquire)
}

/// Wakes every process sleeping on `word` (a futex word in shared memory).
pub(crate) fn wake_word(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE on a valid, aligned u32 in shared memory; the call reads nothing else.
    // Not FUTEX_PRIVATE: the waiters are in other processes.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            core::ptr::null::<libc::timespec>(),
        );
    }
}

/// Sleeps while `word` holds `seen`, at most `timeout` (spurious returns are possible: the
/// caller re-reads the word).
pub(crate) fn wait_word(word: &AtomicU32, seen: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: FUTEX_WAIT on a valid, aligned u32 in shared memory with a relative timeout that
    // outlives the call. Spurious wake-ups and EAGAIN are fine: the caller re-reads the word.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            seen,
            &ts as *const libc::timespec,
        );
    }
}

/// One eventfd per worker, created by the master before forking, so that every worker (and every
/// replacement, forked later from the same master) can signal every other.
#[derive(Debug)]
pub struct WakeFds {
    fds: Vec<nix::sys::eventfd::EventFd>,
}

impl WakeFds {
    /// `workers` non-blocking eventfds. Not close-on-exec on purpose: forked workers inherit them.
    pub fn new(workers: usize) -> nix::Result<WakeFds> {
        let fds = (0..workers)
            .map(|_| {
                nix::sys::eventfd::EventFd::from_flags(nix::sys::eventfd::EfdFlags::EFD_NONBLOCK)
            })
            .collect::<nix::Result<Vec<_>>>()?;
        Ok(WakeFds { fds })
    }

    /// Worker `i`'s eventfd, to register with its epoll.
    pub fn fd(&self, i: usize) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.fds.get(i).map(AsFd::as_fd)
    }

    /// Signals every worker's eventfd. A full counter (EAGAIN) already means "wake up".
    pub fn notify_all(&self) {
        for fd in &self.fds {
            let _ = fd.write(1);
        }
    }

    /// Clears worker `i`'s eventfd after a wake-up; returns how many signals it had collected.
    pub fn drain(&self, i: usize) -> u64 {
        self.fds.get(i).and_then(|fd| fd.read().ok()).unwrap_or(0)
    }
}

/// Wakes every worker: the futex word for io_uring loops, and the eventfds if given.
pub fn notify_all(seg: &Segment, fds: Option<&WakeFds>) {
    notify(seg);
    if let Some(f) = fds {
        f.notify_all();
    }
}
