//! How a server process learns it is to stop: SIGTERM/SIGINT set a flag that its loop reads
//! ([`Shutdown`]); the handler is installed without SA_RESTART so a blocking wait returns at
//! once. Workers and the journal writer use it; the master counts signals itself.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Whether the master asked this worker to stop, and how long it may drain.
#[derive(Debug)]
pub struct Shutdown {
    /// How long to flush and close connections after the request.
    pub grace: Duration,
}

impl Shutdown {
    /// True once SIGTERM or SIGINT arrived.
    pub fn requested(&self) -> bool {
        STOP.load(Ordering::Relaxed)
    }
}

/// Installs the stop handler without SA_RESTART, so a blocking wait returns EINTR at once.
pub fn install_stop_handler() -> nix::Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let act = SigAction::new(
        SigHandler::Handler(on_stop_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        sigaction(Signal::SIGTERM, &act)?;
        sigaction(Signal::SIGINT, &act)?;
        sigaction(
            Signal::SIGPIPE,
            &SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty()),
        )?;
    }
    Ok(())
}
