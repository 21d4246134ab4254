//! Per-worker counters. Each worker writes only its own block, which sits on its own cache
//! lines, with plain relaxed load+store (one writer, so no read-modify-write is needed);
//! readers sum the blocks at any time without stopping anyone.

#![forbid(unsafe_code)]

use core::sync::atomic::{AtomicU64, Ordering};

use crate::segment::Segment;

/// Request counters per worker, one per opcode the server knows (it assigns the indexes and
/// asserts at compile time that its opcodes fit).
pub const OPCODES: usize = 32;
/// Response counters per worker, indexed by status number (the server asserts its statuses fit).
pub const STATUSES: usize = 32;

/// A counter only its worker writes.
#[repr(transparent)]
#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`. Only the owning worker may call this (single writer).
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    /// Sets the value (for gauges).
    #[inline]
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// Reads the value.
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl core::fmt::Debug for Counter {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}", self.get())
    }
}

/// One worker's counters.
#[repr(C, align(128))]
#[derive(Debug)]
pub struct WorkerMetrics {
    /// The worker's pid, 0 if the slot is unused.
    pub pid: Counter,
    /// Which I/O backend it runs: 0 unknown, 1 io_uring, 2 epoll.
    pub backend: Counter,
    /// When it started, ms since the epoch.
    pub started_ms: Counter,
    /// Times this worker slot was restarted after a death.
    pub restarts: Counter,
    /// Connections accepted.
    pub conns_accepted: Counter,
    /// Connections open now (gauge).
    pub conns_active: Counter,
    /// Connections closed.
    pub conns_closed: Counter,
    /// Connections refused over the limit.
    pub conns_refused: Counter,
    /// Requests by opcode, indexed by the server's dense opcode index.
    pub requests: [Counter; OPCODES],
    /// Responses by status, indexed by the status number.
    pub statuses: [Counter; STATUSES],
    /// Frames refused by the decoder.
    pub bad_frames: Counter,
    /// Bytes received.
    pub bytes_in: Counter,
    /// Bytes sent.
    pub bytes_out: Counter,
    /// Pushes handed to a connection's queue.
    pub pushes_delivered: Counter,
    /// Pushes dropped (the connection was closing or gone).
    pub pushes_dropped: Counter,
    /// Connections closed because their output queue passed its bound.
    pub slow_consumer_disconnects: Counter,
    /// Connections closed for idleness.
    pub idle_timeouts: Counter,
    /// Event-loop turns (one wait for the kernel each).
    pub loop_turns: Counter,
    /// Send operations issued (io_uring: SENDs submitted; epoll: send calls).
    pub sends: Counter,
    /// Cross-worker chat wake-ups issued (at most one per turn that published).
    pub chat_wakes: Counter,
    /// TLS handshakes completed.
    pub tls_handshakes: Counter,
    /// Connections closed on a TLS error (not TLS, a bad record, a refused certificate, an
    /// alert from the peer).
    pub tls_errors: Counter,
    /// Connections closed because their TLS handshake did not finish in time.
    pub tls_handshake_timeouts: Counter,
    /// Cluster node: CHAT_SENDs answered ERR_TIMEOUT because the stream did not order them in
    /// time.
    pub cluster_send_timeouts: Counter,
}
crate::layout!(WorkerMetrics, 768, 128);

/// The metrics tables of a segment.
#[derive(Clone, Copy)]
pub struct Metrics<'s> {
    workers: &'s [WorkerMetrics],
}

impl core::fmt::Debug for Metrics<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Metrics")
            .field("workers", &self.workers.len())
            .finish()
    }
}

impl<'s> Metrics<'s> {
    /// The metrics of `seg` (read-only segments included).
    pub fn of(seg: &'s Segment) -> Metrics<'s> {
        Metrics {
            workers: seg.metrics_blocks(),
        }
    }

    /// Worker `i`'s block.
    pub fn worker(&self, i: usize) -> Option<&'s WorkerMetrics> {
        self.workers.get(i)
    }

    /// Every block.
    pub fn workers(&self) -> &'s [WorkerMetrics] {
        self.workers
    }
}
