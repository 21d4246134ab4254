//! `bench-client peers`: this server beside Redis, driven by the same load loop (NS to one,
//! RESP to the other, see [`crate::resp_mix`]), cell by cell, interleaved, with the same
//! placement, durability and measurement on both.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use crate::cli::PeersArgs;
use crate::load::{self, Protocol};
use crate::report::{git_commit, CsvRow};
use crate::server::{Durability, SpawnedRedis, SpawnedServer, TestPki, Transport};
use crate::summary::{summary_path, Cell, Run, Summary};

/// The two servers' names in reports.
pub const NS: &str = "uring-server";
/// Redis's, whatever its version.
pub const REDIS: &str = "redis";

/// One server of a durability round, started by this command.
enum Server {
    Ns(SpawnedServer),
    Redis(SpawnedRedis),
}

/// A server and how its clients reach it.
struct Peer<'p> {
    server: Server,
    transport: Transport,
    /// The client's TLS (over TLS).
    tls: Option<&'p crate::ClientTls>,
}

impl Peer<'_> {
    fn name(&self) -> &'static str {
        match self.server {
            Server::Ns(_) => NS,
            Server::Redis(_) => REDIS,
        }
    }

    fn addr(&self) -> std::net::SocketAddr {
        match &self.server {
            Server::Ns(s) => s.addr,
            Server::Redis(r) => r.addr,
        }
    }

    fn protocol(&self) -> Protocol {
        match self.server {
            Server::Ns(_) => Protocol::Ns,
            Server::Redis(_) => Protocol::Resp,
        }
    }

    /// Its processes, for CPU time.
    fn pids(&self) -> Vec<u32> {
        match &self.server {
            Server::Ns(s) => s.pids(),
            Server::Redis(r) => vec![r.pid()],
        }
    }

    /// The ledger's invariant after a run: `uring-server audit` for this server, the
    /// scripts' totals read over the wire for Redis.
    fn audit(&self, cfg: &load::Config) -> anyhow::Result<&'static str> {
        crate::commands::ledger_audit(cfg.mix, || match &self.server {
            Server::Ns(s) => Ok(s.audit()),
            Server::Redis(_) => {
                Ok(crate::resp_mix::audit(cfg.addr, cfg.seed, cfg.tls.as_ref())?.holds())
            }
        })
    }

    /// What its CSV rows say of it: backend, server (with Redis's version), worker count.
    fn identity(&self, workers: u32) -> (String, String, u32) {
        match &self.server {
            Server::Ns(s) => (s.backend.clone(), NS.to_string(), workers),
            Server::Redis(r) => ("epoll".to_string(), r.version.clone(), 1),
        }
    }
}

