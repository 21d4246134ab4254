//! Starting the real server for a sweep or an example: `uring-server --port 0` with a unique
//! `--name`, reading the address it prints once every worker listens; stopped with SIGTERM and
//! reaped on drop.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A server this process started.
#[derive(Debug)]
pub struct SpawnedServer {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where it serves Prometheus metrics (`--metrics-addr`), if it does.
    pub metrics: Option<SocketAddr>,
    /// The backend it reported (`io_uring` or `epoll`).
    pub backend: String,
    /// Its `--name`.
    pub name: String,
    exe: PathBuf,
    /// The data directory this launcher made for it (removed once it exited), when the
    /// arguments named none.
    owned_data_dir: Option<PathBuf>,
}

/// The `uring-server` binary beside the running program (or one directory up, for examples).
pub fn locate() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let found = [me.parent(), me.parent().and_then(Path::parent)]
        .into_iter()
        .flatten()
        .map(|d| d.join("uring-server"))
        .find(|p| p.exists());
    found.ok_or_else(|| {
        anyhow::anyhow!(
            "uring-server not found beside {}: cargo build --release",
            me.display()
        )
    })
}

/// How a [`SpawnedServer`] is started beyond its arguments.
#[derive(Debug, Default, Clone)]
pub struct Launch {
    /// Keep the server's stderr (its log) for [`SpawnedServer::take_stderr`]; else discarded
    /// (or inherited when `inherit_stderr`).
    pub capture_stderr: bool,
    /// Let the server's log go to this process's stderr.
    pub inherit_stderr: bool,
    /// Extra environment variables (`RUST_LOG`, ...).
    pub env: Vec<(String, String)>,
    /// CPUs the server (master, and so every process it forks) may run on; empty: any.
    pub cpus: Vec<usize>,
}

impl SpawnedServer {
    /// Starts `exe --port 0 --name NAME ARGS...` and waits until it listens.
    /// The server's log is discarded unless `NS_SERVER_LOG` is set (then it goes to this
    /// process's stderr).
    pub fn start(exe: &Path, name: &str, args: &[&str]) -> anyhow::Result<SpawnedServer> {
        let launch = Launch {
            inherit_stderr: std::env::var_os("NS_SERVER_LOG").is_some(),
            ..Launch::default()
        };
        Self::start_with(exe, name, args, &launch)
    }

    /// [`SpawnedServer::start`], with stderr and environment as `launch` says.
    pub fn start_with(
        exe: &Path,
        name: &str,
        args: &[&str],
        launch: &Launch,
    ) -> anyhow::Result<SpawnedServer> {
        let stderr = if launch.capture_stderr {
            Stdio::piped()
        } else if launch.inherit_stderr {
            Stdio::inherit()
        } else {
            Stdio::null()
        };
        // Every server gets a journal of its own: a temporary data directory unless the
        // arguments name one (a restart test reuses its directory on purpose).
        let owned_data_dir = if args.contains(&"--data-dir") {
            None
        } else {
            let d = std::env::temp_dir().join(format!("ns-data-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            Some(d)
        };
        let mut cmd = Command::new(exe);
        cmd.args(["--name", name]);
        if !args.contains(&"--port") {
            cmd.args(["--port", "0"]);
        }
        if let Some(d) = &owned_data_dir {
            cmd.arg("--data-dir").arg(d);
        }
        // A child inherits the affinity of the thread that spawns it: this thread takes the
        // server's CPUs for the spawn and gets its own back after.
        let _placed = crate::cpus::Scoped::pin(&launch.cpus)
            .map_err(|e| anyhow::anyhow!("--server-cpus: {e}"))?;
        let mut child = cmd
            .args(args)
            .envs(launch.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting {}: {e}", exe.display()))?;
        let mut line = String::new();
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        std::io::BufReader::new(stdout).read_line(&mut line)?;
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.len() < 5 {
            let status = child
                .wait()
                .map_or_else(|e| e.to_string(), |s| s.to_string());
            let mut log = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut log);
            }
            if let Some(d) = &owned_data_dir {
                let _ = std::fs::remove_dir_all(d);
            }
            anyhow::bail!(
                "the server did not start ({status}; set NS_SERVER_LOG=1 to see its log): \
                 {line:?} {log}"
            );
        }
        // `... metrics ADDR` when it serves --metrics-addr.
        let metrics = match words.get(7..9) {
            Some(["metrics", a]) => Some(a.parse()?),
            _ => None,
        };
        Ok(SpawnedServer {
            addr: words[2].parse()?,
            metrics,
            backend: words[4].to_string(),
            child,
            name: name.to_string(),
            exe: exe.to_path_buf(),
            owned_data_dir,
        })
    }

    /// The master's and the workers' pids, from `uring-server stats --format json`.
    pub fn pids(&self) -> Vec<u32> {
        server_pids(&self.name)
    }

    /// The master's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `sig` to the master (by its pid, never by name).
    pub fn signal(&self, sig: nix::sys::signal::Signal) -> nix::Result<()> {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig)
    }

