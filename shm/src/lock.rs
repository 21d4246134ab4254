//! A process-shared, robust mutex that lives inside the segment.
//!
//! It is glibc's `pthread_mutex_t` with `PTHREAD_PROCESS_SHARED` and `PTHREAD_MUTEX_ROBUST`:
//! the kernel keeps, per thread, a list of the robust mutexes it holds, and when the thread dies
//! by any means (SIGKILL included) it marks each one `OWNER_DIED` and wakes a waiter. The next
//! locker gets the lock with [`Locked::OwnerDied`], repairs what the dead owner left half done,
//! and calls [`RobustMutex::mark_consistent`]. The kernel only reports the death; repairing the
//! data is the caller's job (see `ledger/intent.rs`).

use core::cell::UnsafeCell;
use core::fmt;
use std::time::Duration;

/// How a lock was acquired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Locked {
    /// The previous owner unlocked it normally.
    Clean,
    /// The previous owner died holding it: the data it guards may be half updated. Repair it,
    /// then call [`RobustMutex::mark_consistent`] before unlocking.
    OwnerDied,
}

/// Why a lock could not be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LockError {
    /// A dead owner's lock was unlocked without being marked consistent; it can never be taken
    /// again. Only a bug in this crate leads here.
    NotRecoverable,
    /// The timeout passed.
    TimedOut,
    /// Any other error number from pthreads.
    Os(i32),
}

impl fmt::Display for LockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockError::NotRecoverable => f.write_str("lock is not recoverable (ENOTRECOVERABLE)"),
            LockError::TimedOut => f.write_str("timed out waiting for a lock"),
            LockError::Os(e) => write!(f, "pthread mutex error {e}"),
        }
    }
}

impl std::error::Error for LockError {}

/// A robust, process-shared mutex, placed in shared memory and initialised once by the segment's
/// creator.
#[repr(C)]
pub struct RobustMutex {
    inner: UnsafeCell<libc::pthread_mutex_t>,
}
crate::layout!(RobustMutex, 40, 8);

// SAFETY: the mutex is designed for concurrent use from many threads and processes; every access
// goes through pthread calls, which synchronise internally.
unsafe impl Sync for RobustMutex {}

impl fmt::Debug for RobustMutex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RobustMutex")
    }
}

fn check(rc: libc::c_int) -> Result<(), LockError> {
    match rc {
        0 => Ok(()),
        libc::ENOTRECOVERABLE => Err(LockError::NotRecoverable),
        libc::ETIMEDOUT => Err(LockError::TimedOut),
        e => Err(LockError::Os(e)),
    }
}

fn outcome(rc: libc::c_int) -> Result<Locked, LockError> {
    match rc {
        0 => Ok(Locked::Clean),
        libc::EOWNERDEAD => Ok(Locked::OwnerDied),
        e => check(e).map(|()| Locked::Clean),
    }
}

impl RobustMutex {
    /// Initialises the mutex in place.
    ///
    /// # Safety
    ///
    /// `this` must point to writable memory of `size_of::<RobustMutex>()` bytes, suitably
    /// aligned, that no other thread or process uses until this returns, and that is not an
    /// initialised mutex someone holds.
    pub unsafe fn init(this: *mut RobustMutex) -> Result<(), LockError> {
        let mut attr = core::mem::MaybeUninit::<libc::pthread_mutexattr_t>::uninit();
        // SAFETY: `attr` is local; each call gets a pointer to it, and it is initialised by the
        // first call before the others read it. `this` is valid per the caller's contract.
        unsafe {
            check(libc::pthread_mutexattr_init(attr.as_mut_ptr()))?;
            let result = (|| {
                check(libc::pthread_mutexattr_setpshared(
                    attr.as_mut_ptr(),
                    libc::PTHREAD_PROCESS_SHARED,
                ))?;
                check(libc::pthread_mutexattr_setrobust(
                    attr.as_mut_ptr(),
                    libc::PTHREAD_MUTEX_ROBUST,
                ))?;
                check(libc::pthread_mutex_init(
                    UnsafeCell::raw_get(core::ptr::addr_of!((*this).inner)),
                    attr.as_ptr(),
                ))
            })();
            libc::pthread_mutexattr_destroy(attr.as_mut_ptr());
            result
        }
    }

