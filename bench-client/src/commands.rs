//! What each subcommand does: start servers and run sweeps, run one configuration and report
//! it, the chaos run, the interactive chat. Arguments come from [`crate::cli`].

use std::time::Duration;

use crate::cli::{ChaosArgs, ChatArgs, RunArgs, SweepArgs};
use crate::load::{self, Mix, OPS};
use crate::report::{git_commit, CsvRow};
use crate::server::{server_pids, SpawnedServer};

/// `bench-client sweep`: starts the server per worker count and runs every cell.
pub fn sweep(a: SweepArgs) -> anyhow::Result<()> {
    // Asked once for the whole sweep, not per row.
    let commit = git_commit();
    let exe = match a.server.clone() {
        Some(p) => p,
        None => crate::server::locate()?,
    };
    let mut summary = crate::summary::Summary::default();
    let mut hists: std::collections::BTreeMap<String, hdrhistogram::Histogram<u64>> =
        std::collections::BTreeMap::new();
    let mut rows = 0usize;
    let mut cell = 0u64;
    let hist_dir = a.hist_dir();
    let server_cpus = a.place.server();
    let client_cpus = a.place.client();
    let threads = crate::cpus::client_threads(a.threads, &client_cpus);
    println!(
        "{:>6} {:>7} {:>11} {:>7} {:>5} {:>10} {:>8} {:>8} {:>10} {:>6}",
        "repeat",
        "workers",
        "mix",
        "payload",
        "conns",
        "req/s",
        "p50_us",
        "p99_us",
        "pushes/s",
        "audit"
    );
    let pki = match a.transport {
        crate::server::Transport::Tcp => None,
        crate::server::Transport::Tls => Some(crate::server::TestPki::new()?),
    };
    let tls_args = pki.as_ref().map(|p| p.server_args()).unwrap_or_default();
    // Interleaved: every cell once, then every cell again, so that a slow minute of the machine
    // lands on all cells alike rather than on the repeats of one.
    for repeat in 0..a.repeat {
        for &workers in &a.workers {
            let name = format!("sweep-{}-{workers}-{repeat}", std::process::id());
            let w = workers.to_string();
            let launch = crate::server::Launch {
                inherit_stderr: std::env::var_os("NS_SERVER_LOG").is_some(),
                cpus: server_cpus.clone(),
                ..crate::server::Launch::default()
            };
            let server = SpawnedServer::start_with(
                &exe,
                &name,
                &[
                    "-w",
                    &w,
                    "--io",
                    a.io.as_str(),
                    "--durability",
                    "sync",
                    "--flood-burst",
                    "1000000",
                    "--flood-per-sec",
                    "1000000",
                ]
                .into_iter()
                .chain(tls_args.iter().map(String::as_str))
                .collect::<Vec<_>>(),
                &launch,
            )?;
            let addr = server.addr;
            for &mix in &a.mix {
                let payloads: Vec<usize> = if matches!(mix, Mix::ChatHeavy | Mix::Mixed) {
                    a.payload.clone()
                } else {
                    a.payload.iter().take(1).copied().collect()
                };
                for &payload in &payloads {
                    for &connections in &a.connections {
                        cell += 1;
                        let cfg = load::Config {
                            addr,
                            tls: pki.as_ref().map(|p| p.client.clone()),
                            protocol: load::Protocol::Ns,
                            connections,
                            threads,
                            duration: Duration::from_secs_f64(a.duration),
                            warmup: Duration::from_secs_f64(a.warmup),
                            mix,
                            payload,
                            pipeline: a.pipeline,
                            rate: None,
                            hot_accounts: 8,
                            rooms: 10,
                            publishers: 10,
                            seed: a.seed.wrapping_mul(1000) + cell,
                            server_pids: server.pids(),
                            client_cpus: client_cpus.clone(),
                        };
                        let r = load::run(&cfg)?;
                        let audit = ledger_audit(mix, || Ok(server.audit()))?;
                        let mut row =
                            CsvRow::new(&cfg, &server.backend, &r, audit, &commit, &server_cpus);
                        row.server_workers = Some(workers);
                        row.repeat = Some(repeat);
                        row.server = crate::peers::NS.to_string();
                        row.durability = "sync".to_string();
                        row.append(&a.out)?;
                        rows += 1;
                        // One .hgrm per cell, merged over its runs.
                        let key = format!("w{workers}-{}-p{payload}-c{connections}", mix.name());
                        match hists.get_mut(&key) {
                            Some(h) => h.add(&r.total.latency_us)?,
                            None => {
                                hists.insert(key, r.total.latency_us.clone());
                            }
                        }
                        let run = crate::summary::Run::of(&r, &row);
                        println!(
                            "{repeat:>6} {workers:>7} {:>11} {payload:>7} {connections:>5} {:>10.0} {:>8} {:>8} {:>10.0} {:>6}",
                            mix.name(),
                            run.req_s,
                            run.p50_us,
                            run.p99_us,
                            run.pushes_s,
                            audit
                        );
                        let cell_key = crate::summary::Cell(vec![
                            ("workers", workers.to_string()),
                            ("mix", mix.name().to_string()),
                            ("payload", payload.to_string()),
                            ("connections", connections.to_string()),
                        ]);
                        summary.add(cell_key, run);
                    }
                }
            }
        }
    }
    for (key, h) in &hists {
        crate::hgrm::write_hgrm(&hist_dir.join(format!("{key}.hgrm")), h)?;
    }
    let summary_path = crate::summary::summary_path(&a.out);
    summary.write_csv(&summary_path)?;
    println!();
    for line in summary.table() {
        println!("{line}");
    }
    println!(
        "appended {rows} rows to {}; summary (median, min, max per cell) in {}; histograms in {}",
        a.out.display(),
        summary_path.display(),
        hist_dir.display()
    );
    Ok(())
}

