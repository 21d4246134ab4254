//! The command line: every subcommand's arguments (clap derive). The commands themselves are
//! in [`crate::commands`].

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::load::Mix;

/// Load generator for the NS trading chatroom server.
#[derive(Debug, Parser)]
#[command(name = "bench-client", version)]
pub struct Args {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one configuration against a running server and report (console + one CSV row).
    Run(RunArgs),
    /// Start the server for each worker count and run every cell of payload x mix x
    /// connections against it; one CSV row per cell, a table at the end.
    Sweep(SweepArgs),
    /// Chat and trade by hand: log in, join rooms, send, see pushes as they arrive, pay people.
    Chat(ChatArgs),
    /// Ledger traffic on a running server while requests are abandoned on purpose and (with
    /// --server-name, same machine) a random worker is killed (SIGKILL) or stalled (SIGSTOP for
    /// 200-500 ms) every 0.5-2 s; then
    /// every account's BALANCE and TXN_HISTORY, read over the wire, are compared with the
    /// client's own model: every acknowledged operation exactly once, nothing else.
    Chaos(ChaosArgs),
    /// This server beside Redis, like with like: starts both (uring-server and redis-server,
    /// each on a free port, durability none and/or sync = `appendfsync always`) and runs
    /// every cell of mix x pipeline against one, then the other (A B A B ...), the same load
    /// loop speaking NS to one and RESP to the other. CSV rows, a summary and a side-by-side
    /// table. Without redis-server: says how to install it and runs this server alone.
    ///
    /// The mixes in RESP: heartbeat = PING, balance = GET of the account's key, trade-heavy =
    /// a checked-transfer and a deposit script (EVALSHA, loaded at start) and GET, chat-heavy
    /// = PUBLISH to channels every connection is SUBSCRIBEd to (RESP3), and GET.
    Peers(PeersArgs),
    /// New connections per second against a running server: each one opened (with --tls, a
    /// full TLS handshake, the certificate verified), answered one HELLO and closed, from
    /// several threads; reports connections/s and the latency from connect to first answer.
    Handshakes(HandshakesArgs),
}

/// `bench-client handshakes`.
#[derive(Debug, clap::Args)]
pub struct HandshakesArgs {
    /// Where the server listens (and how to speak TLS to it).
    #[command(flatten)]
    pub target: Target,
    /// Client threads, each opening one connection after another (default: one per
    /// --client-cpus CPU when pinned, else 2).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Measured seconds.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Unmeasured seconds first.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// CPUs the client's threads run on (`taskset -c` syntax; default: any).
    #[arg(long)]
    pub client_cpus: Option<crate::cpus::CpuList>,
    /// TLS: resume sessions from the tickets of earlier connections (default: every handshake
    /// is a full one).
    #[arg(long, requires = "tls")]
    pub resume: bool,
}

impl HandshakesArgs {
    /// The client's CPUs (empty: any).
    pub fn client_cpus(&self) -> Vec<usize> {
        self.client_cpus.clone().unwrap_or_default().0
    }
}

