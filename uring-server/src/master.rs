//! The master: probes the I/O backend, creates the segment, forks the workers, restarts any that
//! dies (finishing what it left half done in shared memory first), and shuts everything down on
//! SIGINT/SIGTERM.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

use crate::cli::{Args, Durability, IoMode, LockModeArg, Registration};
use crate::core::Config;
use crate::supervisor::{Action, Child, Supervisor};

/// The I/O backend the workers run (the loops themselves implement `event_loop::Backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoBackend {
    /// io_uring.
    Uring,
    /// epoll.
    Epoll,
}

impl IoBackend {
    /// The code `stats` reads from the metrics.
    pub fn code(self) -> u64 {
        match self {
            IoBackend::Uring => 1,
            IoBackend::Epoll => 2,
        }
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            IoBackend::Uring => "io_uring",
            IoBackend::Epoll => "epoll",
        }
    }
}

/// Decides the backend: probes io_uring with the workers' exact setup unless told epoll.
pub fn choose_backend(mode: IoMode) -> anyhow::Result<IoBackend> {
    if mode == IoMode::Epoll {
        return Ok(IoBackend::Epoll);
    }
    match crate::uring::probe() {
        Ok(()) => Ok(IoBackend::Uring),
        Err(e) => {
            let why = match e.raw_os_error() {
                Some(libc::EPERM) => format!(
                    "io_uring is not permitted (EPERM): kernel.io_uring_disabled = {} or a \
                     seccomp profile (Docker's default blocks it)",
                    std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
                        .map_or_else(|_| "?".into(), |s| s.trim().to_string())
                ),
                Some(libc::ENOSYS) => "this kernel has no io_uring (ENOSYS)".into(),
                Some(libc::EINVAL) => {
                    "this kernel lacks a setup flag or feature the workers need (EINVAL)".into()
                }
                _ => e.to_string(),
            };
            if mode == IoMode::Uring {
                anyhow::bail!("--io uring: {why}");
            }
            tracing::warn!(reason = %why, "io_uring unavailable: falling back to epoll");
            Ok(IoBackend::Epoll)
        }
    }
}

static SIGNALS: AtomicU32 = AtomicU32::new(0);

extern "C" fn on_signal(_: libc::c_int) {
    SIGNALS.fetch_add(1, Ordering::Relaxed);
}