/// `bench-client peers`.
pub fn peers(a: PeersArgs) -> anyhow::Result<()> {
    let commit = git_commit();
    let ns_exe = match a.server.clone() {
        Some(p) => p,
        None => crate::server::locate()?,
    };
    let redis_exe = a.redis_server.clone().or_else(crate::server::locate_redis);
    if redis_exe.is_none() {
        eprintln!(
            "peers: {}. Running uring-server ALONE: no Redis figures in this run.",
            crate::server::REDIS_MISSING
        );
    }
    let server_cpus = a.place.server();
    let client_cpus = a.place.client();
    let threads = crate::cpus::client_threads(a.threads, &client_cpus);
    let mut summary = Summary::default();
    println!(
        "{:>6} {:>10} {:>12} {:>11} {:>8} {:>10} {:>8} {:>8} {:>11} {:>6}",
        "repeat",
        "durability",
        "server",
        "mix",
        "pipeline",
        "req/s",
        "p50_us",
        "p99_us",
        "srv_cpu_us",
        "audit"
    );
    let pki = if a.transport.contains(&Transport::Tls) {
        Some(TestPki::new()?)
    } else {
        None
    };
    for &durability in &a.durability {
        let mut peers = Vec::new();
        for &transport in &a.transport {
            let tls = (transport == Transport::Tls)
                .then_some(pki.as_ref())
                .flatten();
            let ns = start_ns(&a, &ns_exe, durability, &server_cpus, tls)?;
            peers.push(Peer {
                server: Server::Ns(ns),
                transport,
                tls: tls.map(|p| &p.client),
            });
            if let Some(exe) = &redis_exe {
                let redis = SpawnedRedis::start_over(exe, durability, &server_cpus, tls)?;
                peers.push(Peer {
                    server: Server::Redis(redis),
                    transport,
                    tls: tls.map(|p| &p.client),
                });
            }
        }
        for repeat in 0..a.repeat {
            for (m, &mix) in a.mix.iter().enumerate() {
                for (p, &pipeline) in a.pipeline.iter().enumerate() {
                    // A B, then B A on the next repeat: neither server always runs second.
                    let order: Vec<&Peer> = if repeat % 2 == 0 {
                        peers.iter().collect()
                    } else {
                        peers.iter().rev().collect()
                    };
                    for peer in order {
                        let cfg = load::Config {
                            addr: peer.addr(),
                            tls: peer.tls.cloned(),
                            protocol: peer.protocol(),
                            connections: a.connections,
                            threads,
                            duration: Duration::from_secs_f64(a.duration),
                            warmup: Duration::from_secs_f64(a.warmup),
                            mix,
                            payload: a.payload,
                            pipeline,
                            rate: None,
                            hot_accounts: 8,
                            rooms: 10,
                            publishers: a.publishers,
                            // The same users (keys) for a cell on every repeat.
                            seed: a.seed.wrapping_mul(1000) + (m * a.pipeline.len() + p) as u64,
                            server_pids: peer.pids(),
                            client_cpus: client_cpus.clone(),
                        };
                        let r = load::run(&cfg)?;
                        let audit = peer.audit(&cfg)?;
                        let (backend, version, workers) = peer.identity(a.workers);
                        let mut row = CsvRow::new(&cfg, &backend, &r, audit, &commit, &server_cpus);
                        row.server_workers = Some(workers);
                        row.repeat = Some(repeat);
                        row.server = version;
                        row.durability = durability.name().to_string();
                        row.append(&a.out)?;
                        let run = Run::of(&r, &row);
                        println!(
                            "{repeat:>6} {:>10} {:>12} {:>11} {pipeline:>8} {:>10.0} {:>8} {:>8} {:>11.2} {:>6}",
                            durability.name(),
                            peer.name(),
                            mix.name(),
                            run.req_s,
                            run.p50_us,
                            run.p99_us,
                            run.server_cpu_us,
                            audit
                        );
                        anyhow::ensure!(
                            audit != "FAIL",
                            "the ledger audit of {} failed after {} (repeat {repeat})",
                            peer.name(),
                            mix.name()
                        );
                        summary.add(
                            cell(peer.name(), peer.transport, durability, mix, pipeline, &a),
                            run,
                        );
                    }
                }
            }
        }
    }
    let summary_file = summary_path(&a.out);
    summary.write_csv(&summary_file)?;
    println!();
    for line in summary.table() {
        println!("{line}");
    }
    let pairs = pairs_path(&a.out);
    write_pairs(&summary, &a, &pairs)?;
    let table = table_path(&a.out);
    let md = side_by_side(&summary, &a, threads, redis_exe.is_some());
    std::fs::write(&table, &md)?;
    println!("\n{md}");
    println!(
        "appended to {}; summary in {}; pairs (for gnuplot/peers.gp) in {}; table in {}",
        a.out.display(),
        summary_file.display(),
        pairs.display(),
        table.display()
    );
    Ok(())
}

fn start_ns(
    a: &PeersArgs,
    exe: &Path,
    durability: Durability,
    cpus: &[usize],
    tls: Option<&TestPki>,
) -> anyhow::Result<SpawnedServer> {
    let launch = crate::server::Launch {
        inherit_stderr: std::env::var_os("NS_SERVER_LOG").is_some(),
        cpus: cpus.to_vec(),
        ..crate::server::Launch::default()
    };
    let workers = a.workers.to_string();
    let mut args = vec![
        "-w",
        &workers,
        "--io",
        a.io.as_str(),
        "--durability",
        durability.name(),
        "--flood-burst",
        "1000000",
        "--flood-per-sec",
        "1000000",
    ];
    let tls_args = tls.map(TestPki::server_args).unwrap_or_default();
    args.extend(tls_args.iter().map(String::as_str));
    let transport = if tls.is_some() { "tls" } else { "tcp" };
    SpawnedServer::start_with(
        exe,
        &format!(
            "peers-{}-{}-{transport}",
            std::process::id(),
            durability.name()
        ),
        &args,
        &launch,
    )
}

fn cell(
    server: &str,
    transport: Transport,
    durability: Durability,
    mix: crate::load::Mix,
    pipeline: usize,
    a: &PeersArgs,
) -> Cell {
    Cell(vec![
        ("server", server.to_string()),
        ("transport", transport.name().to_string()),
        ("durability", durability.name().to_string()),
        ("mix", mix.name().to_string()),
        ("pipeline", pipeline.to_string()),
        ("connections", a.connections.to_string()),
    ])
}