    /// Waits up to `limit` for the master to exit; its exit code (-1 for a signal), or `None`
    /// if it is still running.
    pub fn wait_exit(&mut self, limit: std::time::Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status.code().unwrap_or(-1));
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// SIGKILL to the master, and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A power cut and a reboot, for this server: SIGKILL by pid to the master, every worker
    /// and the journal writer at once; waits until they are gone, then removes the shared-memory
    /// segment (which must be there). Returns the pids it killed.
    pub fn crash(&mut self) -> anyhow::Result<Vec<u32>> {
        use nix::sys::signal::{kill, Signal};
        let pids = server_stats(&self.name)?.all_pids();
        for &p in &pids {
            let _ = kill(nix::unistd::Pid::from_raw(p as i32), Signal::SIGKILL);
        }
        self.kill();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while pids.iter().any(|&p| process_running(p)) {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "server processes outlived SIGKILL"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let shm = format!("/dev/shm/ns-{}", self.name);
        std::fs::remove_file(&shm).map_err(|e| anyhow::anyhow!("removing {shm}: {e}"))?;
        Ok(pids)
    }

    /// Everything the server wrote to stderr (when captured), once it has exited.
    pub fn take_stderr(&mut self) -> String {
        let mut log = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut log);
        }
        log
    }

    /// Runs `uring-server audit` against it; true when every invariant holds.
    pub fn audit(&self) -> bool {
        Command::new(&self.exe)
            .args(["--name", &self.name, "audit"])
            .output()
            .is_ok_and(|o| o.status.success())
    }
}

impl Drop for SpawnedServer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SIGTERM by pid: the server drains, unlinks its shared memory and exits.
            let _ = self.signal(nix::sys::signal::Signal::SIGTERM);
            if self.wait_exit(std::time::Duration::from_secs(10)).is_none() {
                self.kill();
            }
        }
        let _ = self.child.wait();
        if let Some(d) = &self.owned_data_dir {
            // The master has exited; a child it forked may still hold the directory's lock for
            // a moment, which does not stop the removal.
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// What `uring-server stats --format json` says that this crate uses (other fields ignored).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ServerStats {
    /// The JSON's format; this crate reads version 1.
    pub format_version: u32,
    /// The master's pid.
    pub master_pid: u32,
    /// Every worker slot, by index.
    pub workers: Vec<WorkerStats>,
    /// The journal (absent from servers before it).
    #[serde(default)]
    pub journal: Option<JournalStats>,
}

/// The part of the journal's figures this crate uses.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct JournalStats {
    /// The journal writer process (0: none running).
    pub writer_pid: u32,
}

impl ServerStats {
    /// Every process of the server: the master, the workers and the journal writer (pids
    /// above 1 only).
    pub fn all_pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.running_workers().into_iter().map(|w| w.1).collect();
        pids.extend(
            self.journal
                .as_ref()
                .map(|j| j.writer_pid)
                .filter(|&p| p > 1),
        );
        if self.master_pid > 1 {
            pids.push(self.master_pid);
        }
        pids
    }
}

impl ServerStats {
    /// (index, pid) of every worker running now. A pid of 0 (a worker being restarted) or 1
    /// would signal a process group or init: left out.
    pub fn running_workers(&self) -> Vec<(usize, u32)> {
        self.workers
            .iter()
            .map(|w| (w.index, w.pid))
            .filter(|&(_, p)| p > 1)
            .collect()
    }
}

/// One worker in [`ServerStats`].
#[derive(Debug, Clone, Copy, serde::Deserialize)]
pub struct WorkerStats {
    /// Its index (the worker number the server's HELLO reports).
    pub index: usize,
    /// Its pid; 0 while it is being restarted.
    pub pid: u32,
}

