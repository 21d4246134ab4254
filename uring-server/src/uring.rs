//! The io_uring backend: one ring per worker, created after the fork.
//!
//! Multishot accept on the worker's own listener; multishot receive into a provided buffer ring
//! (re-armed when the kernel ends it: out of buffers, or an error); sends from each connection's
//! output queue, one in flight per connection, partial sends continued; a multishot timeout that
//! ticks once a second for the idle sweep. Each loop turn is one `io_uring_enter` that submits
//! everything queued and waits for at least one completion.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use io_uring::types::{BufRingEntry, Fd, TimeoutFlags, Timespec};
use io_uring::{cqueue, opcode, squeue, types, IoUring};

use crate::core::Core;
use crate::worker::Shutdown;

const RING_ENTRIES: u32 = 1024;
const CQ_ENTRIES: u32 = 8192;
const BUF_GROUP: u16 = 1;
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

/// The ring builder the worker uses; the master's probe builds the same.
pub fn builder() -> io_uring::Builder {
    let mut b = IoUring::builder();
    b.setup_cqsize(CQ_ENTRIES)
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_submit_all();
    b
}

/// Builds a ring like the workers' and checks every opcode and the buffer ring they use; the
/// master calls this once and drops it before forking.
pub fn probe() -> std::io::Result<()> {
    let ring = builder().build(8)?;
    let mut p = io_uring::Probe::new();
    ring.submitter().register_probe(&mut p)?;
    for (name, code) in [
        ("ACCEPT", opcode::AcceptMulti::CODE),
        ("RECV", opcode::RecvMulti::CODE),
        ("SEND", opcode::Send::CODE),
        ("TIMEOUT", opcode::Timeout::CODE),
        ("ASYNC_CANCEL", opcode::AsyncCancel::CODE),
    ] {
        if !p.is_supported(code) {
            return Err(std::io::Error::other(format!("opcode {name} unsupported")));
        }
    }
    let bufs = BufRing::new(&ring, 8, 64)?;
    ring.submitter().unregister_buf_ring(BUF_GROUP)?;
    drop(bufs);
    Ok(())
}

/// True when this kernel's io_uring can wait on a futex (6.7+); otherwise workers wait on an
/// eventfd read instead.
pub fn futex_supported() -> bool {
    let Ok(ring) = builder().build(8) else {
        return false;
    };
    let mut p = io_uring::Probe::new();
    ring.submitter().register_probe(&mut p).is_ok() && p.is_supported(opcode::FutexWait::CODE)
}

/// A provided-buffer ring: `count` buffers of `size` bytes the kernel picks from for receives.
struct BufRing {
    ring: *mut BufRingEntry,
    ring_len: usize,
    mask: u16,
    tail: u16,
    bufs: Vec<u8>,
    size: usize,
}

