//! The shared state every worker process sees: one POSIX shared-memory segment holding the
//! ledger, users, rooms and metrics, and the robust locks that keep them consistent when a
//! process is killed at any instruction.
//!
//! This crate owns the segment's layout and every operation on it. It knows nothing of sockets
//! or frames beyond the status codes its errors map to. Every table is fixed-size at creation:
//! nothing allocates in shared memory afterwards, and a full table is an error, never a panic.
//!
//! `unsafe` lives in [`segment`] (the mapping, and one safe typed accessor per table: the only
//! place that turns offsets into slices), [`lock`] (pthreads) and [`wake`] (futex); everything
//! else works through the safe views they hand out, whose fields are all atomics or locks. The
//! other modules carry `#![forbid(unsafe_code)]`.

#![warn(missing_docs)]

/// Asserts at compile time the size and alignment of a type every process maps: each shared
/// struct has one, next to its definition, so a change to the layout fails the build until the
/// figure (and `segment::LAYOUT_VERSION`) are updated on purpose.
macro_rules! layout {
    ($t:ty, $size:expr, $align:expr) => {
        const _: () = assert!(
            core::mem::size_of::<$t>() == $size && core::mem::align_of::<$t>() == $align,
            concat!(
                "the shared layout of ",
                stringify!($t),
                " changed: update its size and LAYOUT_VERSION"
            )
        );
    };
}
pub(crate) use layout;

pub mod cluster;
pub mod journal;
pub mod ledger;
pub mod limits;
pub mod lock;
pub mod metrics;
pub mod rooms;
pub mod segment;
pub mod users;
pub mod wake;
mod words;

pub use ledger::{Applied, AuditReport, Ledger, LedgerError, TxnRecord};
pub use lock::{LockError, Locked};
pub use metrics::{Metrics, WorkerMetrics};
pub use rooms::{RoomError, Rooms};
pub use segment::{Capacities, LockMode, Previous, Segment, ShmError};
pub use users::{Credentials, SessionId, UserError, Users};
