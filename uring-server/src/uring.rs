//! The io_uring backend: one ring per worker, created after the fork.
//!
//! Multishot accept on the worker's own listener; multishot receive into a provided buffer ring
//! (re-armed when the kernel ends it: out of buffers, or an error); sends of each connection's
//! whole pending output, one in flight per connection, its buffer owned here until the
//! completion (partial sends continued from where they stopped); a multishot timeout that ticks
//! once a second for the idle sweep. Each loop turn is one `io_uring_enter` that submits
//! everything queued and waits for at least one completion, or, after a busy fan-out turn, for
//! a batch with the kernel's min-wait (`--batch-wait-us`, docs/DESIGN.md 5.1).

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use io_uring::types::{Fd, TimeoutFlags, Timespec};
use io_uring::{cqueue, opcode, squeue, types, IoUring};

use crate::buf_ring::{BufRing, BUF_GROUP};
use crate::uring_setup::CQ_ENTRIES;
pub use crate::uring_setup::{builder, futex_supported, probe};

use crate::core::Core;
use crate::event_loop::Backend;
use crate::sockets::ByKey;

const RING_ENTRIES: u32 = 1024;
/// Buffers in the provided ring (a power of two) and the size of each.
const BUF_COUNT: u16 = 1024;
const BUF_SIZE: usize = 4096;

const KIND_SHIFT: u32 = 56;
const ACCEPT: u64 = 1 << KIND_SHIFT;
const RECV: u64 = 2 << KIND_SHIFT;
const SEND: u64 = 3 << KIND_SHIFT;
const TICK: u64 = 4 << KIND_SHIFT;
const CANCEL: u64 = 5 << KIND_SHIFT;
const WAKE: u64 = 6 << KIND_SHIFT;
/// The shutdown's cancellation of everything (a cancel of its own, told apart by its key).
const CANCEL_ALL: u64 = CANCEL | 1;

/// futex2 flags: a 32-bit futex word, shared between processes (not FUTEX2_PRIVATE).
const FUTEX2_SIZE_U32: u32 = 0x02;
const FUTEX_BITSET_MATCH_ANY: u64 = 0xFFFF_FFFF;
const KEY_MASK: u64 = (1 << 32) - 1;

/// Where a connection's multishot receive stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recv {
    /// Not armed: armed at the next turn unless the connection is closing.
    Idle,
    /// Armed: completions keep coming until one lacks `more`.
    Armed,
    /// Asked to stop (a closing connection); its last completion makes it `Stopped`.
    Cancelling,
    /// Ended for good: never armed again.
    Stopped,
}

/// Where a connection's send stands. The buffer of a send in flight belongs here, to the
/// backend, until its completion: the kernel reads it, so nothing else may move or free it (a
/// `Vec`'s heap buffer does not move when the `Vec` itself is moved, and this one is never
/// grown while in flight).
#[derive(Debug)]
enum Send {
    /// No send in flight.
    Idle,
    /// `buf[..off]` has been sent; the send of `buf[off..]` is in flight.
    InFlight { buf: Vec<u8>, off: usize },
}

/// A connection's socket and the operations in flight on it.
#[derive(Debug)]
struct Socket {
    fd: OwnedFd,
    recv: Recv,
    send: Send,
    /// The socket was shut down for a reset.
    reset: bool,
}

impl Socket {
    /// Operations in flight on it (0, 1 or 2).
    fn in_flight(&self) -> usize {
        usize::from(matches!(self.recv, Recv::Armed | Recv::Cancelling))
            + usize::from(matches!(self.send, Send::InFlight { .. }))
    }
}

/// The io_uring backend of one worker: its ring, provided buffers, listener and sockets.
pub struct UringBackend<'w> {
    ring: IoUring,
    // Declared after the ring: the kernel may write into these buffers until the ring is gone.
    bufs: BufRing,
    listener: OwnedFd,
    wake_fd: Option<BorrowedFd<'w>>,
    sockets: ByKey<Socket>,
    accepting: bool,
    accept_armed: bool,
    tick_armed: bool,
    wake_armed: bool,
    /// The tick's timespec and the eventfd read's buffer: the kernel holds pointers to them.
    tick: Box<Timespec>,
    wake_buf: Box<[u8; 8]>,
    rearm: Vec<usize>,
    cqes: Vec<cqueue::Entry>,
    /// Receives that brought bytes in the last turn.
    recvs_last_turn: usize,
    /// Sends submitted since the last wait.
    sends_queued: usize,
    /// How long a batching wait may hold completions back (µs); 0: never batch.
    batch_wait_us: u32,
}

