//! Time, injected. Timeouts (idle, frame, login challenge, flood limit, drain) run on a monotonic
//! clock that never jumps; wall time is used only for timestamps people and other processes
//! read (message times, HEARTBEAT's server time, the login lockout shared in memory). Tests give
//! the core a [`ManualClock`] and move time by hand.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Where the core reads the time.
pub trait Clock: std::fmt::Debug {
    /// Milliseconds on a monotonic clock (any origin; only differences mean anything).
    fn mono_ms(&self) -> u64;
    /// Milliseconds since the Unix epoch.
    fn wall_ms(&self) -> u64;
}

/// The real clocks: `Instant` since creation, and `SystemTime`.
#[derive(Debug)]
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    /// A clock whose monotonic origin is now.
    pub fn new() -> SystemClock {
        SystemClock {
            origin: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn mono_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    fn wall_ms(&self) -> u64 {
        wall_ms()
    }
}

/// Wall clock in milliseconds since the Unix epoch.
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A clock that moves only when told: for tests. Clones share the same time.
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    mono_ms: Arc<AtomicU64>,
    wall_ms: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock at monotonic 0 and the given wall time.
    pub fn new(wall_ms: u64) -> ManualClock {
        let c = ManualClock::default();
        c.wall_ms.store(wall_ms, Ordering::Relaxed);
        c
    }

    /// Moves both clocks forward by `ms`.
    pub fn advance(&self, ms: u64) {
        self.mono_ms.fetch_add(ms, Ordering::Relaxed);
        self.wall_ms.fetch_add(ms, Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn mono_ms(&self) -> u64 {
        self.mono_ms.load(Ordering::Relaxed)
    }

    fn wall_ms(&self) -> u64 {
        self.wall_ms.load(Ordering::Relaxed)
    }
}