/// The ledger's invariant after a run of `mix`: `pass` or `FAIL` from `check` after the mixes
/// that move money, empty after the others.
pub fn ledger_audit(
    mix: Mix,
    check: impl FnOnce() -> anyhow::Result<bool>,
) -> anyhow::Result<&'static str> {
    if !matches!(mix, Mix::TradeHeavy | Mix::Mixed) {
        return Ok("");
    }
    Ok(if check()? { "pass" } else { "FAIL" })
}

/// `bench-client chaos`: faults, abandoned requests, and the check over the wire.
pub fn chaos(a: ChaosArgs) -> anyhow::Result<()> {
    let mut restarter = None;
    let mut temp_dir = None;
    anyhow::ensure!(
        !(a.restart && a.target.tls.tls),
        "chaos --restart starts its own plaintext server: --tls is for a server you run"
    );
    let (addr, server_name) = if a.restart {
        let data_dir = match &a.data_dir {
            Some(d) => d.clone(),
            None => {
                let d = std::env::temp_dir().join(format!("ns-chaos-{}", std::process::id()));
                temp_dir = Some(d.clone());
                d
            }
        };
        let r = crate::chaos::Restarter::start(
            crate::server::locate()?,
            &format!("chaos-{}", std::process::id()),
            restart_args(&a, &data_dir)?,
        )?;
        let out = (r.server.addr, Some(r.server.name.clone()));
        restarter = Some(r);
        out
    } else {
        let addr = a.target.resolve()?;
        (addr, a.server_name.clone())
    };
    let cfg = crate::chaos::ChaosConfig {
        addr,
        tls: a.target.tls()?,
        server_name,
        connections: a.connections,
        threads: a.threads,
        duration: Duration::from_secs_f64(a.duration),
        kill_every: (
            Duration::from_millis(a.kill_min_ms),
            Duration::from_millis(a.kill_max_ms),
        ),
        hot_accounts: 8,
        timeout: Duration::from_millis(a.timeout_ms),
        abandon_per_mille: a.abandon_per_mille,
        seed: a.seed,
    };
    println!(
        "chaos: seed {}, {} connections, {} s, {} per mille abandoned, {}",
        cfg.seed,
        cfg.connections,
        a.duration,
        cfg.abandon_per_mille,
        match (&cfg.server_name, a.restart) {
            (Some(_), true) => format!(
                "full crashes and restarts of its own server ({} workers, --io {}, data dir {})",
                a.workers,
                a.io,
                a.data_dir
                    .as_ref()
                    .map_or("temporary".into(), |d| d.display().to_string())
            ),
            (Some(n), false) => format!("killing workers of server {n:?}"),
            (None, _) => "no kills (no --server-name)".to_string(),
        }
    );
    let result = crate::chaos::run(&cfg, restarter.as_mut());
    drop(restarter);
    if let Some(d) = temp_dir {
        let _ = std::fs::remove_dir_all(d);
    }
    let r = result?;
    println!(
        "workers killed {}, stalled {}; full crashes and restarts {} (longest down {} ms); audits {} ({} failed)",
        r.kills, r.stalls, r.restarts, r.restart_ms_max, r.audits, r.audit_failures
    );
    println!(
        "operations acknowledged {}; abandoned and retried elsewhere {} (of them left unread in a stalled worker, then {} more requests: {}); gave up after retries {}; client threads panicked {}",
        r.acknowledged, r.abandoned, crate::chaos::BURST_AFTER_STALL, r.late_copies, r.retries_exhausted, r.thread_panics
    );
    let mut refused: Vec<_> = r.refused.iter().collect();
    refused.sort();
    for (st, n) in refused {
        println!("refused {st}: {n}");
    }
    println!(
        "read back over the wire: {} accounts ({} histories reach the start of the run); balances differing from the model {}",
        r.accounts_checked, r.histories_complete, r.balance_mismatches
    );
    println!(
        "history entries matching an acknowledged operation {}; acknowledged but missing {}; applied but never acknowledged (twice, or never sent) {}",
        r.reconciled, r.missing, r.unexplained
    );
    for v in &r.violations {
        println!("VIOLATION: {v}");
    }
    let ok = r.ok(cfg.server_name.is_some());
    println!("{}", if ok { "chaos OK" } else { "chaos FAILED" });
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}