/// A turn with fewer receives than this never makes the next wait a batching one: a loop this
/// quiet gains nothing from holding completions back.
const BATCH_BUSY_RECVS: usize = 8;

impl std::fmt::Debug for UringBackend<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringBackend")
            .field("accepting", &self.accepting)
            .finish_non_exhaustive()
    }
}

impl<'w> UringBackend<'w> {
    /// A ring for this worker (created after the fork), its provided buffers and the tick.
    pub fn new(
        listener: OwnedFd,
        wake_fd: Option<BorrowedFd<'w>>,
        batch_wait_us: u32,
    ) -> anyhow::Result<Self> {
        let ring = builder().build(RING_ENTRIES)?;
        // The batching wait needs the kernel's min-wait (6.12+); without it, it is off.
        let batch_wait_us = if batch_wait_us > 0 && !ring.params().is_feature_min_timeout() {
            tracing::warn!(
                "this kernel's io_uring has no min-wait (IORING_FEAT_MIN_TIMEOUT, 6.12+): \
                 --batch-wait-us is off"
            );
            0
        } else {
            batch_wait_us
        };
        let bufs = BufRing::new(&ring, BUF_COUNT, BUF_SIZE)?;
        let mut b = UringBackend {
            ring,
            bufs,
            listener,
            wake_fd,
            sockets: ByKey::default(),
            accepting: true,
            accept_armed: false,
            tick_armed: true,
            wake_armed: false,
            tick: Box::new(Timespec::new().sec(1)),
            wake_buf: Box::new([0u8; 8]),
            rearm: Vec::new(),
            cqes: Vec::with_capacity(CQ_ENTRIES as usize),
            recvs_last_turn: 0,
            sends_queued: 0,
            batch_wait_us,
        };
        let tick = opcode::Timeout::new(&*b.tick)
            .flags(TimeoutFlags::MULTISHOT)
            .build()
            .user_data(TICK);
        b.push(tick);
        Ok(b)
    }

    fn push(&mut self, e: squeue::Entry) {
        // SAFETY: every entry pushed here refers to memory that outlives its operation: fds
        // owned by live sockets (closed only once no operation is in flight), send buffers
        // owned by the socket's `Send::InFlight` until the send's completion, the tick's
        // timespec and the wake-up's read buffer (boxed in this backend, which outlives the
        // ring's operations: `finish` reaps them all), and the futex word (in the segment,
        // mapped for the life of the process).
        unsafe {
            while self.ring.submission().push(&e).is_err() {
                // Submission queue full: hand what is queued to the kernel, then retry.
                let _ = self.ring.submit();
            }
        }
    }

    fn arm_recv(&mut self, core: &Core<'_>, key: usize) {
        let closing = core.step(key).map_or(true, |st| st.closing);
        let Some(s) = self.sockets.get_mut(key) else {
            return;
        };
        if s.recv != Recv::Idle || closing || s.reset {
            return;
        }
        s.recv = Recv::Armed;
        let e = opcode::RecvMulti::new(Fd(s.fd.as_raw_fd()), BUF_GROUP)
            .build()
            .user_data(RECV | key as u64);
        self.push(e);
    }

    fn arm_loop_wide(&mut self, core: &Core<'_>) {
        if !self.wake_armed {
            self.wake_armed = true;
            let e = match self.wake_fd {
                Some(fd) => opcode::Read::new(Fd(fd.as_raw_fd()), self.wake_buf.as_mut_ptr(), 8)
                    .build()
                    .user_data(WAKE),
                None => {
                    let (word, seen) = core.chat_epoch();
                    opcode::FutexWait::new(
                        word.as_ptr(),
                        u64::from(seen),
                        FUTEX_BITSET_MATCH_ANY,
                        FUTEX2_SIZE_U32,
                    )
                    .build()
                    .user_data(WAKE)
                }
            };
            self.push(e);
        }
        if self.accepting && !self.accept_armed {
            let e = opcode::AcceptMulti::new(Fd(self.listener.as_raw_fd()))
                .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
                .build()
                .user_data(ACCEPT);
            self.push(e);
            self.accept_armed = true;
        }
    }