/// `results/x.csv` → `results/x-pairs.csv`.
pub fn pairs_path(out: &Path) -> std::path::PathBuf {
    sibling(out, "pairs.csv")
}

/// `results/x.csv` → `results/x-table.md`.
pub fn table_path(out: &Path) -> std::path::PathBuf {
    sibling(out, "table.md")
}

fn sibling(out: &Path, suffix: &str) -> std::path::PathBuf {
    let stem = out
        .file_stem()
        .map_or_else(|| "peers".into(), |s| s.to_string_lossy().into_owned());
    out.with_file_name(format!("{stem}-{suffix}"))
}

/// The figures of both servers per (durability, mix, pipeline), one row each: what the chart
/// draws as pairs of bars. Columns: durability, mix, pipeline, label, then for ns and for redis
/// req/s (median, min, max) and server CPU µs per request (median, min, max).
fn write_pairs(s: &Summary, a: &PeersArgs, path: &Path) -> anyhow::Result<()> {
    let mut w = csv::Writer::from_path(path)?;
    let mut head = vec!["durability", "mix", "pipeline", "label"]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
    for server in ["ns", "redis"] {
        for fig in ["req_s", "server_cpu_us"] {
            head.extend([
                format!("{server}_{fig}"),
                format!("{server}_{fig}_min"),
                format!("{server}_{fig}_max"),
            ]);
        }
    }
    w.write_record(&head)?;
    for &d in &a.durability {
        for &mix in &a.mix {
            for &p in &a.pipeline {
                let mut rec = vec![
                    d.name().to_string(),
                    mix.name().to_string(),
                    p.to_string(),
                    format!("{} p{p}", mix.name()),
                ];
                for server in [NS, REDIS] {
                    for fig in ["req_s", "server_cpu_us"] {
                        let (m, lo, hi) = s
                            .figure(&cell(server, a.transport[0], d, mix, p, a), fig)
                            .unwrap_or((0.0, 0.0, 0.0));
                        rec.extend([m, lo, hi].map(|v| format!("{v:.2}")));
                    }
                }
                w.write_record(&rec)?;
            }
        }
    }
    w.flush()?;
    Ok(())
}

/// The side-by-side table (Markdown) README shows: medians over the repeats.
fn side_by_side(s: &Summary, a: &PeersArgs, threads: usize, with_redis: bool) -> String {
    let mut t = String::new();
    let place = |cpus: &Option<crate::cpus::CpuList>| {
        cpus.as_ref().map_or("any CPU".to_string(), |c| {
            format!("CPU {}", crate::cpus::format(&c.0))
        })
    };
    let _ = writeln!(
        t,
        "{} connections, {} client thread(s), {} B chat payload, {} s measured after {} s warm-up, \
         median of {} interleaved runs; uring-server -w {} --io {}; servers on {}, client on {}; \
         {} cores, kernel {}.\n",
        a.connections,
        threads,
        a.payload,
        a.duration,
        a.warmup,
        a.repeat,
        a.workers,
        a.io,
        place(&a.place.server_cpus),
        place(&a.place.client_cpus),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    );
    if !with_redis {
        let _ = writeln!(t, "(redis-server was not found: no Redis column.)\n");
    }
    let _ = writeln!(
        t,
        "| durability | transport | NS / RESP | pipeline | req/s NS | req/s Redis | NS/Redis | p50/p99 µs NS | p50/p99 µs Redis | server CPU µs/req NS | Redis | client CPU µs/req NS | RESP |"
    );
    let _ = writeln!(t, "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for &d in &a.durability {
        for &tr in &a.transport {
            for &mix in &a.mix {
                for &p in &a.pipeline {
                    let f = |server: &str, fig: &str| {
                        s.figure(&cell(server, tr, d, mix, p, a), fig)
                            .map_or(0.0, |(m, _, _)| m)
                    };
                    let (nr, rr) = (f(NS, "req_s"), f(REDIS, "req_s"));
                    let _ = writeln!(
                    t,
                    "| {} | {} | {} | {p} | {:.0} | {:.0} | {:.2} | {:.0} / {:.0} | {:.0} / {:.0} | {:.2} | {:.2} | {:.2} | {:.2} |",
                    d.name(),
                    tr.name(),
                    peer_ops(mix),
                    nr,
                    rr,
                    if rr > 0.0 { nr / rr } else { 0.0 },
                    f(NS, "p50_us"),
                    f(NS, "p99_us"),
                    f(REDIS, "p50_us"),
                    f(REDIS, "p99_us"),
                    f(NS, "server_cpu_us"),
                    f(REDIS, "server_cpu_us"),
                    f(NS, "client_cpu_us"),
                    f(REDIS, "client_cpu_us"),
                );
                }
            }
        }
    }
    if a.transport.contains(&Transport::Tcp) && a.transport.contains(&Transport::Tls) {
        tls_table(&mut t, s, a);
    }
    if a.mix.contains(&crate::load::Mix::Fanout) {
        fanout_table(&mut t, s, a);
    }
    t
}

