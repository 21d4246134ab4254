//! What the workspace's tests share, in one place (a dev-dependency of the crates whose tests
//! need it):
//! - [`server`]: the real `uring-server` on a free port with its own shared memory, and a client
//!   that fails the test on protocol errors ([`Server`], [`Client`], request helpers);
//! - [`wait_until`]: every wait has a deadline and says what it waited for;
//! - [`client_on_worker`]: a connection that SO_REUSEPORT landed on a given worker;
//! - [`ScratchDir`] (bench-client's): a directory removed on drop;
//! - [`unique_name`]: names no other test, process or run uses (segments, data directories).
//!
//! Everything here panics on failure: it is for tests.

#![allow(clippy::unwrap_used)]
// The server and client wrappers hold launcher and socket state that has no useful Debug.
#![allow(missing_debug_implementations)]

pub mod nats;
pub mod server;

pub use bench_client::scratch::ScratchDir;
pub use nats::*;
pub use server::*;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A name no other test in this process, and no other process, uses.
pub fn unique_name(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "it-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Polls `done` every 5 ms until it is true; fails the test naming `what` if `limit` passes.
pub fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A connection (not logged in) that the kernel's SO_REUSEPORT spreading gave to worker `w`;
/// fails the test if none lands there within 20 s.
pub fn client_on_worker(server: &Server, w: u16) -> Client {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut c = server.client();
        if c.worker() == w {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "no connection landed on worker {w} in 20 s"
        );
    }
}