    fn raw(&self) -> *mut libc::pthread_mutex_t {
        self.inner.get()
    }

    /// Blocks until the lock is held.
    pub fn lock(&self) -> Result<Locked, LockError> {
        // SAFETY: the mutex was initialised by the segment's creator before any process could
        // reach it, and lives as long as the mapping `self` borrows from.
        outcome(unsafe { libc::pthread_mutex_lock(self.raw()) })
    }

    /// Takes the lock if it is free; `Ok(None)` if another thread holds it.
    pub fn try_lock(&self) -> Result<Option<Locked>, LockError> {
        // SAFETY: as in `lock`.
        match unsafe { libc::pthread_mutex_trylock(self.raw()) } {
            libc::EBUSY => Ok(None),
            rc => outcome(rc).map(Some),
        }
    }

    /// Blocks until the lock is held or `timeout` passes.
    pub fn lock_timeout(&self, timeout: Duration) -> Result<Locked, LockError> {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `now` is a valid timespec to write into.
        unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut now) };
        let total_ns = now.tv_nsec as u128 + timeout.subsec_nanos() as u128;
        let deadline = libc::timespec {
            tv_sec: now.tv_sec
                + timeout.as_secs() as libc::time_t
                + (total_ns / 1_000_000_000) as libc::time_t,
            tv_nsec: (total_ns % 1_000_000_000) as libc::c_long,
        };
        // SAFETY: as in `lock`; `deadline` outlives the call.
        outcome(unsafe { libc::pthread_mutex_timedlock(self.raw(), &deadline) })
    }

    /// Declares the data repaired after [`Locked::OwnerDied`]. Must be called while holding the
    /// lock, before unlocking.
    pub fn mark_consistent(&self) -> Result<(), LockError> {
        // SAFETY: as in `lock`; the caller holds the lock.
        check(unsafe { libc::pthread_mutex_consistent(self.raw()) })
    }

    /// Releases the lock. Must be called by the thread that holds it.
    pub fn unlock(&self) -> Result<(), LockError> {
        // SAFETY: as in `lock`; the caller holds the lock.
        check(unsafe { libc::pthread_mutex_unlock(self.raw()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boxed() -> Box<RobustMutex> {
        let mut b: Box<core::mem::MaybeUninit<RobustMutex>> = Box::new_uninit();
        // SAFETY: the box is ours alone, aligned and sized for a RobustMutex.
        unsafe {
            RobustMutex::init(b.as_mut_ptr()).expect("init");
            b.assume_init()
        }
    }

    #[test]
    fn lock_try_lock_unlock() {
        let m = boxed();
        assert_eq!(m.lock(), Ok(Locked::Clean));
        let m2: &RobustMutex = &m;
        std::thread::scope(|s| {
            s.spawn(|| assert_eq!(m2.try_lock(), Ok(None)));
        });
        m.unlock().expect("unlock");
        assert_eq!(m.try_lock(), Ok(Some(Locked::Clean)));
        m.unlock().expect("unlock");
    }

    #[test]
    fn a_thread_that_exits_holding_the_lock_hands_over_owner_died() {
        let m = boxed();
        let m2: &RobustMutex = &m;
        std::thread::scope(|s| {
            s.spawn(|| assert_eq!(m2.lock(), Ok(Locked::Clean)));
        });
        // The thread exited holding it: the kernel marked it OWNER_DIED.
        assert_eq!(m.lock(), Ok(Locked::OwnerDied));
        m.mark_consistent().expect("consistent");
        m.unlock().expect("unlock");
        assert_eq!(m.lock(), Ok(Locked::Clean));
        m.unlock().expect("unlock");
    }

    #[test]
    fn lock_timeout_times_out() {
        let m = boxed();
        let m2: &RobustMutex = &m;
        assert_eq!(m.lock(), Ok(Locked::Clean));
        std::thread::scope(|s| {
            s.spawn(|| {
                assert_eq!(
                    m2.lock_timeout(Duration::from_millis(20)),
                    Err(LockError::TimedOut)
                )
            });
        });
        m.unlock().expect("unlock");
    }
}