    fn accepted(&mut self, core: &mut Core<'_>, fd: OwnedFd) {
        crate::net::tune_socket(&fd);
        match core.open() {
            Ok(key) => {
                self.sockets.insert(
                    key,
                    Socket {
                        fd,
                        recv: Recv::Idle,
                        send: Send::Idle,
                        reset: false,
                    },
                );
                self.arm_recv(core, key);
            }
            // Best effort: the socket is new, so its buffer has room for one small frame.
            Err(refusal) => {
                let _ = nix::unistd::write(&fd, &refusal);
            }
        }
    }

    /// Submits the send of `buf[off..]` on `key`'s socket; the buffer is the socket's until the
    /// completion.
    fn submit_send(&mut self, key: usize, buf: Vec<u8>, off: usize) {
        let Some(s) = self.sockets.get_mut(key) else {
            return;
        };
        let fd = s.fd.as_raw_fd();
        let rest = &buf[off..];
        let (ptr, len) = (rest.as_ptr(), rest.len().min(u32::MAX as usize) as u32);
        s.send = Send::InFlight { buf, off };
        self.sends_queued += 1;
        let e = opcode::Send::new(Fd(fd), ptr, len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(SEND | key as u64);
        self.push(e);
    }

    /// A send completed with `res`: a partial one goes on from where it stopped, a whole one
    /// gives its buffer back to the core, a failed one ends the connection.
    fn send_completed(&mut self, core: &mut Core<'_>, key: usize, res: i32) {
        let Some(s) = self.sockets.get_mut(key) else {
            return;
        };
        let Send::InFlight { buf, off } = std::mem::replace(&mut s.send, Send::Idle) else {
            tracing::warn!(key, "a send completion with no send in flight");
            return;
        };
        if res < 0 || s.reset {
            core.send_failed(key);
            return;
        }
        let n = res as usize;
        core.sent(key, n);
        let off = off + n;
        if off < buf.len() {
            // The socket took part of it: the rest goes next, before anything queued since.
            core.metrics().sends.add(1);
            self.submit_send(key, buf, off);
        } else {
            core.recycle(key, buf);
        }
    }

    /// True when the next wait should gather a batch: batching is on, the last turn was busy
    /// and it fanned out (it sent to more connections than it heard from). A turn that only
    /// answered its own requests gains nothing from waiting: each answer is a send anyway.
    fn batching(&self) -> bool {
        batching_wanted(self.batch_wait_us, self.recvs_last_turn, self.sends_queued)
    }

    /// Operations in flight, on sockets and loop-wide.
    fn outstanding(&self) -> usize {
        let per_socket: usize = self.sockets.iter().map(|(_, s)| s.in_flight()).sum();
        per_socket
            + usize::from(self.accept_armed)
            + usize::from(self.tick_armed)
            + usize::from(self.wake_armed)
    }
}

impl Backend for UringBackend<'_> {
    fn sending(&self, key: usize) -> bool {
        self.sockets
            .get(key)
            .is_some_and(|s| matches!(s.send, Send::InFlight { .. }))
    }

    fn in_flight(&self, key: usize) -> bool {
        self.sockets.get(key).is_some_and(|s| s.in_flight() > 0)
    }

    fn send(&mut self, core: &mut Core<'_>, key: usize) {
        let Some(s) = self.sockets.get(key) else {
            return;
        };
        if matches!(s.send, Send::InFlight { .. }) || s.reset {
            return;
        }
        let Some(buf) = core.take_output(key) else {
            return;
        };
        core.metrics().sends.add(1);
        self.submit_send(key, buf, 0);
    }

    fn stop_reading(&mut self, key: usize) {
        let Some(s) = self.sockets.get_mut(key) else {
            return;
        };
        if s.recv == Recv::Idle {
            // Nothing armed: nothing to cancel, and nothing will be armed again.
            s.recv = Recv::Stopped;
        } else if s.recv == Recv::Armed {
            s.recv = Recv::Cancelling;
            // Ends the armed receive; its last completion then lets the loop close.
            let e = opcode::AsyncCancel::new(RECV | key as u64)
                .build()
                .user_data(CANCEL);
            self.push(e);
        }
    }