/// `bench-client peers`.
#[derive(Debug, clap::Args)]
pub struct PeersArgs {
    /// Mixes.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "heartbeat,balance,trade-heavy,chat-heavy,fanout"
    )]
    pub mix: Vec<Mix>,
    /// Fan-out: connections that publish to the one room (the rest only listen).
    #[arg(long, default_value_t = 10)]
    pub publishers: usize,
    /// Requests in flight per connection.
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    pub pipeline: Vec<usize>,
    /// Durability modes: none (NS --durability none, Redis without persistence) and sync (NS
    /// --durability sync, Redis appendonly with appendfsync always).
    #[arg(long, value_delimiter = ',', value_enum, default_value = "none,sync")]
    pub durability: Vec<crate::server::Durability>,
    /// Transports: tcp (plaintext), tls (both servers with a fresh test PKI: uring-server
    /// --tls-cert, redis-server --tls-port; the client verifies the certificate). With both,
    /// every cell runs on each, interleaved, and a table gives TLS's share of plaintext.
    #[arg(long, value_delimiter = ',', value_enum, default_value = "tcp")]
    pub transport: Vec<crate::server::Transport>,
    /// Connections.
    #[arg(long, default_value_t = 100)]
    pub connections: usize,
    /// Chat text bytes.
    #[arg(long, default_value_t = 32)]
    pub payload: usize,
    /// Measured seconds per run.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Unmeasured seconds before each run.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Runs of every cell on each server, interleaved.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeat: u32,
    /// Client threads, each with its own event loop (default: one per --client-cpus CPU when
    /// pinned, else 2). More threads than pinned CPUs time-slice: every scheduler slice a
    /// thread waits for shows as latency (a 4 ms p99 seen with 2 threads on 1 CPU).
    #[arg(long)]
    pub threads: Option<usize>,
    /// uring-server's worker processes (Redis runs commands on one thread: 1 is like for
    /// like).
    #[arg(long, default_value_t = 1)]
    pub workers: u32,
    /// uring-server's I/O backend.
    #[arg(long, value_enum, default_value_t = ServerIo::Uring)]
    pub io: ServerIo,
    /// The uring-server binary (default: beside this program).
    #[arg(long)]
    pub server: Option<PathBuf>,
    /// The redis-server binary (default: $NS_REDIS_SERVER, else redis-server on PATH).
    #[arg(long)]
    pub redis_server: Option<PathBuf>,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Where server and client run.
    #[command(flatten)]
    pub place: Placement,
    /// CSV to append to (required); the summary goes to `<out>-summary.csv` and the
    /// side-by-side table to `<out>-table.md`.
    #[arg(long)]
    pub out: PathBuf,
}

/// `bench-client chaos`.
#[derive(Debug, clap::Args)]
pub struct ChaosArgs {
    /// Where the server listens.
    #[command(flatten)]
    pub target: Target,
    /// The server's `--name`, when it runs on this machine: workers are killed (their pids come
    /// from its shared memory) and the ledger audited after every kill. Without it: no kills.
    #[arg(long)]
    pub server_name: Option<String>,
    /// Requests abandoned on purpose (sent, connection given up, retried on a new one), per
    /// thousand.
    #[arg(long, default_value_t = 20)]
    pub abandon_per_mille: u32,
    /// How long a client waits for an answer before it gives up on the connection and retries
    /// on a new one, ms.
    #[arg(long, default_value_t = 250)]
    pub timeout_ms: u64,
    /// Connections.
    #[arg(long, default_value_t = 200)]
    pub connections: usize,
    /// Client threads.
    #[arg(long, default_value_t = 8)]
    pub threads: usize,
    /// Seconds of chaos.
    #[arg(long, default_value_t = 30.0)]
    pub duration: f64,
    /// Shortest pause between kills, ms.
    #[arg(long, default_value_t = 500)]
    pub kill_min_ms: u64,
    /// Longest pause between kills, ms.
    #[arg(long, default_value_t = 2000)]
    pub kill_max_ms: u64,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Full crashes instead of worker faults: bench-client starts its own server (the
    /// uring-server beside it, on a free port, with a data directory) and, at random instants,
    /// kills every one of its processes with SIGKILL, removes its shared memory and starts it
    /// again from the same data directory. --port and --server-name are ignored.
    #[arg(long)]
    pub restart: bool,
    /// With --restart: the data directory (default: a temporary one, removed afterwards).
    #[arg(long)]
    pub data_dir: Option<std::path::PathBuf>,
    /// With --restart: the server's worker count.
    #[arg(long, default_value_t = 2)]
    pub workers: u32,
    /// With --restart: the server's I/O backend.
    #[arg(long, value_enum, default_value_t = ServerIo::Auto)]
    pub io: ServerIo,
}

/// `bench-client chat`.
#[derive(Debug, clap::Args)]
pub struct ChatArgs {
    /// Where the server listens.
    #[command(flatten)]
    pub target: Target,
    /// Your user name.
    #[arg(long)]
    pub user: String,
    /// Your password (or set NS_PASSWORD).
    #[arg(long)]
    pub password: Option<String>,
    /// Create the account first if it does not exist.
    #[arg(long)]
    pub register: bool,
}

/// `bench-client sweep`.
#[derive(Debug, clap::Args)]
pub struct SweepArgs {
    /// Chat payload sizes (only the chat mixes vary with it).
    #[arg(long, value_delimiter = ',', default_value = "32,256,1024")]
    pub payload: Vec<usize>,
    /// Server worker counts.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    pub workers: Vec<u32>,
    /// Mixes.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "trade-heavy,mixed,chat-heavy"
    )]
    pub mix: Vec<Mix>,
    /// Connection counts.
    #[arg(long, value_delimiter = ',', default_value = "100")]
    pub connections: Vec<usize>,
    /// Measured seconds per cell.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Unmeasured seconds per cell.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Client threads, each with its own event loop (default: one per --client-cpus CPU when
    /// pinned, else 2). More threads than pinned CPUs time-slice: every scheduler slice a
    /// thread waits for shows as latency (a 4 ms p99 seen with 2 threads on 1 CPU).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 1)]
    pub pipeline: usize,
    /// The server's I/O backend.
    #[arg(long, value_enum, default_value_t = ServerIo::Uring)]
    pub io: ServerIo,
    /// tcp, or tls: each server started with a fresh test PKI (--tls-cert) and every
    /// connection over TLS, the certificate verified.
    #[arg(long, value_enum, default_value_t = crate::server::Transport::Tcp)]
    pub transport: crate::server::Transport,
    /// The server binary (default: uring-server beside this program).
    #[arg(long)]
    pub server: Option<PathBuf>,
    /// Seed (each cell derives its own from it).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Runs of every cell, interleaved (every cell once, then every cell again, ...): the
    /// table and `<out>-summary.csv` give the median and the min-max of each cell.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeat: u32,
    /// CSV to append to (required: a sweep writes only where it is told, and never into the
    /// repository's published results unless they are named here).
    #[arg(long)]
    pub out: PathBuf,
    /// Directory for one HdrHistogram percentile file (.hgrm) of latencies per cell (default:
    /// beside `--out`, named after it: `results/x.csv` → `results/x-hgrm/`).
    #[arg(long)]
    pub hist_dir: Option<PathBuf>,
    /// Where server and client run.
    #[command(flatten)]
    pub place: Placement,
}