/// Asks the running server named `name` (same machine) for its processes, through the
/// `uring-server stats --format json` tool: this crate speaks to the server only over the wire
/// and through its command line, never through its shared memory.
pub fn server_stats(name: &str) -> anyhow::Result<ServerStats> {
    let exe = locate()?;
    let out = Command::new(&exe)
        .args(["stats", "--name", name, "--format", "json"])
        .stderr(Stdio::null())
        .output()
        .map_err(|e| anyhow::anyhow!("running {} stats: {e}", exe.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "uring-server stats --name {name} failed: is the server running?"
    );
    let stats: ServerStats = serde_json::from_slice(&out.stdout)?;
    anyhow::ensure!(
        stats.format_version == STATS_FORMAT_VERSION,
        "uring-server stats --format json says format {}, this bench-client reads {STATS_FORMAT_VERSION}: use the uring-server built with it",
        stats.format_version
    );
    Ok(stats)
}

/// The `stats --format json` format this crate reads.
pub const STATS_FORMAT_VERSION: u32 = 1;

/// Runs `uring-server audit --name NAME`: `Ok(None)` when every invariant holds, else the
/// violations it printed.
pub fn audit(name: &str) -> anyhow::Result<Option<String>> {
    let exe = locate()?;
    let out = Command::new(&exe)
        .args(["audit", "--name", name])
        .stderr(Stdio::null())
        .output()
        .map_err(|e| anyhow::anyhow!("running {} audit: {e}", exe.display()))?;
    Ok((!out.status.success()).then(|| String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// A running server's processes (master and workers); empty if it cannot be asked.
pub fn server_pids(name: &str) -> Vec<u32> {
    let Ok(stats) = server_stats(name) else {
        return Vec::new();
    };
    // The journal writer's CPU is part of what a request costs in durable mode.
    stats.all_pids()
}

/// True while `pid` runs (a zombie, dead but not yet reaped, counts as gone).
pub fn process_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

/// How durable a spawned Redis is: the peer of the NS server's `--durability`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Durability {
    /// NS `--durability none`; Redis `--save "" --appendonly no`: nothing written.
    None,
    /// NS `--durability sync`; Redis `--appendonly yes --appendfsync always`: an answer only
    /// once its write is on stable storage.
    Sync,
}

impl Durability {
    /// Its name in reports (and the NS server's `--durability` value).
    pub fn name(self) -> &'static str {
        match self {
            Durability::None => "none",
            Durability::Sync => "sync",
        }
    }

    /// Redis's arguments for it.
    pub fn redis_args(self) -> &'static [&'static str] {
        match self {
            Durability::None => &["--save", "", "--appendonly", "no"],
            Durability::Sync => &[
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ],
        }
    }
}

/// Plaintext or TLS, for the commands that start their own servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// Plaintext TCP.
    Tcp,
    /// TLS over TCP.
    Tls,
}

impl Transport {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
}

/// A test PKI in a scratch directory (removed on drop) and a client that trusts its CA: what
/// `peers --transport tls` starts both servers with.
#[derive(Debug)]
pub struct TestPki {
    /// The files.
    pub certs: ns_tls::GeneratedCerts,
    /// A client for 127.0.0.1 that trusts the CA.
    pub client: crate::ClientTls,
    _dir: crate::scratch::ScratchDir,
}

impl TestPki {
    /// A fresh one for 127.0.0.1 (and localhost, ::1).
    pub fn new() -> anyhow::Result<TestPki> {
        let dir = crate::scratch::ScratchDir::new("ns-pki")?;
        let names = ["localhost", "127.0.0.1", "::1"].map(String::from);
        let certs = ns_tls::generate(dir.path(), &names, ns_tls::Validity::Days(2))?;
        let client = crate::ClientTls::new(&crate::Trust::Ca(certs.ca.clone()), "127.0.0.1", None)?;
        Ok(TestPki {
            certs,
            client,
            _dir: dir,
        })
    }

    /// uring-server's arguments for it.
    pub fn server_args(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.certs.cert.to_string_lossy().into_owned(),
            "--tls-key".into(),
            self.certs.key.to_string_lossy().into_owned(),
        ]
    }
}

