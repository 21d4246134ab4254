//! A worker process: what it does between the fork and its exit.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage};

use crate::core::{Config, Core};
use crate::master::Backend;

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

/// Small frames want no Nagle delay.
pub fn tune_socket(fd: &OwnedFd) {
    let _ = socket::setsockopt(fd, sockopt::TcpNoDelay, &true);
}

/// Makes the coming close reset the connection (SO_LINGER 0): the kernel drops the unsent bytes
/// of a peer that was not reading instead of trying to deliver them.
pub fn reset_on_close(fd: &OwnedFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let _ = socket::setsockopt(fd, sockopt::Linger, &linger);
}

/// A TCP socket bound to `addr` with SO_REUSEPORT; listening if `listen`.
pub fn reuseport_socket(addr: SocketAddr, listen: bool) -> anyhow::Result<OwnedFd> {
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket::socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    socket::setsockopt(&fd, sockopt::ReusePort, &true)?;
    socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    if listen {
        socket::listen(
            &fd,
            socket::Backlog::new(4096).unwrap_or(socket::Backlog::MAXCONN),
        )?;
    }
    Ok(fd)
}

/// The port a bound socket got.
pub fn local_port(fd: &OwnedFd) -> anyhow::Result<u16> {
    let addr: SockaddrStorage = socket::getsockname(fd.as_raw_fd())?;
    addr.as_sockaddr_in()
        .map(|a| a.port())
        .or_else(|| addr.as_sockaddr_in6().map(|a| a.port()))
        .ok_or_else(|| anyhow::anyhow!("not an inet socket"))
}

/// The worker's life after the fork. Never returns: exits the process.
pub fn run(
    cfg: Config,
    seg: &shm::Segment,
    addr: SocketAddr,
    backend: Backend,
    master: u32,
    wake_fds: Option<&shm::wake::WakeFds>,
) -> ! {
    let code = match run_inner(cfg, seg, addr, backend, master, wake_fds) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!(error = %e, "worker failed");
            1
        }
    };
    // Exit without running destructors: the segment value is the master's (it would not unlink
    // here anyway), and nothing else needs them.
    std::process::exit(code)
}

fn run_inner(
    cfg: Config,
    seg: &shm::Segment,
    addr: SocketAddr,
    backend: Backend,
    master: u32,
    wake_fds: Option<&shm::wake::WakeFds>,
) -> anyhow::Result<()> {
    // Die with the master, whatever kills it.
    // SAFETY: prctl with PR_SET_PDEATHSIG and a signal number reads nothing else.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    if nix::unistd::getppid().as_raw() as u32 != master {
        anyhow::bail!("the master died before this worker started");
    }
    install_stop_handler()?;
    let worker = cfg.worker;
    let span = tracing::info_span!("worker", id = worker, pid = std::process::id());
    let _enter = span.enter();
    let listener = reuseport_socket(addr, true)?;
    let wake_fd = wake_fds.and_then(|w| w.fd(usize::from(worker)));
    let mut core = Core::new(
        cfg,
        seg,
        wake_fds,
        Box::new(crate::clock::SystemClock::new()),
    )?;
    let m = core.ctx.metrics;
    m.pid.set(u64::from(std::process::id()));
    m.backend.set(backend.code());
    m.started_ms.set(crate::clock::wall_ms());
    m.conns_active.set(0);
    tracing::info!(backend = backend.name(), %addr, "worker ready");
    let shutdown = Shutdown {
        grace: Duration::from_secs(3),
    };
    match backend {
        Backend::Uring => {
            let batch_wait_us = core.ctx.cfg.batch_wait_us;
            let mut io = crate::uring::UringBackend::new(listener, wake_fd, batch_wait_us)?;
            crate::event_loop::run(&mut core, &mut io, &shutdown)?;
        }
        Backend::Epoll => {
            let mut io = crate::epoll::EpollBackend::new(listener, wake_fd)?;
            crate::event_loop::run(&mut core, &mut io, &shutdown)?;
        }
    }
    m.pid.set(0);
    tracing::info!("worker stopped");
    Ok(())
}
