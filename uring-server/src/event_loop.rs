//! The one event loop of a worker, over either backend. The backend only moves bytes: it
//! submits IO and reports what completed (io_uring) or what is ready (epoll) to the core. This
//! loop owns the policy both share: when to send, when to stop reading, when a connection is
//! closed, how the graceful stop drains, and that nothing is freed while an operation is in
//! flight.

use crate::core::Core;
use crate::stop::Shutdown;

/// What the loop asks of an I/O backend. Connections are known by the core's keys: the backend
/// registers a socket under the key [`Core::open`] returned and forgets it in
/// [`Backend::close`].
pub trait Backend {
    /// True while a send of `key`'s output is under way (io_uring: in flight; epoll: waiting
    /// for the socket to have room): the loop starts no other.
    fn sending(&self, key: usize) -> bool;
    /// True while any operation holds `key`'s socket or output: it may not be closed yet.
    fn in_flight(&self, key: usize) -> bool;
    /// Sends what [`Core::take_output`] gives for `key`, owning the buffer until the kernel is
    /// done with it (epoll: written now, as far as the socket takes, the rest kept for
    /// EPOLLOUT; io_uring: one send submitted, continued by the backend if partial).
    fn send(&mut self, core: &mut Core<'_>, key: usize);
    /// Nothing more is wanted from `key`'s peer; its output may still be flushing.
    fn stop_reading(&mut self, key: usize);
    /// Ends `key`'s IO at once and makes its close a reset (a slow consumer): in-flight
    /// operations fail and complete.
    fn reset(&mut self, key: usize);
    /// Closes `key`'s socket; nothing is in flight on it.
    fn close(&mut self, key: usize);
    /// Stops taking new connections (the graceful stop).
    fn stop_accepting(&mut self);
    /// One turn: hands the kernel what is queued, waits for at least one event (or a second),
    /// reads the clock into the core, and feeds every event to the core. Keys whose state
    /// changed go into `touched`.
    fn turn(&mut self, core: &mut Core<'_>, touched: &mut Vec<usize>) -> anyhow::Result<()>;
    /// After the drain: ends every operation still in flight, so that every connection can be
    /// closed and every buffer freed.
    fn finish(&mut self, core: &mut Core<'_>) -> anyhow::Result<()>;
}

/// How often idle connections and slow frames are swept.
const SWEEP_EVERY_MS: u64 = 1_000;

/// Runs the worker until the graceful stop has drained (or its grace ran out).
pub fn run<B: Backend>(
    core: &mut Core<'_>,
    backend: &mut B,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    let mut touched: Vec<usize> = Vec::new();
    let mut last_sweep_ms = core.now_ms();
    loop {
        if shutdown.requested() && !core.shutting_down() {
            backend.stop_accepting();
            touched.extend(core.begin_shutdown(shutdown.grace));
        }
        touched.sort_unstable();
        touched.dedup();
        for key in touched.drain(..) {
            settle(core, backend, key);
        }
        if core.drained() {
            break;
        }
        backend.turn(core, &mut touched)?;
        core.metrics().loop_turns.add(1);
        touched.extend(core.deliver());
        touched.extend(core.release_durable());
        if core.now_ms().saturating_sub(last_sweep_ms) >= SWEEP_EVERY_MS {
            last_sweep_ms = core.now_ms();
            touched.extend(core.sweep());
        }
    }
    backend.finish(core)?;
    for key in core.close_all() {
        debug_assert!(
            !backend.in_flight(key),
            "finish left an operation in flight"
        );
        backend.close(key);
    }
    Ok(())
}

/// The close policy, once for both backends: send what is queued; a closing connection reads
/// nothing more and closes once its output is flushed and nothing is in flight; an aborted one
/// is reset and closed as soon as nothing is in flight.
fn settle<B: Backend>(core: &mut Core<'_>, backend: &mut B, key: usize) {
    let Some(step) = core.step(key) else {
        return;
    };
    if step.abort {
        backend.reset(key);
        if !backend.in_flight(key) {
            core.remove(key);
            backend.close(key);
        }
        return;
    }
    if step.has_output && !backend.sending(key) {
        backend.send(core, key);
    }
    // A send may have completed at once (epoll), or failed and made the connection closing.
    let Some(step) = core.step(key) else {
        return;
    };
    if step.closing {
        backend.stop_reading(key);
        if !step.has_output && !step.holding && !backend.in_flight(key) {
            core.remove(key);
            backend.close(key);
        }
    }
}