/// What TLS keeps of plaintext, on each server, cell by cell (medians; the same repeats).
fn tls_table(t: &mut String, s: &Summary, a: &PeersArgs) {
    let _ = writeln!(
        t,
        "\nTLS against plaintext: req/s over TLS / req/s over TCP, same server, same cell \
         (fan-out: deliveries/s).\n"
    );
    let _ = writeln!(
        t,
        "| durability | mix | pipeline | NS tcp | NS tls | NS tls/tcp | Redis tcp | Redis tls | Redis tls/tcp | server CPU µs/req NS tcp / tls |"
    );
    let _ = writeln!(t, "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|");
    for &d in &a.durability {
        for &mix in &a.mix {
            let fig = if mix == crate::load::Mix::Fanout {
                "pushes_s"
            } else {
                "req_s"
            };
            for &p in &a.pipeline {
                let f = |server: &str, tr: Transport, fig: &str| {
                    s.figure(&cell(server, tr, d, mix, p, a), fig)
                        .map_or(0.0, |(m, _, _)| m)
                };
                let ratio = |x: f64, y: f64| if y > 0.0 { x / y } else { 0.0 };
                let (nt, ns) = (f(NS, Transport::Tcp, fig), f(NS, Transport::Tls, fig));
                let (rt, rs) = (f(REDIS, Transport::Tcp, fig), f(REDIS, Transport::Tls, fig));
                let _ = writeln!(
                    t,
                    "| {} | {} | {p} | {nt:.0} | {ns:.0} | {:.2} | {rt:.0} | {rs:.0} | {:.2} | {:.2} / {:.2} |",
                    d.name(),
                    mix.name(),
                    ratio(ns, nt),
                    ratio(rs, rt),
                    f(NS, Transport::Tcp, "server_cpu_us"),
                    f(NS, Transport::Tls, "server_cpu_us"),
                );
            }
        }
    }
}

/// Fan-out's own figures: what it is for is deliveries, not requests.
fn fanout_table(t: &mut String, s: &Summary, a: &PeersArgs) {
    let _ = writeln!(
        t,
        "\nFan-out: one room (one channel), {} members, {} of them publishing; deliveries are \
         pushes received by the members per second.\n",
        a.connections, a.publishers
    );
    let _ = writeln!(
        t,
        "| durability | pipeline | deliveries/s NS | deliveries/s Redis | NS/Redis | push p50/p99 µs NS | push p50/p99 µs Redis | publishes/s NS | Redis |"
    );
    let _ = writeln!(t, "|---|--:|--:|--:|--:|--:|--:|--:|--:|");
    for &d in &a.durability {
        for &p in &a.pipeline {
            let f = |server: &str, fig: &str| {
                s.figure(
                    &cell(server, a.transport[0], d, crate::load::Mix::Fanout, p, a),
                    fig,
                )
                .map_or(0.0, |(m, _, _)| m)
            };
            let (nd, rd) = (f(NS, "pushes_s"), f(REDIS, "pushes_s"));
            let _ = writeln!(
                t,
                "| {} | {p} | {nd:.0} | {rd:.0} | {:.2} | {:.0} / {:.0} | {:.0} / {:.0} | {:.0} | {:.0} |",
                d.name(),
                if rd > 0.0 { nd / rd } else { 0.0 },
                f(NS, "push_p50_us"),
                f(NS, "push_p99_us"),
                f(REDIS, "push_p50_us"),
                f(REDIS, "push_p99_us"),
                f(NS, "req_s"),
                f(REDIS, "req_s"),
            );
        }
    }
}

/// What a mix sends on each side, for the table.
fn peer_ops(mix: crate::load::Mix) -> &'static str {
    use crate::load::Mix;
    match mix {
        Mix::Heartbeat => "HEARTBEAT / PING",
        Mix::Balance => "BALANCE / GET",
        Mix::TradeHeavy => "trade-heavy / transfer script",
        Mix::ChatHeavy => "chat-heavy / PUBLISH+SUBSCRIBE",
        Mix::Mixed => "mixed / scripts+PUBLISH",
        Mix::Fanout => "fan-out / PUBLISH to 1 channel",
    }
}