    fn reset(&mut self, key: usize) {
        let Some(s) = self.sockets.get_mut(key) else {
            return;
        };
        if !s.reset {
            s.reset = true;
            // Shut the socket: an in-flight send fails at once and the receive ends; the fd
            // is closed (with a reset) when both have completed.
            crate::net::reset_on_close(&s.fd);
            let _ = nix::sys::socket::shutdown(s.fd.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        }
    }

    fn close(&mut self, key: usize) {
        if let Some(s) = self.sockets.remove(key) {
            debug_assert_eq!(s.in_flight(), 0, "closing with an operation in flight");
        }
    }

    fn stop_accepting(&mut self) {
        self.accepting = false;
        self.push(opcode::AsyncCancel::new(ACCEPT).build().user_data(CANCEL));
    }

    fn turn(&mut self, core: &mut Core<'_>, touched: &mut Vec<usize>) -> anyhow::Result<()> {
        self.arm_loop_wide(core);
        for key in std::mem::take(&mut self.rearm) {
            self.arm_recv(core, key);
        }
        let waited = if self.batching() {
            // The last turn fanned out: every connection it sent to got one send carrying
            // everything queued for it, so more requests per turn means fewer sends per
            // request. Wait for a completion per connection (plus the sends just submitted,
            // which complete inline on loopback), but once `batch_wait_us` has passed, return
            // with whatever is there (the kernel's min-wait, 6.12+; older kernels ignore it
            // and wait for the first completion).
            let want = (self.sends_queued + core.open_count()).min(CQ_ENTRIES as usize / 2);
            let ts = types::Timespec::new().sec(1);
            let args = types::SubmitArgs::new()
                .timespec(&ts)
                .min_wait_usec(self.batch_wait_us);
            self.ring.submitter().submit_with_args(want, &args)
        } else {
            self.ring.submit_and_wait(1)
        };
        self.sends_queued = 0;
        match waited {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::EBUSY | libc::ETIME)
                ) => {}
            Err(e) => return Err(e.into()),
        }
        let mut recvs = 0usize;
        core.tick_clock();
        let mut returned = false;
        // Completions are copied out first (into a reused buffer): handling one may push new
        // submissions, which needs the ring.
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.clear();
        cqes.extend(self.ring.completion());
        for cqe in cqes.drain(..) {
            let ud = cqe.user_data();
            let key = (ud & KEY_MASK) as usize;
            let (res, flags) = (cqe.result(), cqe.flags());
            match ud & !KEY_MASK {
                ACCEPT => {
                    if res >= 0 {
                        // SAFETY: a successful accept's result is a new fd nobody else owns.
                        let fd = unsafe { OwnedFd::from_raw_fd(res as RawFd) };
                        if self.accepting {
                            self.accepted(core, fd);
                        }
                    } else if res != -libc::ECANCELED {
                        tracing::warn!(error = %std::io::Error::from_raw_os_error(-res), "accept");
                    }
                    if !cqueue::more(flags) {
                        self.accept_armed = false;
                    }
                }
                RECV => {
                    let more = cqueue::more(flags);
                    if res > 0 {
                        recvs += 1;
                        if let Some(bid) = cqueue::buffer_select(flags) {
                            // Copy-free: the core consumes the bytes (buffering only a cut
                            // frame) before the buffer goes back to the ring.
                            core.on_bytes(key, self.bufs.buf(bid, res as usize));
                            self.bufs.push(bid);
                            returned = true;
                        }
                    }
                    if let Some(s) = self.sockets.get_mut(key) {
                        if !more {
                            s.recv = match s.recv {
                                Recv::Cancelling | Recv::Stopped => Recv::Stopped,
                                Recv::Armed | Recv::Idle => Recv::Idle,
                            };
                        }
                        if res == 0 || (res < 0 && res != -libc::ENOBUFS && res != -libc::ECANCELED)
                        {
                            // The peer closed, or the socket failed: nothing more to read.
                            core.peer_closed(key);
                        } else if s.recv == Recv::Idle {
                            // Out of buffers, or the kernel ended the multishot: re-arm.
                            self.rearm.push(key);
                        }
                    }
                    touched.push(key);
                }
                SEND => {
                    self.send_completed(core, key, res);
                    touched.push(key);
                }
                WAKE => self.wake_armed = false,
                TICK => {
                    if !cqueue::more(flags) {
                        self.tick_armed = false;
                    }
                }
                CANCEL => {}
                _ => tracing::warn!(user_data = ud, "unexpected completion"),
            }
        }
        self.cqes = cqes;
        self.recvs_last_turn = recvs;
        if returned {
            self.bufs.publish();
        }
        Ok(())
    }

    /// Closing an fd does not end an io_uring operation that holds its file, and a send in
    /// flight points into its connection's output queue: cancel everything, and reap every
    /// completion before anything is freed.
    fn finish(&mut self, _core: &mut Core<'_>) -> anyhow::Result<()> {
        let left = self.cancel_and_reap();
        assert_eq!(
            left, 0,
            "operations still in flight after cancelling all of them"
        );
        Ok(())
    }
}