/// Runs the server until a signal stops it; returns the process exit code.
pub fn run(args: &Args) -> anyhow::Result<i32> {
    let workers = args.worker_count();
    anyhow::ensure!((1..=1024).contains(&workers), "--workers must be 1..=1024");
    anyhow::ensure!(
        args.body_len_max >= 1024 && args.body_len_max <= proto::BODY_LEN_LIMIT,
        "--body-len-max must be 1024..={}",
        proto::BODY_LEN_LIMIT
    );
    let backend = choose_backend(args.io)?;
    let lock_mode = match args.lock_mode {
        LockModeArg::Account => shm::LockMode::Account,
        LockModeArg::Global => shm::LockMode::Global,
    };
    let host: IpAddr = args
        .host
        .parse()
        .map_err(|e| anyhow::anyhow!("--host {}: {e}", args.host))?;
    refuse_taken_port(SocketAddr::new(host, args.port))?;
    let durable = args.durability == Durability::Sync;
    // Held for the server's life (every forked child shares it): one server per data dir.
    let _dir_lock = if durable {
        crate::durable::file::ensure_dir(&args.data_dir)?;
        Some(crate::durable::DirLock::take(&args.data_dir)?)
    } else {
        None
    };
    let (mut seg, previous) =
        shm::Segment::create(&args.name, args.capacities(workers), lock_mode)?;
    // The shm crate has logged the replacement of a stale segment, if there was one.
    let _ = previous;
    if durable {
        recover_into(&seg, args)?;
    } else {
        tracing::warn!(
            "--durability none: no journal; users, balances and transactions are lost when the \
             server stops (the behaviour before the journal, for comparison)"
        );
    }
    let bridge_cfg = (!args.cluster.is_empty()).then(|| {
        shm::cluster::Cluster::of(&seg).enable(args.node_id);
        tracing::info!(
            node_id = args.node_id,
            nats = ?args.cluster,
            replicas = args.cluster_replicas,
            "cluster node: rooms ride on the NATS JetStream stream {}; workers start once the \
             bridge has reached NATS and caught up",
            ns_cluster::STREAM
        );
        ns_cluster::BridgeConfig {
            servers: args.cluster.clone(),
            replicas: args.cluster_replicas,
        }
    });
    // Reserve the port: a bound, non-listening SO_REUSEPORT socket kept by the master, so that
    // port 0 resolves once and restarted workers can always bind it again.
    let reserve = crate::net::reuseport_socket(SocketAddr::new(host, args.port), false)?;
    let port = crate::net::local_port(&reserve)?;
    let addr = SocketAddr::new(host, port);
    // Workers that cannot wait on the futex word through io_uring wake on eventfds, created
    // here so every worker, and every replacement, inherits all of them.
    let wake_fds = if backend == IoBackend::Uring && crate::uring::futex_supported() {
        None
    } else {
        Some(shm::wake::WakeFds::new(workers as usize)?)
    };
    // A wrong certificate path or key stops the start here, before any worker is forked.
    let tls = crate::tls::server_config(&args.tls_options())?;
    if tls.is_some() {
        tracing::info!(
            kernel_tls = crate::tls::kernel_tls_available(),
            client_certificates = args.tls_client_ca.is_some(),
            tls12 = args.tls12,
            "TLS on every connection: rustls does the record layer in the workers{}",
            if crate::tls::kernel_tls_available() {
                " (the kernel has kTLS; handing records to it is not built)"
            } else {
                " (no kTLS in this kernel)"
            }
        );
    }
    // Bound before any fork: a port taken or refused stops the start. (The workers inherit the
    // descriptor and never use it.)
    let metrics = args
        .metrics_addr
        .map(crate::metrics_http::MetricsServer::bind)
        .transpose()?;
    install_signal_handlers()?;
    let master = std::process::id();
    tracing::info!(
        %addr, workers, backend = backend.name(), lock_mode = ?lock_mode, segment = seg.name(),
        durability = if durable { "sync" } else { "none" },
        data_dir = %args.data_dir.display(),
        "uring-server starting"
    );
    let writer_cfg = crate::durable::writer::WriterConfig {
        dir: args.data_dir.clone(),
        checkpoint_bytes: args.checkpoint_bytes.max(1 << 16),
        sync: args.journal_sync,
        prealloc: args.journal_prealloc,
        io: args.journal_io,
    };
    let allowed_cpus = placement::allowed();
    let steer_by_cpu = steering(args, workers as usize, allowed_cpus.len());
    let mut shell = Shell {
        seg: &seg,
        args,
        sup: Supervisor::with_bridge(
            workers as usize,
            durable,
            bridge_cfg.is_some(),
            Instant::now(),
        ),
        worker_pids: vec![None; workers as usize],
        writer_pid: None,
        bridge_pid: None,
        bridge_cfg,
        started: Instant::now(),
        addr,
        backend,
        master,
        wake_fds: wake_fds.as_ref(),
        writer_cfg,
        allowed_cpus,
        steer_by_cpu,
        tls,
        metrics,
        announced: false,
        kill_logged: false,
    };
    let code = shell.run()?;
    drop(reserve);
    seg.unlink()?;
    tracing::info!(
        segment = seg.name(),
        "all workers stopped; shared memory unlinked"
    );
    Ok(code)
}

/// Whether workers are steered by CPU (`--steer`); warns when there are more workers than CPUs.
fn steering(args: &Args, workers: usize, cpus: usize) -> bool {
    if workers > cpus.max(1) {
        tracing::warn!(
            workers,
            cpus,
            steer = ?args.steer,
            "more workers than CPUs: with --steer hash they time-slice the same cores; with \
             --steer cpu or auto only the first {cpus} take connections, the others are standbys"
        );
    }
    match args.steer {
        crate::cli::Steer::Cpu => true,
        crate::cli::Steer::Hash => false,
        crate::cli::Steer::Auto => workers > cpus,
    }
}

/// The master's side effects around the [`Supervisor`]'s decisions: the children's pids, forks,
/// reaps and signals.
struct Shell<'a> {
    seg: &'a shm::Segment,
    args: &'a Args,
    sup: Supervisor,
    worker_pids: Vec<Option<Pid>>,
    writer_pid: Option<Pid>,
    bridge_pid: Option<Pid>,
    bridge_cfg: Option<ns_cluster::BridgeConfig>,
    started: Instant,
    addr: SocketAddr,
    backend: IoBackend,
    master: u32,
    wake_fds: Option<&'a shm::wake::WakeFds>,
    writer_cfg: crate::durable::writer::WriterConfig,
    allowed_cpus: Vec<usize>,
    steer_by_cpu: bool,
    /// Every worker's TLS configuration (the master's copy, inherited through fork).
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    /// `--metrics-addr`: scrapes served from this loop.
    metrics: Option<crate::metrics_http::MetricsServer>,
    announced: bool,
    kill_logged: bool,
}