/// The server's arguments for `chaos --restart`: a free port and the data directory, fixed so
/// that every restart serves the same ones.
pub fn restart_args(a: &ChaosArgs, data_dir: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let port = port_below_ephemeral()?;
    Ok([
        "--port",
        &port.to_string(),
        "--data-dir",
        &data_dir.display().to_string(),
        "-w",
        &a.workers.to_string(),
        "--io",
        a.io.as_str(),
        "--txn-log",
        "1048576",
        // Checkpoints every 4 MiB of journal, so crashes also land during and after them.
        "--checkpoint-bytes",
        "4194304",
        "--flood-burst",
        "1000000",
        "--flood-per-sec",
        "1000000",
    ]
    .map(String::from)
    .to_vec())
}

/// A free port below the kernel's ephemeral range: a server that is down for a moment cannot
/// have its port taken by an outgoing connection's local end meanwhile.
fn port_below_ephemeral() -> anyhow::Result<u16> {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let mut b = [0u8; 2];
    let _ = getrandom::fill(&mut b);
    let span = low.saturating_sub(10_000).max(1);
    for i in 0..span {
        let port = 10_000 + (u16::from_le_bytes(b).wrapping_add(i)) % span;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    anyhow::bail!("no free port below {low}")
}

/// `bench-client chat`: the client for people.
pub fn chat(a: ChatArgs) -> anyhow::Result<()> {
    let addr = a.target.resolve()?;
    let password = match a.password {
        Some(p) => p,
        None => std::env::var("NS_PASSWORD")
            .map_err(|_| anyhow::anyhow!("give --password or set NS_PASSWORD"))?,
    };
    crate::interactive::run(
        addr,
        a.target.tls()?.as_ref(),
        &a.user,
        &password,
        a.register,
    )
}

/// `bench-client run`: one configuration against a running server; console and CSV.
pub fn run(a: RunArgs) -> anyhow::Result<()> {
    let addr = a.target.resolve()?;
    let seed = a.seed.unwrap_or_else(|| {
        let mut b = [0u8; 8];
        let _ = getrandom::fill(&mut b);
        u64::from_le_bytes(b) % 1_000_000_000
    });
    let mut server_pids: Vec<u32> = a
        .server_name
        .as_deref()
        .map(server_pids)
        .unwrap_or_default();
    server_pids.extend(&a.server_pid);
    let cfg = load::Config {
        addr,
        tls: a.target.tls()?,
        protocol: a.protocol,
        connections: a.connections,
        threads: crate::cpus::client_threads(a.threads, &a.place.client()),
        duration: Duration::from_secs_f64(a.duration),
        warmup: Duration::from_secs_f64(a.warmup),
        mix: a.mix,
        payload: a.payload,
        pipeline: a.pipeline,
        rate: a.rate,
        hot_accounts: a.hot_accounts,
        rooms: a.rooms,
        publishers: a.publishers,
        seed,
        server_pids,
        client_cpus: a.place.client(),
    };
    println!(
        "bench-client: {} to {addr}, {} connections, {} threads, mix {}, payload {} B, {}, seed {seed}",
        cfg.protocol.name(),
        cfg.connections,
        cfg.threads,
        cfg.mix.name(),
        cfg.payload,
        match cfg.rate {
            Some(r) => format!("open loop at {r:.0} req/s"),
            None => format!("closed loop, pipeline {}", cfg.pipeline),
        }
    );
    let r = load::run(&cfg)?;
    print_results(&cfg, &r);
    // RESP: the ledger's invariant, read back over the wire (NS: `uring-server audit`).
    let mut audit = "";
    if cfg.protocol == load::Protocol::Resp {
        audit = ledger_audit(cfg.mix, || {
            let a = crate::resp_mix::audit(cfg.addr, cfg.seed, cfg.tls.as_ref())?;
            println!(
                "  audit over the wire: {} accounts sum to {}, deposits total {}, {} below zero",
                a.accounts, a.sum, a.deposited, a.negative
            );
            Ok(a.holds())
        })?;
        if !audit.is_empty() {
            println!("  audit: {audit}");
        }
    }
    if let Some(dir) = &a.hist_dir {
        for (name, o) in OPS.iter().zip(&r.ops) {
            if o.requests > 0 {
                let file = dir.join(format!("{}-{}.hgrm", cfg.mix.name(), name.to_lowercase()));
                crate::hgrm::write_hgrm(&file, &o.latency_us)?;
            }
        }
        crate::hgrm::write_hgrm(
            &dir.join(format!("{}-total.hgrm", cfg.mix.name())),
            &r.total.latency_us,
        )?;
        println!("  percentile files in {}", dir.display());
    }
    if let Some(path) = a.out {
        let server_cpus = a.place.server();
        CsvRow::new(&cfg, &a.backend, &r, audit, &git_commit(), &server_cpus).append(&path)?;
        println!("  appended to {}", path.display());
    }
    anyhow::ensure!(audit != "FAIL", "the ledger audit failed");
    Ok(())
}

/// The console report of one run: per operation and in total.
fn print_results(cfg: &load::Config, r: &load::Results) {
    println!(
        "{:<10} {:>10} {:>8} {:>11} {:>8} {:>8} {:>8} {:>9} {:>9}",
        "op", "requests", "errors", "req/s", "p50_us", "p95_us", "p99_us", "p99.9_us", "max_us"
    );
    let row = |name: &str, o: &load::OpStats| {
        let errors: u64 = o.errors.values().sum();
        println!(
            "{:<10} {:>10} {:>8} {:>11.0} {:>8} {:>8} {:>8} {:>9} {:>9}",
            name,
            o.requests,
            errors,
            o.requests as f64 / r.seconds,
            o.latency_us.value_at_quantile(0.50),
            o.latency_us.value_at_quantile(0.95),
            o.latency_us.value_at_quantile(0.99),
            o.latency_us.value_at_quantile(0.999),
            o.latency_us.max()
        );
    };
    for (name, o) in OPS.iter().zip(&r.ops) {
        if o.requests > 0 {
            row(name, o);
        }
    }
    row("total", &r.total);
    for (status, n) in &r.total.errors {
        println!("  errors {status}: {n}");
    }
    if cfg.rate.is_some() {
        println!(
            "  uncorrected (from actual send): p50 {} us, p99 {} us, max {} us",
            r.total.latency_uncorrected_us.value_at_quantile(0.5),
            r.total.latency_uncorrected_us.value_at_quantile(0.99),
            r.total.latency_uncorrected_us.max()
        );
    }
    if r.pushes > 0 {
        println!(
            "  pushes {} ({:.0}/s), send to delivery p50 {} us, p99 {} us, max {} us",
            r.pushes,
            r.pushes as f64 / r.seconds,
            r.push_latency_us.value_at_quantile(0.5),
            r.push_latency_us.value_at_quantile(0.99),
            r.push_latency_us.max()
        );
    }
    let per_req = |s: f64| s * 1e6 / r.total.requests.max(1) as f64;
    println!(
        "  client CPU {:.2} s = {:.2} us per request; server workers seen: {}",
        r.client_cpu_s,
        per_req(r.client_cpu_s),
        r.workers_seen
    );
    if let Some(s) = r.server_cpu_s {
        println!("  server CPU {s:.2} s = {:.2} us per request", per_req(s));
    }
}
