//! Command line: the server's options and its tool subcommands.

use clap::{Parser, Subcommand, ValueEnum};

/// The NS trading chatroom server: a master that forks workers, each with its own io_uring (or
/// epoll) loop and SO_REUSEPORT listener, sharing chat and ledger state in shared memory.
#[derive(Debug, Clone, Parser)]
#[command(name = "uring-server", version)]
pub struct Args {
    /// Worker processes to fork (default: the number of cores).
    #[arg(short = 'w', long)]
    pub workers: Option<u32>,

    /// Address to listen on (loopback by default).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,

    /// TCP port; 0 picks a free one (printed at start).
    #[arg(long, default_value_t = 9000)]
    pub port: u16,

    /// I/O backend: io_uring, epoll, or auto (io_uring where the kernel allows it, else epoll).
    #[arg(long, value_enum, default_value_t = IoMode::Auto)]
    pub io: IoMode,

    /// Ledger locking: one lock per account, or one for the whole ledger (for comparison).
    #[arg(long, value_enum, default_value_t = LockModeArg::Account)]
    pub lock_mode: LockModeArg,

    /// Most open connections per worker; one more gets ERR_SERVER_BUSY and is closed.
    #[arg(long, default_value_t = 10_000)]
    pub max_conns: usize,

    /// Close a connection after this long without a frame from it.
    #[arg(long, default_value_t = 30_000)]
    pub idle_timeout_ms: u64,

    /// Longest a frame may take to arrive whole once its first byte came; then ERR_TIMEOUT and
    /// close (against senders that dribble bytes to hold a connection).
    #[arg(long, default_value_t = 10_000)]
    pub frame_timeout_ms: u64,

    /// Largest request body accepted; a longer one is answered ERR_TOO_LARGE and closed.
    #[arg(long, default_value_t = proto::BODY_LEN_MAX_DEFAULT)]
    pub body_len_max: u32,

    /// Most bytes queued for one connection; a client that does not read past this is closed.
    #[arg(long, default_value_t = 4 << 20)]
    pub out_max_bytes: usize,

    /// Whether clients may create accounts with REGISTER (closed: only `uring-server adduser`).
    #[arg(long, value_enum, default_value_t = Registration::Open)]
    pub registration: Registration,

    /// Chat flood limit: messages (room or direct) a user may send in a burst.
    #[arg(long, default_value_t = 100)]
    pub flood_burst: u32,

    /// Chat flood limit: messages per second after the burst; past it, ERR_RATE_LIMITED.
    #[arg(long, default_value_t = 50)]
    pub flood_per_sec: u32,

    /// io_uring: after a turn that fanned out (more sends than receives), the next wait holds
    /// completions back up to this long (µs) once one is there, so that more requests share
    /// each connection's one send per turn; 0 turns it off. Never when idle: an idle loop waits
    /// for the first completion as before. docs/DESIGN.md §5 has the A/B that chose it.
    #[arg(long, default_value_t = 20)]
    pub batch_wait_us: u32,

    /// How the kernel spreads new connections over the workers' listeners: `cpu` gives each to
    /// the worker at index (CPU that took its SYN) mod workers, so workers beyond the CPUs stay
    /// idle standbys instead of time-slicing the cores; `hash` is the kernel's default; `auto`
    /// is `cpu` when there are more workers than CPUs, else `hash` (on loopback the SYN's CPU
    /// is the client's, so `cpu` follows where the client runs).
    #[arg(long, value_enum, default_value_t = Steer::Auto)]
    pub steer: Steer,

    /// Pin workers to CPUs: `none` (default), `auto` (worker i on the i-th CPU this process may
    /// use, round robin), or a list (`0,1` or `0-3`; worker i on the (i mod len)-th entry).
    #[arg(long, default_value = "none", value_parser = parse_affinity)]
    pub cpu_affinity: CpuAffinity,

