//! What a run leaves behind: one CSV row per run, a struct whose field names are the columns
//! (docs and gnuplot scripts read them by name), appended to the file `--out` names with the
//! header written once.

use std::path::Path;

use crate::load::{Config, Results};

/// One run, as a CSV row. The column order is the field order.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CsvRow {
    /// Seconds since the Unix epoch when the row was written.
    pub timestamp: u64,
    /// Cores the client saw.
    pub cores: usize,
    /// Kernel release.
    pub kernel: String,
    /// The repository's commit, once per run (`unknown` outside a git checkout).
    pub git_commit: String,
    /// The server's I/O backend.
    pub backend: String,
    /// Distinct server workers the connections landed on.
    pub workers_seen: usize,
    /// Connections.
    pub connections: usize,
    /// Client threads.
    pub threads: usize,
    /// The request mix.
    pub mix: &'static str,
    /// Chat text bytes.
    pub payload: usize,
    /// Requests in flight per connection (closed loop).
    pub pipeline: usize,
    /// Open-loop rate in requests per second (empty: closed loop).
    pub rate: Option<u64>,
    /// Seed of the run's choices.
    pub seed: u64,
    /// Measured seconds.
    pub seconds: f64,
    /// Requests answered.
    pub requests: u64,
    /// Requests answered with an error status.
    pub errors: u64,
    /// Requests per second.
    pub req_per_s: u64,
    /// Latency percentiles and maximum, µs (from intended send times in open loop).
    pub p50_us: u64,
    /// 95th percentile, µs.
    pub p95_us: u64,
    /// 99th percentile, µs.
    pub p99_us: u64,
    /// 99.9th percentile, µs.
    pub p999_us: u64,
    /// Maximum, µs.
    pub max_us: u64,
    /// 99th percentile measured from the actual send, µs.
    pub p99_uncorrected_us: u64,
    /// Chat pushes delivered per second.
    pub pushes_per_s: u64,
    /// 99th percentile of send-to-delivery push latency, µs.
    pub push_p99_us: u64,
    /// Client CPU per request, µs.
    pub client_cpu_us_per_req: f64,
    /// Server CPU per request, µs (empty when the server's pids were not known).
    pub server_cpu_us_per_req: Option<f64>,
    /// The ledger audit after the run: `pass`, `FAIL`, or empty.
    pub audit: String,
    /// CPUs the server was pinned to (`0,1`), empty when not pinned.
    pub server_cpus: String,
    /// CPUs the client's threads were pinned to, empty when not pinned.
    pub client_cpus: String,
    /// The server's worker count when the sweep started it (empty for `run`).
    pub server_workers: Option<u32>,
    /// Which run of its cell this is, from 0 (a sweep's `--repeat`; empty for `run`).
    pub repeat: Option<u32>,
    /// The protocol spoken: `ns` or `resp`.
    pub protocol: &'static str,
    /// The server (`uring-server`, `redis-server 7.0.15`) when the client started it.
    pub server: String,
    /// Its durability (`none`, `sync`) when the client started it.
    pub durability: String,
    /// `tcp`, or `tls` for TLS over it.
    pub transport: &'static str,
}

/// Rounds to `places` decimals, for columns people read.
fn round(v: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (v * f).round() / f
}