/// The batching rule on its own (see `UringBackend::batching`): on, busy, and fanned out.
fn batching_wanted(batch_wait_us: u32, recvs_last_turn: usize, sends_queued: usize) -> bool {
    batch_wait_us > 0 && recvs_last_turn >= BATCH_BUSY_RECVS && sends_queued > recvs_last_turn
}

/// How long the shutdown waits for cancelled operations to complete (the kernel completes a
/// cancelled one at once; this bounds a kernel that does not).
const REAP_LIMIT: Duration = Duration::from_secs(2);

impl UringBackend<'_> {
    /// Cancels every operation in flight on the ring and reaps completions until none is left,
    /// or until `REAP_LIMIT`. Returns how many are still outstanding (0 when all ended). Data
    /// that arrives meanwhile is dropped: the connections are being closed.
    fn cancel_and_reap(&mut self) -> usize {
        let before = self.outstanding();
        let sends = self
            .sockets
            .iter()
            .filter(|(_, s)| matches!(s.send, Send::InFlight { .. }))
            .count();
        self.accepting = false;
        let e = opcode::AsyncCancel2::new(types::CancelBuilder::any())
            .build()
            .user_data(CANCEL_ALL);
        self.push(e);
        let deadline = Instant::now() + REAP_LIMIT;
        let mut cancel_pending = true;
        while (cancel_pending || self.outstanding() > 0) && Instant::now() < deadline {
            let wait = types::Timespec::new().nsec(10_000_000);
            let args = types::SubmitArgs::new().timespec(&wait);
            match self.ring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                    ) => {}
                Err(e) => {
                    tracing::error!(error = %e, "reaping cancelled operations");
                    break;
                }
            }
            let cqes: Vec<cqueue::Entry> = self.ring.completion().collect();
            for cqe in cqes {
                let ud = cqe.user_data();
                let key = (ud & KEY_MASK) as usize;
                let (res, flags) = (cqe.result(), cqe.flags());
                let more = cqueue::more(flags);
                match ud & !KEY_MASK {
                    ACCEPT => {
                        if res >= 0 {
                            // SAFETY: a successful accept's result is a new fd nobody else
                            // owns; it is closed at once (we are shutting down).
                            drop(unsafe { OwnedFd::from_raw_fd(res as RawFd) });
                        }
                        self.accept_armed &= more;
                    }
                    RECV => {
                        if let Some(bid) = cqueue::buffer_select(flags) {
                            self.bufs.push(bid);
                            self.bufs.publish();
                        }
                        if let Some(s) = self.sockets.get_mut(key) {
                            if !more {
                                s.recv = Recv::Stopped;
                            }
                        }
                    }
                    SEND => {
                        // The kernel is done with the buffer; nothing more is sent (the
                        // connections are closing): it is dropped here.
                        if let Some(s) = self.sockets.get_mut(key) {
                            s.send = Send::Idle;
                        }
                    }
                    TICK => self.tick_armed &= more,
                    WAKE => self.wake_armed = false,
                    CANCEL if ud == CANCEL_ALL => cancel_pending = false,
                    _ => {}
                }
            }
        }
        let left = self.outstanding();
        if left > 0 {
            tracing::error!(left, "operations still in flight after cancelling");
        } else {
            tracing::info!(
                operations = before,
                sends,
                "operations cancelled and reaped: nothing in flight when the ring is dropped"
            );
        }
        left
    }
}

#[cfg(test)]
mod tests {
    use super::{batching_wanted, BATCH_BUSY_RECVS as BUSY};

    #[test]
    fn only_a_busy_fan_out_turn_makes_the_next_wait_a_batching_one() {
        // Fan-out under load: 40 requests in, 90 connections to send to.
        assert!(batching_wanted(20, 40, 90));
        // Off.
        assert!(!batching_wanted(0, 40, 90));
        // Idle or nearly: never hold the first completion back.
        assert!(!batching_wanted(20, 0, 0));
        assert!(!batching_wanted(20, BUSY - 1, 100));
        assert!(batching_wanted(20, BUSY, BUSY + 1));
        // Every answer its own send (heartbeats, trades): waiting would only add latency.
        assert!(!batching_wanted(20, 100, 100));
        assert!(!batching_wanted(20, 100, 60));
    }
}