impl Shell<'_> {
    /// Every 20 ms: signals, exits, then what the supervisor says is due. Returns the exit code.
    fn run(&mut self) -> anyhow::Result<i32> {
        loop {
            self.announce_once();
            let was_stopping = self.sup.stopping();
            let mut actions = self
                .sup
                .on_signals(SIGNALS.load(Ordering::Relaxed), Instant::now());
            if !was_stopping && self.sup.stopping() {
                tracing::info!("signal received: stopping workers (a second signal stops at once)");
            }
            self.reap();
            self.check_bridge()?;
            actions.extend(self.sup.due(Instant::now()));
            for action in actions {
                if let Some(code) = self.act(action)? {
                    return Ok(code);
                }
            }
            match &mut self.metrics {
                // Waits on the scrape sockets instead of sleeping: a scrape is answered at once.
                Some(m) => {
                    let seg = self.seg;
                    m.serve(Duration::from_millis(20), || crate::tools::prometheus(seg));
                }
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// On a cluster node, lets the workers start once the bridge is first ready; gives up
    /// after `--cluster-wait-secs`.
    fn check_bridge(&mut self) -> anyhow::Result<()> {
        if self.sup.is_ready() {
            return Ok(());
        }
        if shm::cluster::Cluster::of(self.seg).state() == shm::cluster::State::Ready {
            tracing::info!(
                waited_ms = self.started.elapsed().as_millis() as u64,
                "bridge ready: starting workers"
            );
            self.sup.ready();
            return Ok(());
        }
        if self.started.elapsed() > Duration::from_secs(self.args.cluster_wait_secs) {
            if let Some(pid) = self.bridge_pid {
                let _ = kill(pid, Signal::SIGKILL);
                let _ = waitpid(pid, None);
            }
            anyhow::bail!(
                "could not join the cluster: no NATS JetStream reachable at {} within {} s \
                 (is nats-server running with -js?)",
                self.args.cluster.join(","),
                self.args.cluster_wait_secs
            );
        }
        Ok(())
    }

    /// Prints the address once every worker listens: tests and scripts read it from there.
    fn announce_once(&mut self) {
        if self.announced || !all_listening(self.seg, &self.worker_pids) {
            return;
        }
        self.announced = true;
        let metrics = self
            .metrics
            .as_ref()
            .and_then(|m| m.local_addr().ok())
            .map_or(String::new(), |a| format!(" metrics {a}"));
        println!(
            "listening on {} backend {} workers {}{metrics}",
            self.addr,
            self.backend.name(),
            self.worker_pids.len()
        );
        use std::io::Write;
        let _ = std::io::stdout().flush();
    }

    /// Reaps every child that exited, cleans up after a dead worker and tells the supervisor.
    fn reap(&mut self) {
        loop {
            let status = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(status) => status,
            };
            let Some(pid) = status.pid() else { return };
            if self.writer_pid == Some(pid) {
                self.writer_pid = None;
                let clean = matches!(status, WaitStatus::Exited(_, 0));
                if self.sup.stopping() && clean {
                    tracing::info!(pid = pid.as_raw(), "journal writer exited");
                } else {
                    tracing::warn!(
                        pid = pid.as_raw(), status = ?status,
                        "journal writer died: ledger answers wait until its successor has \
                         synced the journal"
                    );
                }
                self.sup.on_exit(Child::Writer, Instant::now());
                continue;
            }
            if self.bridge_pid == Some(pid) {
                self.bridge_pid = None;
                shm::cluster::Cluster::of(self.seg).set_bridge_pid(0);
                if self.sup.stopping() && matches!(status, WaitStatus::Exited(_, 0)) {
                    tracing::info!(pid = pid.as_raw(), "bridge exited");
                } else {
                    tracing::warn!(
                        pid = pid.as_raw(), status = ?status,
                        "bridge died: chat answers wait until its successor has caught up"
                    );
                }
                self.sup.on_exit(Child::Bridge, Instant::now());
                continue;
            }
            let Some(i) = self.worker_pids.iter().position(|p| *p == Some(pid)) else {
                continue;
            };
            self.worker_pids[i] = None;
            let how = match status {
                WaitStatus::Exited(_, c) => format!("exit code {c}"),
                WaitStatus::Signaled(_, sig, _) => format!("signal {sig}"),
                other => format!("{other:?}"),
            };
            clean_up_after(self.seg, i as u32, pid, &how, self.sup.stopping());
            if self.sup.on_exit(Child::Worker(i), Instant::now()) {
                if let Some(m) = shm::Metrics::of(self.seg).worker(i) {
                    m.restarts.add(1);
                }
            }
        }
    }

    fn pid_of(&self, c: Child) -> Option<Pid> {
        match c {
            Child::Worker(i) => self.worker_pids[i],
            Child::Writer => self.writer_pid,
            Child::Bridge => self.bridge_pid,
        }
    }

    /// Does one action; `Some(code)` when the master is to exit.
    fn act(&mut self, action: Action) -> anyhow::Result<Option<i32>> {
        match action {
            Action::Start(c) => self.start(c)?,
            Action::Term(c) => {
                if let Some(pid) = self.pid_of(c) {
                    let _ = kill(pid, Signal::SIGTERM);
                }
            }
            Action::Kill(c) => {
                if !self.kill_logged {
                    self.kill_logged = true;
                    if self.sup.code() == 1 {
                        tracing::warn!("second signal: killing workers now");
                    } else {
                        tracing::warn!("workers did not stop in time: killing them");
                    }
                }
                if let Some(pid) = self.pid_of(c) {
                    let _ = kill(pid, Signal::SIGKILL);
                }
            }
            Action::Exit(code) => return Ok(Some(code)),
        }
        Ok(None)
    }

    /// Forks child `c`.
    fn start(&mut self, c: Child) -> anyhow::Result<()> {
        let cfg = match c {
            Child::Worker(i) => Some(self.worker_config(i as u16)),
            Child::Writer | Child::Bridge => None,
        };
        // SAFETY: the master is single-threaded (no thread was ever spawned), so the child may
        // run arbitrary code after the fork; neither child returns into this code.
        match unsafe { fork() }? {
            ForkResult::Child => match (cfg, c) {
                (Some(cfg), _) => crate::worker::run(
                    cfg,
                    self.seg,
                    self.addr,
                    self.backend,
                    self.master,
                    self.wake_fds,
                ),
                (None, Child::Bridge) => ns_cluster::run(
                    self.seg,
                    self.bridge_cfg
                        .clone()
                        .unwrap_or_else(|| ns_cluster::BridgeConfig {
                            servers: Vec::new(),
                            replicas: 1,
                        }),
                    self.wake_fds,
                    self.master,
                ),
                (None, _) => crate::durable::writer::run(
                    self.seg,
                    self.writer_cfg.clone(),
                    self.wake_fds,
                    self.master,
                ),
            },
            ForkResult::Parent { child } => {
                match c {
                    Child::Worker(i) => {
                        tracing::info!(worker = i, pid = child.as_raw(), "worker started");
                        self.worker_pids[i] = Some(child);
                    }
                    Child::Writer => {
                        tracing::info!(pid = child.as_raw(), "journal writer started");
                        self.writer_pid = Some(child);
                    }
                    Child::Bridge => {
                        tracing::info!(pid = child.as_raw(), "bridge started");
                        self.bridge_pid = Some(child);
                    }
                }
                self.sup.started(c, Instant::now());
            }
        }
        Ok(())
    }

    /// Worker `worker`'s settings.
    fn worker_config(&self, worker: u16) -> Config {
        let args = self.args;
        Config {
            worker,
            max_conns: args.max_conns,
            idle_timeout_ms: args.idle_timeout_ms,
            body_len_max: args.body_len_max,
            out_max_bytes: args.out_max_bytes,
            frame_timeout_ms: args.frame_timeout_ms,
            registration_open: args.registration == Registration::Open,
            flood_burst: args.flood_burst,
            flood_per_sec: args.flood_per_sec,
            batch_wait_us: args.batch_wait_us,
            workers: self.worker_pids.len() as u16,
            steer_by_cpu: self.steer_by_cpu,
            cpu: args
                .cpu_affinity
                .cpu_of(usize::from(worker), &self.allowed_cpus),
            tls: self.tls.clone(),
            tls_handshake_timeout_ms: args.tls_handshake_timeout_ms,
            cluster_timeout_ms: args.cluster_timeout_ms,
        }
    }
}

/// Refuses a port another process listens on. Workers bind with SO_REUSEPORT, which would let
/// a second server join a running one's group on the port and split its connections between two
/// ledgers. The kernel's table of TCP sockets says whether anyone listens there (a test bind
/// would also trip over the closing connections a crashed predecessor left behind).
///
/// A listener of a process that just died can outlive it for a moment: its io_uring, which holds
/// the socket through a multishot accept, is torn down by the kernel after the process is gone.
/// So a listener is waited on for up to two seconds before the port is refused.
fn refuse_taken_port(addr: SocketAddr) -> anyhow::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while someone_listens(addr.port()) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "port {} is already in use: another process listens on it (another \
             uring-server?); refusing to share it",
            addr.port()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// True when a TCP socket listens on `port` (any address), per /proc/net/tcp and tcp6.
fn someone_listens(port: u16) -> bool {
    let port = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|table| {
        std::fs::read_to_string(table).is_ok_and(|text| {
            // "sl local_address rem_address st ...": state 0A is LISTEN.
            text.lines().skip(1).any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 3 && f[1].ends_with(&port) && f[3] == "0A"
            })
        })
    })
}

