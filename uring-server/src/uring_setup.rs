//! Setting up io_uring the way the workers use it, and probing the kernel for it before
//! forking (the master falls back to epoll, with the reason, when this fails).

use io_uring::{opcode, IoUring};

use crate::buf_ring::{BufRing, BUF_GROUP};

/// Completion-queue entries: room for everything multishot operations post between turns.
pub(crate) const CQ_ENTRIES: u32 = 8192;

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