impl BufRing {
    fn new(uring: &IoUring, count: u16, size: usize) -> std::io::Result<BufRing> {
        debug_assert!(count.is_power_of_two());
        let ring_len = usize::from(count) * std::mem::size_of::<BufRingEntry>();
        // SAFETY: an anonymous private mapping, page aligned as the kernel requires; owned by
        // the returned value, which unmaps it on drop after unregistering it.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ring_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let mut br = BufRing {
            ring: ptr.cast(),
            ring_len,
            mask: count - 1,
            tail: 0,
            bufs: vec![0u8; usize::from(count) * size],
            size,
        };
        for bid in 0..count {
            br.push(bid);
        }
        br.publish();
        // SAFETY: the ring memory stays mapped until `drop`, which runs after the ring that
        // uses it is gone (the BufRing is dropped before the IoUring in `run`), or unregisters
        // first in `probe`.
        unsafe {
            uring
                .submitter()
                .register_buf_ring_with_flags(ptr as u64, count, BUF_GROUP, 0)?;
        }
        Ok(br)
    }

    /// Hands buffer `bid` back to the kernel (visible after `publish`).
    fn push(&mut self, bid: u16) {
        let idx = usize::from(self.tail & self.mask);
        // SAFETY: idx < count, inside the mapping; the kernel reads only entries behind the
        // published tail, and this one is ahead of it until `publish`.
        let entry = unsafe { &mut *self.ring.add(idx) };
        entry.set_addr(self.bufs[usize::from(bid) * self.size..].as_ptr() as u64);
        entry.set_len(self.size as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes pushed buffers visible to the kernel.
    fn publish(&self) {
        // SAFETY: the tail field lives in the first entry of the mapping; the kernel reads it
        // concurrently, so it is written through an atomic with release ordering, after the
        // entries it exposes.
        unsafe {
            let tail = BufRingEntry::tail(self.ring) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    fn buf(&self, bid: u16, len: usize) -> &[u8] {
        let start = usize::from(bid) * self.size;
        &self.bufs[start..start + len.min(self.size)]
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: the mapping was made in `new` with this length and is not used after this.
        unsafe {
            libc::munmap(self.ring.cast(), self.ring_len);
        }
    }
}

struct Loop<'a, 's> {
    ring: IoUring,
    core: &'a mut Core<'s>,
    touched: Vec<usize>,
    rearm: Vec<usize>,
}

impl Loop<'_, '_> {
    fn push(&mut self, e: squeue::Entry) {
        // SAFETY: every entry pushed here refers to memory that outlives its operation: fds
        // owned by live connections (removed only once no operation is in flight), send buffers
        // that do not move while a send is in flight, the tick's timespec and the wake-up's read
        // buffer (owned by `run`, which outlives the ring), and the futex word (in the segment,
        // mapped for the life of the process).
        unsafe {
            while self.ring.submission().push(&e).is_err() {
                // Submission queue full: hand what is queued to the kernel, then retry.
                let _ = self.ring.submit();
            }
        }
    }

    fn arm_recv(&mut self, key: usize) {
        let Some(conn) = self.core.conns.get_mut(key) else {
            return;
        };
        if conn.io.recv_armed || conn.st.closing {
            return;
        }
        conn.io.recv_armed = true;
        let e = opcode::RecvMulti::new(Fd(conn.fd.as_raw_fd()), BUF_GROUP)
            .build()
            .user_data(RECV | key as u64);
        self.push(e);
    }

    /// Starts a send for `key` if it has output and none is in flight; closes it when it is
    /// closing and everything is flushed and finished.
    fn settle(&mut self, key: usize) {
        let Some(conn) = self.core.conns.get_mut(key) else {
            return;
        };
        if conn.st.abort {
            // Shut the socket: an in-flight send fails at once and the receive ends; the fd is
            // closed when both have completed.
            if !conn.io.shut {
                conn.io.shut = true;
                crate::worker::reset_on_close(&conn.fd);
                let _ = nix::sys::socket::shutdown(
                    conn.fd.as_raw_fd(),
                    nix::sys::socket::Shutdown::Both,
                );
            }
            if !conn.io.send_busy && !conn.io.recv_armed {
                self.core.remove(key);
            }
            return;
        }
        if !conn.io.send_busy && !conn.st.out.is_empty() {
            let chunk = conn.st.out.chunk();
            let (ptr, len) = (chunk.as_ptr(), chunk.len().min(u32::MAX as usize) as u32);
            conn.io.send_busy = true;
            let fd = conn.fd.as_raw_fd();
            let e = opcode::Send::new(Fd(fd), ptr, len)
                .flags(libc::MSG_NOSIGNAL)
                .build()
                .user_data(SEND | key as u64);
            self.push(e);
            return;
        }
        if conn.st.closing && !conn.io.send_busy {
            if conn.io.recv_armed {
                if !conn.io.shut {
                    conn.io.shut = true;
                    // Ends the armed receive; its last completion then lets us close.
                    let _ = nix::sys::socket::shutdown(
                        conn.fd.as_raw_fd(),
                        nix::sys::socket::Shutdown::Both,
                    );
                }
            } else {
                self.core.remove(key);
            }
        }
    }
}

/// Runs the worker's loop until shutdown completes.
pub fn run(
    core: &mut Core<'_>,
    listener: OwnedFd,
    shutdown: &Shutdown,
    wake_fd: Option<std::os::fd::BorrowedFd<'_>>,
) -> anyhow::Result<()> {
    let ring = builder().build(RING_ENTRIES)?;
    let mut bufs = BufRing::new(&ring, BUF_COUNT, BUF_SIZE)?;
    let tick = Timespec::new().sec(1);
    let mut lp = Loop {
        ring,
        core,
        touched: Vec::new(),
        rearm: Vec::new(),
    };
    let mut accepting = true;
    let mut accept_armed = false;
    let tick_entry = opcode::Timeout::new(&tick)
        .flags(TimeoutFlags::MULTISHOT)
        .build()
        .user_data(TICK);
    lp.push(tick_entry);
    let mut tick_armed = true;
    let mut last_sweep = Instant::now();
    let mut cqes: Vec<cqueue::Entry> = Vec::with_capacity(CQ_ENTRIES as usize);
    // The chat wake-up: a futex wait on the epoch word, or a read of this worker's eventfd.
    let mut wake_armed = false;
    let mut wake_buf = Box::new([0u8; 8]);
    loop {
        if !wake_armed {
            wake_armed = true;
            let e = match wake_fd {
                Some(fd) => opcode::Read::new(Fd(fd.as_raw_fd()), wake_buf.as_mut_ptr(), 8)
                    .build()
                    .user_data(WAKE),
                None => {
                    let (word, seen) = lp.core.chat_epoch();
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
            lp.push(e);
        }
        if accepting && !accept_armed {
            let e = opcode::AcceptMulti::new(Fd(listener.as_raw_fd()))
                .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
                .build()
                .user_data(ACCEPT);
            lp.push(e);
            accept_armed = true;
        }
        if shutdown.requested() && !lp.core.shutting_down() {
            accepting = false;
            lp.push(opcode::AsyncCancel::new(ACCEPT).build().user_data(CANCEL));
            let all = lp.core.begin_shutdown(shutdown.grace);
            lp.touched.extend(all);
        }
        if lp.core.drained() {
            break;
        }
        for key in std::mem::take(&mut lp.rearm) {
            lp.arm_recv(key);
        }
        let touched = std::mem::take(&mut lp.touched);
        for &key in &touched {
            lp.settle(key);
        }
        lp.touched = touched;
        lp.touched.clear();
        match lp.ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
            Err(e) => return Err(e.into()),
        }
        lp.core.tick_clock();
        let mut returned = false;
        // Completions are copied out first (into a reused buffer): handling one may push new
        // submissions, which needs the ring.
        cqes.clear();
        cqes.extend(lp.ring.completion());
        for cqe in cqes.drain(..) {
            let ud = cqe.user_data();
            let key = (ud & KEY_MASK) as usize;
            let (res, flags) = (cqe.result(), cqe.flags());
            match ud & !KEY_MASK {
                ACCEPT => {
                    if res >= 0 {
                        // SAFETY: a successful accept's result is a new fd nobody else owns.
                        let fd = unsafe { OwnedFd::from_raw_fd(res as RawFd) };
                        if accepting {
                            crate::worker::tune_socket(&fd);
                            if let Some(k) = lp.core.accept(fd) {
                                lp.arm_recv(k);
                            }
                        }
                    } else if res != -libc::ECANCELED {
                        tracing::warn!(error = %std::io::Error::from_raw_os_error(-res), "accept");
                    }
                    if !cqueue::more(flags) {
                        accept_armed = false;
                    }
                }
                RECV => {
                    let more = cqueue::more(flags);
                    if res > 0 {
                        if let Some(bid) = cqueue::buffer_select(flags) {
                            // Copy-free: the core consumes the bytes (buffering only a cut
                            // frame) before the buffer goes back to the ring.
                            let data = bufs.buf(bid, res as usize);
                            lp.core.on_bytes(key, data);
                            bufs.push(bid);
                            returned = true;
                        }
                    }
                    if let Some(conn) = lp.core.conns.get_mut(key) {
                        if !more {
                            conn.io.recv_armed = false;
                        }
                        if res == 0 || (res < 0 && res != -libc::ENOBUFS) {
                            // The peer closed, or the socket failed: nothing more to read.
                            conn.st.closing = true;
                        } else if !more {
                            // Out of buffers, or the kernel ended the multishot: re-arm.
                            lp.rearm.push(key);
                        }
                    }
                    lp.touched.push(key);
                }
                SEND => {
                    if let Some(conn) = lp.core.conns.get_mut(key) {
                        conn.io.send_busy = false;
                        if res >= 0 {
                            conn.st.out.advance(res as usize);
                        } else {
                            // The peer is gone: drop what it will never read.
                            conn.st.closing = true;
                            conn.st.out = Default::default();
                        }
                    }
                    lp.touched.push(key);
                }
                WAKE => wake_armed = false,
                TICK => {
                    if !cqueue::more(flags) {
                        tick_armed = false;
                    }
                }
                CANCEL => {}
                _ => tracing::warn!(user_data = ud, "unexpected completion"),
            }
        }
        if returned {
            bufs.publish();
        }
        let delivered = lp.core.deliver();
        lp.touched.extend(delivered);
        if last_sweep.elapsed() >= Duration::from_secs(1) {
            last_sweep = Instant::now();
            let marked = lp.core.sweep();
            lp.touched.extend(marked);
        }
    }
    // Closing an fd does not end an io_uring operation that holds its file, and a send in flight
    // points into its connection's output queue: cancel everything, reap every completion, and
    // only then free the connections, the ring and the buffers the ring pointed into.
    let armed = Armed {
        accept: accept_armed,
        tick: tick_armed,
        wake: wake_armed,
    };
    let left = cancel_and_reap(&mut lp, &mut bufs, armed);
    assert_eq!(
        left, 0,
        "operations still in flight after cancelling all of them"
    );
    lp.core.close_all();
    drop(lp);
    drop(bufs);
    Ok(())
}

/// Which loop-wide operations are in flight.
#[derive(Debug, Clone, Copy)]
struct Armed {
    accept: bool,
    tick: bool,
    wake: bool,
}

/// How long the shutdown waits for cancelled operations to complete (the kernel completes a
/// cancelled one at once; this bounds a kernel that does not).
const REAP_LIMIT: Duration = Duration::from_secs(2);

/// Cancels every operation in flight on the ring and reaps completions until none is left, or
/// until `REAP_LIMIT`. Returns how many are still outstanding (0 when all ended). Data that
/// arrives meanwhile is dropped: the connections are being closed.
fn cancel_and_reap(lp: &mut Loop<'_, '_>, bufs: &mut BufRing, mut armed: Armed) -> usize {
    let outstanding = |lp: &Loop<'_, '_>, a: &Armed| {
        let per_conn: usize = lp
            .core
            .conns
            .iter()
            .map(|(_, c)| usize::from(c.io.recv_armed) + usize::from(c.io.send_busy))
            .sum();
        per_conn + usize::from(a.accept) + usize::from(a.tick) + usize::from(a.wake)
    };
    let before = outstanding(lp, &armed);
    let e = opcode::AsyncCancel2::new(types::CancelBuilder::any())
        .build()
        .user_data(CANCEL_ALL);
    lp.push(e);
    let deadline = Instant::now() + REAP_LIMIT;
    let mut cancel_pending = true;
    while (cancel_pending || outstanding(lp, &armed) > 0) && Instant::now() < deadline {
        let wait = types::Timespec::new().nsec(10_000_000);
        let args = types::SubmitArgs::new().timespec(&wait);
        match lp.ring.submitter().submit_with_args(1, &args) {
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
        let cqes: Vec<cqueue::Entry> = lp.ring.completion().collect();
        for cqe in cqes {
            let ud = cqe.user_data();
            let key = (ud & KEY_MASK) as usize;
            let (res, flags) = (cqe.result(), cqe.flags());
            let more = cqueue::more(flags);
            match ud & !KEY_MASK {
                ACCEPT => {
                    if res >= 0 {
                        // SAFETY: a successful accept's result is a new fd nobody else owns;
                        // it is closed at once (we are shutting down).
                        drop(unsafe { OwnedFd::from_raw_fd(res as RawFd) });
                    }
                    armed.accept &= more;
                }
                RECV => {
                    if let Some(bid) = cqueue::buffer_select(flags) {
                        bufs.push(bid);
                        bufs.publish();
                    }
                    if let Some(conn) = lp.core.conns.get_mut(key) {
                        conn.io.recv_armed &= more;
                    }
                }
                SEND => {
                    if let Some(conn) = lp.core.conns.get_mut(key) {
                        conn.io.send_busy = false;
                    }
                }
                TICK => armed.tick &= more,
                WAKE => armed.wake = false,
                CANCEL if ud == CANCEL_ALL => cancel_pending = false,
                _ => {}
            }
        }
    }
    let left = outstanding(lp, &armed);
    if left > 0 {
        tracing::error!(left, ?armed, "operations still in flight after cancelling");
    } else {
        tracing::info!(
            operations = before,
            "operations cancelled and reaped: nothing in flight when the ring is dropped"
        );
    }
    left
}