/// Rebuilds the fresh segment from the data directory (checkpoint + journal), audits it, and
/// turns the journal on from the next LSN.
fn recover_into(seg: &shm::Segment, args: &Args) -> anyhow::Result<()> {
    use crate::durable::recover::{recover, OnCorruption};
    let on_corruption = if args.journal_truncate_corrupt {
        OnCorruption::Truncate
    } else {
        OnCorruption::Stop
    };
    let r = recover(&args.data_dir, seg, on_corruption)?;
    let t = Instant::now();
    let audit = shm::ledger::audit(seg, Duration::from_secs(5))?;
    anyhow::ensure!(
        audit.ok(),
        "the ledger recovered from {} fails its audit: {}",
        args.data_dir.display(),
        audit.violations.join("; ")
    );
    shm::journal::start_at(seg, r.next_lsn);
    shm::journal::set_mode(seg, shm::journal::Mode::Sync);
    tracing::info!(
        data_dir = %args.data_dir.display(),
        checkpoint = ?r.checkpoint.as_ref().map(|c| c.0.display().to_string()),
        checkpoint_records = r.checkpoint_records,
        journal_segments = r.segments,
        records_replayed = r.replayed,
        torn_tail_dropped = r.torn.is_some(),
        users = shm::Users::of(seg).count(),
        txn_seq = audit.txn_seq,
        recovery_ms = r.elapsed.as_secs_f64() * 1e3,
        audit_ms = t.elapsed().as_secs_f64() * 1e3,
        "recovered: checkpoint + journal replayed, audit clean"
    );
    Ok(())
}