impl CsvRow {
    /// The row for one run.
    pub fn new(
        cfg: &Config,
        backend: &str,
        r: &Results,
        audit: &str,
        git_commit: &str,
        server_cpus: &[usize],
    ) -> Self {
        let t = &r.total;
        let per_req = |s: f64| round(s * 1e6 / t.requests.max(1) as f64, 2);
        CsvRow {
            timestamp: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            git_commit: git_commit.to_string(),
            backend: backend.to_string(),
            workers_seen: r.workers_seen,
            connections: cfg.connections,
            threads: cfg.threads,
            mix: cfg.mix.name(),
            payload: cfg.payload,
            pipeline: cfg.pipeline,
            rate: cfg.rate.map(|x| x.round() as u64),
            seed: cfg.seed,
            seconds: round(r.seconds, 1),
            requests: t.requests,
            errors: t.errors.values().sum(),
            req_per_s: (t.requests as f64 / r.seconds).round() as u64,
            p50_us: t.latency_us.value_at_quantile(0.5),
            p95_us: t.latency_us.value_at_quantile(0.95),
            p99_us: t.latency_us.value_at_quantile(0.99),
            p999_us: t.latency_us.value_at_quantile(0.999),
            max_us: t.latency_us.max(),
            p99_uncorrected_us: t.latency_uncorrected_us.value_at_quantile(0.99),
            pushes_per_s: (r.pushes as f64 / r.seconds).round() as u64,
            push_p99_us: r.push_latency_us.value_at_quantile(0.99),
            client_cpu_us_per_req: per_req(r.client_cpu_s),
            server_cpu_us_per_req: r.server_cpu_s.map(per_req),
            audit: audit.to_string(),
            server_cpus: crate::cpus::format(server_cpus),
            client_cpus: crate::cpus::format(&cfg.client_cpus),
            server_workers: None,
            repeat: None,
            protocol: cfg.protocol.name(),
            transport: if cfg.tls.is_some() { "tls" } else { "tcp" },
            server: String::new(),
            durability: String::new(),
        }
    }

    /// Appends the row to `path`, writing the header first when the file is new.
    pub fn append(&self, path: &Path) -> anyhow::Result<()> {
        let new = !path.exists();
        if !new {
            // Rows of another layout would make the file unreadable: refuse instead.
            let mut header = csv::WriterBuilder::new().from_writer(Vec::new());
            header.serialize(self)?;
            let ours = String::from_utf8(header.into_inner()?)?;
            let ours = ours.lines().next().unwrap_or_default().to_string();
            let theirs = std::fs::read_to_string(path)?
                .lines()
                .next()
                .unwrap_or_default()
                .to_string();
            anyhow::ensure!(
                theirs.is_empty() || theirs == ours,
                "{} has other columns (written by another version): give a new --out",
                path.display()
            );
        }
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir)?;
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let mut w = csv::WriterBuilder::new().has_headers(new).from_writer(file);
        w.serialize(self)?;
        w.flush()?;
        Ok(())
    }
}

/// The repository's short commit, asked of git once per run; `unknown` outside a checkout.
pub fn git_commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_is_the_field_names_in_order_and_is_written_once() {
        let dir = std::env::temp_dir().join(format!("bc-report-{}", std::process::id()));
        let path = dir.join("rows.csv");
        let row = CsvRow {
            timestamp: 1,
            cores: 2,
            kernel: "k".into(),
            git_commit: "abc".into(),
            backend: "io_uring".into(),
            workers_seen: 2,
            connections: 100,
            threads: 2,
            mix: "balance",
            payload: 32,
            pipeline: 1,
            rate: None,
            seed: 5,
            seconds: 10.0,
            requests: 1000,
            errors: 0,
            req_per_s: 100,
            p50_us: 1,
            p95_us: 2,
            p99_us: 3,
            p999_us: 4,
            max_us: 5,
            p99_uncorrected_us: 3,
            pushes_per_s: 0,
            push_p99_us: 0,
            client_cpu_us_per_req: 6.81,
            server_cpu_us_per_req: Some(5.25),
            audit: String::new(),
            server_cpus: "0".into(),
            client_cpus: "1 2".into(),
            server_workers: Some(2),
            repeat: Some(1),
            protocol: "resp",
            server: "redis-server 7.0.15".into(),
            durability: "sync".into(),
            transport: "tcp",
        };
        row.append(&path).expect("first");
        row.append(&path).expect("second");
        let text = std::fs::read_to_string(&path).expect("read");
        let _ = std::fs::remove_dir_all(&dir);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("timestamp,cores,kernel,git_commit,backend,"));
        assert!(lines[0].ends_with(
            "server_cpu_us_per_req,audit,server_cpus,client_cpus,server_workers,repeat,protocol,server,durability,transport"
        ));
        assert_eq!(lines[0].split(',').count(), 36);
        assert_eq!(
            lines[1],
            "1,2,k,abc,io_uring,2,100,2,balance,32,1,,5,10.0,1000,0,100,1,2,3,4,5,3,0,0,6.81,5.25,,0,1 2,2,1,resp,redis-server 7.0.15,sync,tcp"
        );
    }
}