impl SweepArgs {
    /// Where the .hgrm files go: `--hist-dir`, else beside `--out`.
    pub fn hist_dir(&self) -> PathBuf {
        self.hist_dir.clone().unwrap_or_else(|| {
            let stem = self
                .out
                .file_stem()
                .map_or_else(|| "sweep".into(), |s| s.to_string_lossy().into_owned());
            self.out.with_file_name(format!("{stem}-hgrm"))
        })
    }
}

/// `bench-client run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Where the server listens.
    #[command(flatten)]
    pub target: Target,
    /// The protocol: `ns` (this server) or `resp` (a Redis-compatible server: the mixes'
    /// Redis equivalents, see `bench-client peers --help`).
    #[arg(long, value_enum, default_value_t = crate::load::Protocol::Ns)]
    pub protocol: crate::load::Protocol,
    /// Connections (each logs in as its own user).
    #[arg(long, default_value_t = 100)]
    pub connections: usize,
    /// Client threads, each with its own event loop (default: one per --client-cpus CPU when
    /// pinned, else 2). More threads than pinned CPUs time-slice: every scheduler slice a
    /// thread waits for shows as latency (a 4 ms p99 seen with 2 threads on 1 CPU).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Unmeasured seconds first.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// What to send.
    #[arg(long, value_enum, default_value_t = Mix::Mixed)]
    pub mix: Mix,
    /// Chat text bytes.
    #[arg(long, default_value_t = 32)]
    pub payload: usize,
    /// Requests in flight per connection (closed loop).
    #[arg(long, default_value_t = 1)]
    pub pipeline: usize,
    /// Open loop at this many requests per second in total; latency from intended send times.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Accounts that receive the transfers (lock contention).
    #[arg(long, default_value_t = 8)]
    pub hot_accounts: usize,
    /// Rooms for the chat mixes (fan-out: always one).
    #[arg(long, default_value_t = 10)]
    pub rooms: usize,
    /// Fan-out: connections that publish to the one room (the rest only listen).
    #[arg(long, default_value_t = 10)]
    pub publishers: usize,
    /// Seed for every random choice (printed; rerun with it to replay).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Append one CSV row (header written if the file is new).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Label for the CSV's backend column (the server's `--io`).
    #[arg(long, default_value = "unknown")]
    pub backend: String,
    /// The server's `--name`, to read its processes from shared memory and report its CPU time
    /// per request (server on this machine only).
    #[arg(long)]
    pub server_name: Option<String>,
    /// A server process (any server, Redis too) whose CPU time per request to report;
    /// repeatable.
    #[arg(long)]
    pub server_pid: Vec<u32>,
    /// Write HdrHistogram percentile files (.hgrm) per operation into this directory.
    #[arg(long)]
    pub hist_dir: Option<PathBuf>,
    /// Where server and client run. `run` pins only the client: pin the server yourself
    /// (`taskset -c 0 uring-server ...`) and say so with `--server-cpus`, which the CSV records.
    #[command(flatten)]
    pub place: Placement,
}