    /// Speak TLS on the port, with this certificate chain (PEM, leaf first). Every connection
    /// then starts with a TLS handshake (TLS 1.3; see --tls12); `uring-server gen-cert` makes a
    /// test one.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// The private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,

    /// Require a client certificate signed by this CA (PEM); a client without one is refused
    /// in the handshake.
    #[arg(long, requires = "tls_cert")]
    pub tls_client_ca: Option<std::path::PathBuf>,

    /// Accept TLS 1.2 clients as well as TLS 1.3.
    #[arg(long, requires = "tls_cert")]
    pub tls12: bool,

    /// Close a connection whose TLS handshake has not finished this long after it opened.
    #[arg(long, default_value_t = 10_000)]
    pub tls_handshake_timeout_ms: u64,

    /// Serve Prometheus metrics (`GET /metrics`, the text of `stats --format prometheus`) on
    /// this address, from the master (off by default; port 0 picks one, printed at start).
    #[arg(long)]
    pub metrics_addr: Option<std::net::SocketAddr>,

    /// Join a cluster through these NATS servers (`nats://127.0.0.1:4222,nats://...`; JetStream
    /// on). Rooms are then one by name across every node joined to the same NATS: a bridge
    /// process (forked and restarted like a worker) publishes this node's messages to the
    /// stream and applies the stream, in its one order, to the rooms here. Without it the server
    /// is a single node. docs/DESIGN.md §9.
    #[arg(long, value_delimiter = ',')]
    pub cluster: Vec<String>,

    /// This node's id in the cluster (1..=65535), unique among its nodes.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub node_id: u16,

    /// Replicas of the cluster's stream when this node creates it (3 for a 3-server NATS
    /// cluster: every message acknowledged by a majority, on disk).
    #[arg(long, default_value_t = 1)]
    pub cluster_replicas: usize,

    /// How long a CHAT_SEND waits for the stream to order its message before it is answered
    /// ERR_TIMEOUT (outcome unknown: it may still be delivered).
    #[arg(long, default_value_t = 5_000)]
    pub cluster_timeout_ms: u64,

    /// How long the start waits for the bridge to reach NATS and catch up with the stream
    /// before it gives up with an error (workers are forked only once it has).
    #[arg(long, default_value_t = 30)]
    pub cluster_wait_secs: u64,

    /// Users (and accounts) the shared memory holds.
    #[arg(long, default_value_t = 100_000)]
    pub max_users: u32,

    /// Rooms the shared memory holds.
    #[arg(long, default_value_t = 256)]
    pub max_rooms: u32,

    /// Members one room holds.
    #[arg(long, default_value_t = 1024)]
    pub members_per_room: u32,

    /// Messages each room's ring keeps for pushes and history (a power of two).
    #[arg(long, default_value_t = 256)]
    pub room_ring: u32,

    /// Transactions the ledger's log ring keeps (a power of two).
    #[arg(long, default_value_t = 1 << 18)]
    pub txn_log: u32,

    /// Outcomes of ledger requests kept per user, by req_id: a retry whose req_id is within this
    /// distance of the user's highest decided one gets its first answer (PROTOCOL.md 8.4).
    /// A power of two.
    #[arg(long, default_value_t = 32)]
    pub results_per_user: u32,

    /// Where the journal and checkpoints live (created 0700). Users, their SCRAM records,
    /// balances, transactions and what retries need survive a full restart from it.
    #[arg(long, default_value = "./ns-data")]
    pub data_dir: std::path::PathBuf,

    /// sync: REGISTER and every ledger answer wait until their journal record is on stable
    /// storage (group commit). none: no journal at all; nothing survives a restart.
    #[arg(long, value_enum, default_value_t = Durability::Sync)]
    pub durability: Durability,