/// True when every worker has published its pid, which it does once its listener is open.
fn all_listening(seg: &shm::Segment, pids: &[Option<Pid>]) -> bool {
    let metrics = shm::Metrics::of(seg);
    pids.iter().enumerate().all(|(i, p)| {
        p.is_some_and(|pid| {
            metrics
                .worker(i)
                .is_some_and(|m| m.pid.get() == pid.as_raw() as u64)
        })
    })
}

/// After a worker died: finish its half-done ledger operation, free its locks, end its users'
/// sessions and room memberships.
fn clean_up_after(seg: &shm::Segment, worker: u32, pid: Pid, how: &str, stopping: bool) {
    let report = shm::ledger::recover_slot(seg, worker);
    let offline = shm::Users::of(seg).clear_worker(worker as u16);
    let left = shm::Rooms::of(seg).remove_worker(worker).unwrap_or(0);
    if let Some(m) = shm::Metrics::of(seg).worker(worker as usize) {
        m.pid.set(0);
        m.conns_active.set(0);
    }
    match report {
        Ok(r) if stopping && how == "exit code 0" => {
            tracing::info!(worker, pid = pid.as_raw(), "worker exited");
            let _ = r;
        }
        Ok(r) => tracing::warn!(
            worker,
            pid = pid.as_raw(),
            how,
            locks_recovered = r.locks_recovered,
            intents_rolled_forward = r.intents_recovered,
            users_offline = offline,
            memberships_removed = left,
            "worker died; its state is recovered"
        ),
        Err(e) => {
            tracing::error!(worker, error = %e, "recovering a dead worker's ledger slot failed")
        }
    }
}

fn install_signal_handlers() -> nix::Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet};
    let act = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    // SAFETY: the handler only increments an atomic, which is async-signal-safe.
    unsafe {
        sigaction(Signal::SIGINT, &act)?;
        sigaction(Signal::SIGTERM, &act)?;
        sigaction(
            Signal::SIGPIPE,
            &SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty()),
        )?;
    }
    Ok(())
}
