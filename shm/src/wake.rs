//! The chat wake-up: a futex word in the segment that every worker can sleep on (directly, or
//! through io_uring's FUTEX_WAIT on kernels that have it), bumped and woken after every room
//! event. The epoll backend uses eventfds the master creates before forking; see the server.

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

/// Sleeps while the epoch equals `seen`, at most `timeout`; returns the epoch now.
pub fn wait(seg: &Segment, seen: u32, timeout: Duration) -> u32 {
    let word = epoch(seg);
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
    word.load(Ordering::Acquire)
}