    /// Journal bytes after which a checkpoint is written and the journal before it removed.
    /// Each checkpoint forks the journal writer and writes the whole ledger: a larger interval
    /// costs a longer replay at start (about 0.11 s per 100 MiB here, results/durability.txt) and fewer forks under
    /// load (at 64 MiB, one every 0.8 s at pipeline 16, which doubled p99.9).
    #[arg(long, default_value_t = 256 << 20)]
    pub checkpoint_bytes: u64,

    /// How the journal writer makes a batch durable: a write linked to an fdatasync, or one
    /// write flagged RWF_DSYNC (results/durability.txt compares them).
    #[arg(long, value_enum, default_value_t = crate::durable::writer::SyncMethod::Dsync)]
    pub journal_sync: crate::durable::writer::SyncMethod,

    /// on: journal segments are zero-filled ahead of the last write and a segment a checkpoint
    /// covered is reused, so a synced write overwrites allocated blocks (no ext4 metadata to
    /// commit; results/journal-prealloc.txt). off: every batch appends to the file.
    #[arg(long, value_enum, default_value_t = crate::durable::writer::Prealloc::On)]
    pub journal_prealloc: crate::durable::writer::Prealloc,

    /// direct: the journal bypasses the page cache (O_DIRECT, each batch padded to 4 KiB;
    /// results/journal-prealloc.txt); buffered: through it. direct falls back to buffered, with
    /// a log line, where the filesystem refuses O_DIRECT.
    #[arg(long, value_enum, default_value_t = crate::durable::writer::JournalIo::Direct)]
    pub journal_io: crate::durable::writer::JournalIo,

    /// Start even though the journal is corrupt in the middle: every record from the corrupt
    /// one on is DROPPED (money acknowledged after it is lost). For an operator who has no
    /// better copy; the default refuses to start and names the file and offset.
    #[arg(long)]
    pub journal_truncate_corrupt: bool,

    /// Read settings from this TOML file (keys are the long options: `port = 9000`); the
    /// command line overrides it. `uring-server print-config` prints every setting with its
    /// default.
    #[arg(long, global = true)]
    pub config: Option<std::path::PathBuf>,

    /// Name of this server instance's shared memory (/dev/shm/ns-<name>); tools use the same,
    /// given before or after the tool's name (`uring-server stats --name X`).
    #[arg(long, default_value = "ns", global = true)]
    pub name: String,

    /// A tool to run against a running server instead of starting one.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Tools that attach to a running server's shared memory.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Print the server's metrics (connections, req/s, opcodes, statuses, per worker).
    Stats {
        /// Refresh every second until interrupted.
        #[arg(long)]
        watch: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = StatsFormat::Text)]
        format: StatsFormat,
    },
    /// Check the ledger's invariants on a consistent view; exits 1 on any violation.
    Audit {
        /// Give up on a lock held longer than this (reported as stuck).
        #[arg(long, default_value_t = 5_000)]
        lock_timeout_ms: u64,
    },
    /// Write a test PKI into a directory: a CA (ca.pem, what clients trust), a server
    /// certificate and key for the names given (cert.pem, key.pem) and a client certificate
    /// (client.pem, client-key.pem). For tests and trying TLS out, not for production.
    GenCert {
        /// Where to write the files (created if missing).
        #[arg(long, default_value = "./ns-tls")]
        dir: std::path::PathBuf,
        /// DNS names and IP addresses the server certificate is for.
        #[arg(long, value_delimiter = ',', default_value = "localhost,127.0.0.1,::1")]
        names: Vec<String>,
        /// Days the certificates are valid.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// Print every setting a --config file may hold, each with its help and default.
    PrintConfig,
    /// Register a user (how accounts are made when registration is closed).
    Adduser {
        /// The user's name.
        user: String,
        /// The password; read from the NS_PASSWORD environment variable if absent.
        #[arg(long)]
        password: Option<String>,
    },
}

/// `--io`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IoMode {
    /// io_uring where available, else epoll (with a log line saying why).
    Auto,
    /// io_uring or fail.
    Uring,
    /// epoll.
    Epoll,
}

