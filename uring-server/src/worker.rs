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

/// Makes the kernel give each new connection to the listener at index `cpu % workers` of the
/// port's SO_REUSEPORT group, where `cpu` is the CPU that took the connection's SYN (a classic
/// BPF program, SO_ATTACH_REUSEPORT_CBPF, as nginx's `reuseport` and Seastar steer), instead of
/// a hash of its addresses. With more workers than CPUs only the first `CPUs` listeners get
/// connections and the rest sleep in the kernel (standbys that cost nothing), so `-w 8` on two
/// CPUs is `-w 2` rather than eight processes time-slicing the same two cores. An index past
/// the group's end (a worker being restarted) falls back to the hash. The program is the
/// group's: attaching it from every worker is idempotent.
pub fn steer_by_cpu(fd: &OwnedFd, workers: u16) -> std::io::Result<()> {
    const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const BPF_ALU_MOD_K: u16 = 0x94; // BPF_ALU | BPF_MOD | BPF_K
    const BPF_RET_A: u16 = 0x16; // BPF_RET | BPF_A
    const SKF_AD_CPU: u32 = (-0x1000i32 + 36) as u32; // SKF_AD_OFF + SKF_AD_CPU
    let mut code = [
        libc::sock_filter {
            code: BPF_LD_W_ABS,
            jt: 0,
            jf: 0,
            k: SKF_AD_CPU,
        },
        libc::sock_filter {
            code: BPF_ALU_MOD_K,
            jt: 0,
            jf: 0,
            k: u32::from(workers.max(1)),
        },
        libc::sock_filter {
            code: BPF_RET_A,
            jt: 0,
            jf: 0,
            k: 0,
        },
    ];
    let prog = libc::sock_fprog {
        len: code.len() as u16,
        filter: code.as_mut_ptr(),
    };
    // SAFETY: setsockopt reads `size_of::<sock_fprog>()` bytes from `prog`, and the kernel copies
    // the `len` instructions `prog.filter` points to before it returns; both live on this stack
    // frame for the whole call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&prog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Pins this process to one CPU (best effort: a refusal is logged and the worker runs
/// anywhere).
fn pin_to(cpu: usize) {
    match placement::pin_current(&[cpu]) {
        Ok(()) => tracing::info!(cpu, "worker pinned"),
        Err(e) => tracing::warn!(cpu, error = %e, "could not pin the worker"),
    }
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
    if cfg.steer_by_cpu {
        if let Err(e) = steer_by_cpu(&listener, cfg.workers) {
            tracing::warn!(error = %e, "connections are spread by hash: steering by CPU failed");
        }
    }
    if let Some(cpu) = cfg.cpu {
        pin_to(cpu);
    }
    let wake_fd = wake_fds.and_then(|w| w.fd(usize::from(worker)));
    let mut core = Core::new(
        cfg,
        seg,
        wake_fds,
        Box::new(crate::clock::SystemClock::new()),
    )?;
    let m = core.metrics();
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
            let batch_wait_us = core.config().batch_wait_us;
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