/// A `redis-server` this process started: on a free loopback port, its files in a temporary
/// directory of its own, stopped (SIGTERM by pid, then SIGKILL) and reaped on drop, the
/// directory removed.
#[derive(Debug)]
pub struct SpawnedRedis {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// `redis-server 7.0.15`, as its `--version` says.
    pub version: String,
    /// Its files (the append-only file, the log); removed after it stopped (fields drop in
    /// order: declared after `child`, which `Drop` has reaped by then).
    _dir: crate::scratch::ScratchDir,
}

/// The `redis-server` to compare with: `$NS_REDIS_SERVER` (if that file exists), else the
/// first on `PATH`.
pub fn locate_redis() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NS_REDIS_SERVER") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join("redis-server"))
        .find(|p| p.is_file())
}

/// What to tell someone who has no `redis-server`.
pub const REDIS_MISSING: &str = "redis-server not found (neither $NS_REDIS_SERVER nor on PATH): \
     install it (Debian/Ubuntu: apt-get install redis-server) to compare with Redis";

impl SpawnedRedis {
    /// Starts `exe` with `durability`, pinned to `cpus` (empty: any), and waits until it
    /// answers PING.
    pub fn start(exe: &Path, durability: Durability, cpus: &[usize]) -> anyhow::Result<Self> {
        Self::start_over(exe, durability, cpus, None)
    }

    /// [`SpawnedRedis::start`], serving TLS only (`--port 0 --tls-port`) with `pki` when given.
    pub fn start_over(
        exe: &Path,
        durability: Durability,
        cpus: &[usize],
        pki: Option<&TestPki>,
    ) -> anyhow::Result<Self> {
        let version = Command::new(exe)
            .arg("--version")
            .output()
            .map_err(|e| anyhow::anyhow!("running {} --version: {e}", exe.display()))?;
        let version = String::from_utf8_lossy(&version.stdout);
        let version = version
            .split_whitespace()
            .find_map(|w| w.strip_prefix("v="))
            .map_or_else(
                || "redis-server".to_string(),
                |v| format!("redis-server {v}"),
            );
        let dir = crate::scratch::ScratchDir::new("ns-redis")?;
        // A free port, taken back from the kernel just before Redis binds it; a race lost to
        // another program shows as Redis exiting, and is retried.
        let mut last = String::new();
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let _placed = crate::cpus::Scoped::pin(cpus)
                .map_err(|e| anyhow::anyhow!("--server-cpus: {e}"))?;
            let port_args: Vec<std::ffi::OsString> = match pki {
                None => vec!["--port".into(), port.to_string().into()],
                Some(p) => vec![
                    "--port".into(),
                    "0".into(),
                    "--tls-port".into(),
                    port.to_string().into(),
                    "--tls-cert-file".into(),
                    p.certs.cert.clone().into(),
                    "--tls-key-file".into(),
                    p.certs.key.clone().into(),
                    "--tls-ca-cert-file".into(),
                    p.certs.ca.clone().into(),
                    "--tls-auth-clients".into(),
                    "no".into(),
                ],
            };
            let mut child = Command::new(exe)
                .args(&port_args)
                .args(["--bind", "127.0.0.1"])
                .args(["--protected-mode", "no", "--daemonize", "no"])
                .arg("--logfile")
                .arg(dir.join("redis.log"))
                .arg("--dir")
                .arg(dir.path())
                .args(durability.redis_args())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| anyhow::anyhow!("starting {}: {e}", exe.display()))?;
            drop(_placed);
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    last = format!(
                        "redis-server exited ({status}): {}",
                        std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default()
                    );
                    break;
                }
                let ping = crate::resp::Conn::connect(
                    addr,
                    std::time::Duration::from_secs(1),
                    pki.map(|p| &p.client),
                )
                .and_then(|mut c| {
                    c.call(&[b"PING"], |v| {
                        Ok(v.clone() == crate::resp::Value::Simple(b"PONG"))
                    })
                });
                if let Ok(true) = ping {
                    return Ok(SpawnedRedis {
                        child,
                        addr,
                        version,
                        _dir: dir,
                    });
                }
                if std::time::Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    last = "redis-server did not answer PING within 10 s".into();
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        anyhow::bail!("{last}")
    }

    /// Its pid (one process; its threads are counted by [`crate::cpu_time::server_cpu_seconds`]).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for SpawnedRedis {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while matches!(self.child.try_wait(), Ok(None)) {
                if std::time::Instant::now() >= deadline {
                    let _ = self.child.kill();
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        let _ = self.child.wait();
    }
}