/// `--lock-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LockModeArg {
    /// One lock per account.
    Account,
    /// One lock for the ledger.
    Global,
}

/// `--durability`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Durability {
    /// Acknowledge only what is on stable storage.
    Sync,
    /// No journal (the behaviour before it, for comparison).
    None,
}

/// `--steer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Steer {
    /// `cpu` with more workers than CPUs, else `hash`.
    Auto,
    /// By the CPU that took the connection (a reuseport BPF program).
    Cpu,
    /// By a hash of the connection's addresses (the kernel's default).
    Hash,
}

/// `--cpu-affinity`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpuAffinity {
    /// Workers run wherever the scheduler puts them.
    None,
    /// Worker i on the i-th CPU of the master's affinity mask, round robin.
    Auto,
    /// Worker i on entry i mod len.
    List(Vec<usize>),
}

impl CpuAffinity {
    /// The CPU worker `i` is pinned to, if any; `allowed` is the master's affinity mask.
    pub fn cpu_of(&self, i: usize, allowed: &[usize]) -> Option<usize> {
        let list = match self {
            CpuAffinity::None => return None,
            CpuAffinity::Auto => allowed,
            CpuAffinity::List(l) => l.as_slice(),
        };
        (!list.is_empty()).then(|| list[i % list.len()])
    }
}

/// Parses `none`, `auto`, or a CPU list as `taskset -c` writes it (`0,2-3`).
pub fn parse_affinity(s: &str) -> Result<CpuAffinity, String> {
    match s {
        "none" => Ok(CpuAffinity::None),
        "auto" => Ok(CpuAffinity::Auto),
        list => placement::parse(list).map(CpuAffinity::List),
    }
}

/// `--registration`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Registration {
    /// Anyone may REGISTER.
    Open,
    /// REGISTER answers ERR_REGISTRATION_CLOSED.
    Closed,
}

/// `stats --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatsFormat {
    /// A table for people.
    Text,
    /// Prometheus text exposition format.
    Prometheus,
    /// One JSON object: the master's pid, every worker's pid and counters, the totals; for
    /// programs (bench-client reads pids and CPU from it).
    Json,
}

impl Args {
    /// The TLS options given.
    pub fn tls_options(&self) -> crate::tls::TlsOptions {
        crate::tls::TlsOptions {
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
            client_ca: self.tls_client_ca.clone(),
            allow_tls12: self.tls12,
        }
    }

    /// The shared-memory capacities these options ask for.
    pub fn capacities(&self, workers: u32) -> shm::Capacities {
        shm::Capacities {
            users: self.max_users,
            rooms: self.max_rooms,
            members_per_room: self.members_per_room,
            room_ring: self.room_ring,
            txn_log: self.txn_log,
            results_per_user: self.results_per_user,
            // Slots for the workers plus one for tools that write (adduser).
            workers: workers + 1,
        }
    }

    /// The worker count, defaulting to the cores.
    pub fn worker_count(&self) -> u32 {
        self.workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affinity_parses_none_auto_and_lists() {
        assert_eq!(parse_affinity("none"), Ok(CpuAffinity::None));
        assert_eq!(parse_affinity("auto"), Ok(CpuAffinity::Auto));
        assert_eq!(
            parse_affinity("0,2-4"),
            Ok(CpuAffinity::List(vec![0, 2, 3, 4]))
        );
        assert!(parse_affinity("3-1").is_err());
        assert!(parse_affinity("x").is_err());
        assert!(parse_affinity("").is_err());
        let l = CpuAffinity::List(vec![4, 6]);
        assert_eq!(
            (0..3).map(|i| l.cpu_of(i, &[])).collect::<Vec<_>>(),
            [Some(4), Some(6), Some(4)]
        );
        assert_eq!(CpuAffinity::Auto.cpu_of(3, &[0, 1]), Some(1));
        assert_eq!(CpuAffinity::None.cpu_of(0, &[0]), None);
    }
}
