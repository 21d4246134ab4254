//! A worker process: what it does between the fork and its exit.

use std::net::SocketAddr;
use std::time::Duration;

use crate::core::{Config, Core};
use crate::master::IoBackend;
use crate::net::{reuseport_socket, steer_by_cpu};
use crate::stop::{install_stop_handler, Shutdown};

/// Pins this process to one CPU (best effort: a refusal is logged and the worker runs
/// anywhere).
fn pin_to(cpu: usize) {
    match placement::pin_current(&[cpu]) {
        Ok(()) => tracing::info!(cpu, "worker pinned"),
        Err(e) => tracing::warn!(cpu, error = %e, "could not pin the worker"),
    }
}

/// The worker's life after the fork. Never returns: exits the process.
pub fn run(
    cfg: Config,
    seg: &shm::Segment,
    addr: SocketAddr,
    backend: IoBackend,
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
    backend: IoBackend,
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
        IoBackend::Uring => {
            let batch_wait_us = core.config().batch_wait_us;
            let mut io = crate::uring::UringBackend::new(listener, wake_fd, batch_wait_us)?;
            crate::event_loop::run(&mut core, &mut io, &shutdown)?;
        }
        IoBackend::Epoll => {
            let mut io = crate::epoll::EpollBackend::new(listener, wake_fd)?;
            crate::event_loop::run(&mut core, &mut io, &shutdown)?;
        }
    }
    m.pid.set(0);
    tracing::info!("worker stopped");
    Ok(())
}