/// Where the server listens: the commands that talk to one already running.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// Server host.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Server port.
    #[arg(long, default_value_t = 9000)]
    pub port: u16,
    /// How to speak TLS to it.
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// TLS on the client's side: off unless `--tls`; the server's certificate is verified unless
/// `--tls-insecure`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// Speak TLS (the server runs with --tls-cert).
    #[arg(long)]
    pub tls: bool,
    /// Trust the CAs in this PEM file (`uring-server gen-cert` writes ca.pem); default: the
    /// system's CA bundle.
    #[arg(long, requires = "tls")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Do not verify the server's certificate (tests, self-signed setups).
    #[arg(long, requires = "tls", conflicts_with = "tls_ca")]
    pub tls_insecure: bool,
    /// The name the server's certificate must carry (default: --host).
    #[arg(long, requires = "tls")]
    pub tls_server_name: Option<String>,
    /// Present this client certificate (PEM chain) when the server asks for one.
    #[arg(long, requires_all = ["tls", "tls_key"])]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
}

impl TlsArgs {
    /// The client TLS configuration, or `None` without `--tls`. `host` is the name the
    /// certificate is checked against unless `--tls-server-name` says another.
    pub fn client(&self, host: &str) -> anyhow::Result<Option<crate::ClientTls>> {
        if !self.tls {
            return Ok(None);
        }
        let trust = match (&self.tls_ca, self.tls_insecure) {
            (Some(ca), _) => crate::Trust::Ca(ca.clone()),
            (None, true) => crate::Trust::Insecure,
            (None, false) => crate::Trust::System,
        };
        let name = self.tls_server_name.as_deref().unwrap_or(host);
        let cert = self.tls_cert.as_deref().zip(self.tls_key.as_deref());
        Ok(Some(crate::ClientTls::new(&trust, name, cert)?))
    }
}

impl Target {
    /// The client TLS configuration for this server, if `--tls`.
    pub fn tls(&self) -> anyhow::Result<Option<crate::ClientTls>> {
        self.tls.client(&self.host)
    }

    /// The address to connect to.
    pub fn resolve(&self) -> anyhow::Result<std::net::SocketAddr> {
        use std::net::ToSocketAddrs;
        (self.host.as_str(), self.port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| anyhow::anyhow!("cannot resolve {}", self.host))
    }
}

/// Where server and client run (`taskset -c` syntax: `0`, `0-1`, `0,2`; default: any CPU). The
/// commands that start their own servers pin them there; `run` records it.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Placement {
    /// CPUs the server's processes run on: `peers` and `sweep` pin the servers they start
    /// there; `run` only records it in the CSV (pin the server yourself: `taskset -c 0
    /// uring-server ...`).
    #[arg(long)]
    pub server_cpus: Option<crate::cpus::CpuList>,
    /// CPUs the client's threads run on.
    #[arg(long)]
    pub client_cpus: Option<crate::cpus::CpuList>,
}

impl Placement {
    /// The server's CPUs (empty: any).
    pub fn server(&self) -> Vec<usize> {
        self.server_cpus.clone().unwrap_or_default().0
    }

    /// The client's CPUs (empty: any).
    pub fn client(&self) -> Vec<usize> {
        self.client_cpus.clone().unwrap_or_default().0
    }
}

/// uring-server's `--io`, for the servers a command starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ServerIo {
    /// io_uring, or fail.
    Uring,
    /// epoll.
    Epoll,
    /// io_uring where available, else epoll.
    Auto,
}

impl ServerIo {
    /// The value uring-server takes.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerIo::Uring => "uring",
            ServerIo::Epoll => "epoll",
            ServerIo::Auto => "auto",
        }
    }
}

impl std::fmt::Display for ServerIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
