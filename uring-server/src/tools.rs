//! The subcommands that attach to a running server: `stats`, `audit`, `adduser`.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::status::opcode_index;
use proto::{Opcode, Status};
use shm::metrics::WorkerMetrics;
use shm::{Metrics, Segment};

use crate::cli::StatsFormat;

/// Totals over the workers at one instant.
#[derive(Debug, Default, Clone)]
struct Snapshot {
    conns_active: u64,
    conns_accepted: u64,
    conns_closed: u64,
    conns_refused: u64,
    requests: u64,
    by_opcode: Vec<u64>,
    by_status: Vec<u64>,
    bad_frames: u64,
    bytes_in: u64,
    bytes_out: u64,
    slow_consumers: u64,
    idle_timeouts: u64,
    restarts: u64,
    pushes_delivered: u64,
    pushes_dropped: u64,
    loop_turns: u64,
    sends: u64,
    chat_wakes: u64,
    tls_handshakes: u64,
    tls_errors: u64,
    tls_handshake_timeouts: u64,
}

fn snapshot(workers: &[WorkerMetrics]) -> Snapshot {
    let mut s = Snapshot {
        by_opcode: vec![0; Opcode::ALL.len()],
        by_status: vec![0; Status::ALL.len()],
        ..Snapshot::default()
    };
    for w in workers {
        s.conns_active += w.conns_active.get();
        s.conns_accepted += w.conns_accepted.get();
        s.conns_closed += w.conns_closed.get();
        s.conns_refused += w.conns_refused.get();
        // Shared memory has room for more counters than the protocol has opcodes and statuses.
        for (i, c) in w.requests.iter().take(Opcode::ALL.len()).enumerate() {
            s.by_opcode[i] += c.get();
            s.requests += c.get();
        }
        for (i, c) in w.statuses.iter().take(Status::ALL.len()).enumerate() {
            s.by_status[i] += c.get();
        }
        s.bad_frames += w.bad_frames.get();
        s.bytes_in += w.bytes_in.get();
        s.bytes_out += w.bytes_out.get();
        s.slow_consumers += w.slow_consumer_disconnects.get();
        s.idle_timeouts += w.idle_timeouts.get();
        s.restarts += w.restarts.get();
        s.pushes_delivered += w.pushes_delivered.get();
        s.pushes_dropped += w.pushes_dropped.get();
        s.loop_turns += w.loop_turns.get();
        s.sends += w.sends.get();
        s.chat_wakes += w.chat_wakes.get();
        s.tls_handshakes += w.tls_handshakes.get();
        s.tls_errors += w.tls_errors.get();
        s.tls_handshake_timeouts += w.tls_handshake_timeouts.get();
    }
    s
}

/// `stats --format json`: what programs need, by name; unknown fields are for them to ignore.
#[derive(serde::Serialize)]
struct StatsJson {
    /// Bumped when a field changes meaning or goes away (new fields may appear at any time).
    format_version: u32,
    segment: String,
    master_pid: u32,
    lock_mode: String,
    workers: Vec<WorkerJson>,
    conns_active: u64,
    conns_accepted: u64,
    conns_refused: u64,
    requests: u64,
    requests_by_opcode: std::collections::BTreeMap<&'static str, u64>,
    responses_by_status: std::collections::BTreeMap<&'static str, u64>,
    bad_frames: u64,
    pushes_delivered: u64,
    pushes_dropped: u64,
    loop_turns: u64,
    sends: u64,
    chat_wakes: u64,
    tls: TlsJson,
    txn_seq: u64,
    ledger_ops: u64,
    journal: JournalJson,
    cluster: ClusterJson,
}

/// The cluster bridge's figures (`stats`); state "off" on a single node.
#[derive(Debug, serde::Serialize)]
pub struct ClusterJson {
    state: &'static str,
    node_id: u32,
    bridge_pid: u64,
    /// Stream messages not yet applied here.
    lag: u64,
    stream_last: u64,
    applied: u64,
    outbox_last: u64,
    outbox_acked: u64,
    published: u64,
    publish_errors: u64,
    applied_msgs: u64,
    connects: u64,
}

/// Reads the bridge's figures.
pub fn cluster_json(seg: &Segment) -> ClusterJson {
    let s = shm::cluster::Cluster::of(seg).snapshot();
    ClusterJson {
        state: s.state.name(),
        node_id: s.node_id,
        bridge_pid: s.bridge_pid,
        lag: s.lag(),
        stream_last: s.stream_last,
        applied: s.applied,
        outbox_last: s.outbox_last,
        outbox_acked: s.outbox_acked,
        published: s.published,
        publish_errors: s.publish_errors,
        applied_msgs: s.applied_msgs,
        connects: s.connects,
    }
}

/// The journal's figures (`stats`): counters since the server started, and the latency of the
/// last syncs.
#[derive(serde::Serialize, Debug, Clone)]
pub struct JournalJson {
    /// `sync` or `none`.
    pub mode: &'static str,
    /// The writer process (0: none running).
    pub writer_pid: u32,
    /// errno of the failing write (0: healthy), and its text.
    pub error: u32,
    /// The error in words, empty when healthy.
    pub error_text: String,
    /// Records appended but not yet durable.
    pub backlog: u64,
    /// Records written.
    pub records: u64,
    /// Bytes written.
    pub bytes: u64,
    /// write+fdatasync rounds.
    pub syncs: u64,
    /// Records per sync, on average.
    pub records_per_sync: f64,
    /// write+fdatasync latency over the last syncs (up to 1024), µs.
    pub sync_p50_us: u32,
    /// Same, 99th percentile.
    pub sync_p99_us: u32,
    /// Appends refused (journal failing or behind).
    pub refused: u64,
    /// Checkpoints written.
    pub checkpoints: u64,
    /// Seconds since the last checkpoint (None: none yet).
    pub checkpoint_age_s: Option<f64>,
}

/// Reads the journal's figures.
pub fn journal_json(seg: &Segment) -> JournalJson {
    let j = shm::journal::stats(seg);
    let mut lat = j.sync_us.clone();
    lat.sort_unstable();
    let pct = |q: f64| {
        if lat.is_empty() {
            0
        } else {
            lat[((lat.len() - 1) as f64 * q).round() as usize]
        }
    };
    JournalJson {
        mode: j.mode,
        writer_pid: j.writer_pid,
        error: j.error,
        error_text: if j.error == 0 {
            String::new()
        } else {
            std::io::Error::from_raw_os_error(j.error as i32).to_string()
        },
        backlog: j.head.saturating_sub(j.durable),
        records: j.records,
        bytes: j.bytes,
        syncs: j.syncs,
        records_per_sync: if j.syncs == 0 {
            0.0
        } else {
            j.records as f64 / j.syncs as f64
        },
        sync_p50_us: pct(0.5),
        sync_p99_us: pct(0.99),
        refused: j.refused,
        checkpoints: j.checkpoints,
        checkpoint_age_s: (j.checkpoint_ms > 0)
            .then(|| crate::clock::wall_ms().saturating_sub(j.checkpoint_ms) as f64 / 1e3),
    }
}

/// TLS counters (all zero on a plaintext server).
#[derive(serde::Serialize)]
struct TlsJson {
    handshakes: u64,
    errors: u64,
    handshake_timeouts: u64,
}

#[derive(serde::Serialize)]
struct WorkerJson {
    index: usize,
    /// 0 while the worker is being restarted.
    pid: u32,
    backend: &'static str,
    conns_active: u64,
    requests: u64,
    restarts: u64,
    pushes_delivered: u64,
    loop_turns: u64,
    sends: u64,
    chat_wakes: u64,
}

fn json(seg: &Segment, now: &Snapshot) -> String {
    let ledger = shm::ledger::stats(seg);
    // The segment has one slot more than the server has workers (for tools).
    let workers = seg.caps().workers.saturating_sub(1) as usize;
    let out = StatsJson {
        format_version: 1,
        segment: seg.name().to_string(),
        master_pid: seg.creator_pid(),
        lock_mode: format!("{:?}", seg.lock_mode()).to_lowercase(),
        workers: Metrics::of(seg)
            .workers()
            .iter()
            .take(workers)
            .enumerate()
            .map(|(index, w)| WorkerJson {
                index,
                pid: w.pid.get() as u32,
                backend: backend_name(w.backend.get()),
                conns_active: w.conns_active.get(),
                requests: w.requests.iter().map(|c| c.get()).sum(),
                restarts: w.restarts.get(),
                pushes_delivered: w.pushes_delivered.get(),
                loop_turns: w.loop_turns.get(),
                sends: w.sends.get(),
                chat_wakes: w.chat_wakes.get(),
            })
            .collect(),
        conns_active: now.conns_active,
        conns_accepted: now.conns_accepted,
        conns_refused: now.conns_refused,
        requests: now.requests,
        requests_by_opcode: Opcode::ALL
            .iter()
            .map(|op| (op.name(), now.by_opcode[opcode_index(*op)]))
            .collect(),
        responses_by_status: Status::ALL
            .iter()
            .map(|st| (st.name(), now.by_status[st.as_u16() as usize]))
            .collect(),
        bad_frames: now.bad_frames,
        pushes_delivered: now.pushes_delivered,
        pushes_dropped: now.pushes_dropped,
        loop_turns: now.loop_turns,
        sends: now.sends,
        chat_wakes: now.chat_wakes,
        tls: TlsJson {
            handshakes: now.tls_handshakes,
            errors: now.tls_errors,
            handshake_timeouts: now.tls_handshake_timeouts,
        },
        txn_seq: ledger.txn_seq,
        ledger_ops: ledger.ops,
        journal: journal_json(seg),
        cluster: cluster_json(seg),
    };
    serde_json::to_string_pretty(&out).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}")) + "\n"
}

fn backend_name(code: u64) -> &'static str {
    match code {
        1 => "io_uring",
        2 => "epoll",
        _ => "-",
    }
}

/// Journal syncs per second over the last interval, when the caller measured one.
#[derive(Debug, Clone, Copy)]
struct Rates {
    requests: Option<f64>,
    syncs: Option<f64>,
}

fn text(seg: &Segment, now: &Snapshot, rates: Rates) -> String {
    let rate = rates.requests;
    let metrics = Metrics::of(seg);
    let ledger = shm::ledger::stats(seg);
    let mut o = String::new();
    let _ = writeln!(
        o,
        "segment {}  created by pid {}  lock mode {:?}",
        seg.name(),
        seg.creator_pid(),
        seg.lock_mode()
    );
    let _ = writeln!(
        o,
        "connections: {} open, {} accepted, {} closed, {} refused (busy), {} idle timeouts, {} slow consumers",
        now.conns_active, now.conns_accepted, now.conns_closed, now.conns_refused, now.idle_timeouts, now.slow_consumers
    );
    let _ = writeln!(
        o,
        "requests: {} total{}; bad frames {}; bytes in {} out {}",
        now.requests,
        rate.map_or(String::new(), |r| format!(", {r:.0} req/s")),
        now.bad_frames,
        now.bytes_in,
        now.bytes_out
    );
    if now.tls_handshakes + now.tls_errors + now.tls_handshake_timeouts > 0 {
        let _ = writeln!(
            o,
            "tls: {} handshakes, {} connections closed on TLS errors, {} handshake timeouts",
            now.tls_handshakes, now.tls_errors, now.tls_handshake_timeouts
        );
    }
    let per_turn = |n: u64| n as f64 / now.loop_turns.max(1) as f64;
    let _ = writeln!(
        o,
        "push path: {} pushes delivered, {} dropped; {} loop turns, {} sends ({:.1}/turn), {} chat wake-ups ({:.2}/turn)",
        now.pushes_delivered,
        now.pushes_dropped,
        now.loop_turns,
        now.sends,
        per_turn(now.sends),
        now.chat_wakes,
        per_turn(now.chat_wakes)
    );
    let _ = writeln!(
        o,
        "ledger: txn_seq {}, {} ops, {} lock waits ({} ms), {} locks taken from dead owners, {} operations rolled forward",
        ledger.txn_seq,
        ledger.ops,
        ledger.lock_waits,
        ledger.lock_wait_ns / 1_000_000,
        ledger.locks_recovered,
        ledger.intents_recovered
    );
    let c = cluster_json(seg);
    if c.state != "off" {
        let _ = writeln!(
            o,
            "cluster: node {} bridge {} pid {}; stream last {} applied {} (lag {}); outbox {} \
             acked {}; {} published, {} publish errors, {} applied, {} connects",
            c.node_id,
            c.state,
            c.bridge_pid,
            c.stream_last,
            c.applied,
            c.lag,
            c.outbox_last,
            c.outbox_acked,
            c.published,
            c.publish_errors,
            c.applied_msgs,
            c.connects
        );
    }
    let j = journal_json(seg);
    if j.mode == "none" {
        let _ = writeln!(
            o,
            "journal: none (--durability none): nothing survives a restart"
        );
    } else {
        let _ = writeln!(
            o,
            "journal: {} writer pid {}{}; {} records, {} bytes, {} syncs{}, {:.1} records/sync, \
             sync p50 {} us p99 {} us; backlog {}; {} refused; {} checkpoints{}",
            j.mode,
            j.writer_pid,
            if j.error == 0 {
                String::new()
            } else {
                format!(" FAILING: {}", j.error_text)
            },
            j.records,
            j.bytes,
            j.syncs,
            rates
                .syncs
                .map_or(String::new(), |r| format!(" ({r:.0}/s)")),
            j.records_per_sync,
            j.sync_p50_us,
            j.sync_p99_us,
            j.backlog,
            j.refused,
            j.checkpoints,
            j.checkpoint_age_s
                .map_or(String::new(), |a| format!(", last {a:.0} s ago")),
        );
    }
    let _ = writeln!(o, "by opcode:");
    for op in Opcode::ALL {
        let n = now.by_opcode[opcode_index(*op)];
        if n > 0 {
            let _ = writeln!(o, "  {:<16} {n}", op.name());
        }
    }
    let _ = writeln!(o, "by status:");
    for st in Status::ALL {
        let n = now.by_status[st.as_u16() as usize];
        if n > 0 {
            let _ = writeln!(o, "  {:<24} {n}", st.name());
        }
    }
    let _ = writeln!(
        o,
        "{:>6} {:>8} {:>9} {:>7} {:>12} {:>12} {:>9}",
        "worker", "pid", "backend", "conns", "requests", "bytes_in", "restarts"
    );
    for (i, w) in metrics.workers().iter().enumerate() {
        let reqs: u64 = w.requests.iter().map(|c| c.get()).sum();
        if w.pid.get() == 0 && reqs == 0 && w.restarts.get() == 0 {
            continue;
        }
        let _ = writeln!(
            o,
            "{:>6} {:>8} {:>9} {:>7} {:>12} {:>12} {:>9}",
            i,
            w.pid.get(),
            backend_name(w.backend.get()),
            w.conns_active.get(),
            reqs,
            w.bytes_in.get(),
            w.restarts.get()
        );
    }
    o
}

/// Prometheus text exposition: each family's HELP and TYPE lines followed by all its samples
/// (one per worker, and per opcode or status where labelled), families contiguous as the format
/// requires.
/// The Prometheus exposition text of `seg`'s metrics (`stats --format prometheus`, and what
/// `--metrics-addr` serves).
pub fn prometheus(seg: &Segment) -> String {
    type Sample = fn(&WorkerMetrics) -> Vec<(String, u64)>;
    fn one(v: u64) -> Vec<(String, u64)> {
        vec![(String::new(), v)]
    }
    let families: [(&str, &str, &str, Sample); 15] = [
        (
            "connections_open",
            "Open client connections.",
            "gauge",
            |w| one(w.conns_active.get()),
        ),
        (
            "connections_accepted_total",
            "Connections accepted.",
            "counter",
            |w| one(w.conns_accepted.get()),
        ),
        ("requests_total", "Requests by opcode.", "counter", |w| {
            Opcode::ALL
                .iter()
                .map(|op| {
                    (
                        format!(",opcode=\"{}\"", op.name()),
                        w.requests[opcode_index(*op)].get(),
                    )
                })
                .filter(|(_, n)| *n > 0)
                .collect()
        }),
        ("responses_total", "Responses by status.", "counter", |w| {
            Status::ALL
                .iter()
                .map(|st| {
                    (
                        format!(",status=\"{}\"", st.name()),
                        w.statuses[st.as_u16() as usize].get(),
                    )
                })
                .filter(|(_, n)| *n > 0)
                .collect()
        }),
        (
            "bad_frames_total",
            "Frames refused by the decoder.",
            "counter",
            |w| one(w.bad_frames.get()),
        ),
        ("bytes_received_total", "Bytes received.", "counter", |w| {
            one(w.bytes_in.get())
        }),
        (
            "bytes_sent_total",
            "Bytes queued for sending.",
            "counter",
            |w| one(w.bytes_out.get()),
        ),
        (
            "pushes_delivered_total",
            "Pushes queued to a connection.",
            "counter",
            |w| one(w.pushes_delivered.get()),
        ),
        ("loop_turns_total", "Event-loop turns.", "counter", |w| {
            one(w.loop_turns.get())
        }),
        ("sends_total", "Send operations issued.", "counter", |w| {
            one(w.sends.get())
        }),
        (
            "chat_wakes_total",
            "Cross-worker chat wake-ups.",
            "counter",
            |w| one(w.chat_wakes.get()),
        ),
        (
            "tls_handshakes_total",
            "TLS handshakes completed.",
            "counter",
            |w| one(w.tls_handshakes.get()),
        ),
        (
            "tls_errors_total",
            "Connections closed on a TLS error.",
            "counter",
            |w| one(w.tls_errors.get()),
        ),
        (
            "tls_handshake_timeouts_total",
            "Connections closed because their TLS handshake did not finish in time.",
            "counter",
            |w| one(w.tls_handshake_timeouts.get()),
        ),
        (
            "worker_restarts_total",
            "Times a worker slot was restarted.",
            "counter",
            |w| one(w.restarts.get()),
        ),
    ];
    let workers: Vec<(usize, &WorkerMetrics)> = Metrics::of(seg)
        .workers()
        .iter()
        .enumerate()
        .filter(|(_, w)| w.pid.get() != 0 || w.conns_accepted.get() != 0 || w.restarts.get() != 0)
        .collect();
    let mut o = String::new();
    for (name, help, kind, sample) in families {
        let _ = writeln!(o, "# HELP ns_{name} {help}\n# TYPE ns_{name} {kind}");
        for (i, w) in &workers {
            let b = backend_name(w.backend.get());
            for (extra, v) in sample(w) {
                let _ = writeln!(o, "ns_{name}{{worker=\"{i}\",backend=\"{b}\"{extra}}} {v}");
            }
        }
    }
    let ledger = shm::ledger::stats(seg);
    let j = journal_json(seg);
    for (name, help, v) in [
        ("ledger_txn_seq", "Last transaction id.", ledger.txn_seq),
        (
            "ledger_lock_waits_total",
            "Times a ledger lock was busy.",
            ledger.lock_waits,
        ),
        (
            "journal_records_total",
            "Journal records written.",
            j.records,
        ),
        ("journal_bytes_total", "Journal bytes written.", j.bytes),
        (
            "journal_syncs_total",
            "Journal write+fdatasync rounds.",
            j.syncs,
        ),
        (
            "journal_refused_total",
            "Ledger requests refused because the journal could not write.",
            j.refused,
        ),
    ] {
        let _ = writeln!(
            o,
            "# HELP ns_{name} {help}\n# TYPE ns_{name} counter\nns_{name} {v}"
        );
    }
    let _ = writeln!(
        o,
        "# HELP ns_journal_error errno of the journal's failing write, 0 when healthy.\n\
         # TYPE ns_journal_error gauge\nns_journal_error {}",
        j.error
    );
    let c = cluster_json(seg);
    if c.state != "off" {
        for (name, kind, help, v) in [
            (
                "cluster_ready",
                "gauge",
                "1 when the bridge is connected and caught up.",
                u64::from(c.state == "ready"),
            ),
            (
                "cluster_lag",
                "gauge",
                "Stream messages not yet applied on this node.",
                c.lag,
            ),
            (
                "cluster_published_total",
                "counter",
                "Messages this node published to the stream.",
                c.published,
            ),
            (
                "cluster_publish_errors_total",
                "counter",
                "Publishes that failed and were retried.",
                c.publish_errors,
            ),
            (
                "cluster_applied_total",
                "counter",
                "Stream messages applied to rooms here.",
                c.applied_msgs,
            ),
            (
                "cluster_connects_total",
                "counter",
                "Connections the bridge made to NATS.",
                c.connects,
            ),
        ] {
            let _ = writeln!(
                o,
                "# HELP ns_{name} {help}\n# TYPE ns_{name} {kind}\nns_{name} {v}"
            );
        }
    }
    o
}

/// `uring-server stats`.
pub fn stats(name: &str, watch: bool, format: StatsFormat) -> anyhow::Result<i32> {
    let seg = Segment::attach(name, false)?;
    let workers = Metrics::of(&seg).workers();
    let syncs = || shm::journal::stats(&seg).syncs;
    let mut prev = (Instant::now(), snapshot(workers), syncs());
    if format == StatsFormat::Text && !watch {
        // One short interval, for the rates a single look cannot give.
        std::thread::sleep(Duration::from_millis(500));
    }
    loop {
        let now = snapshot(workers);
        let now_syncs = syncs();
        let elapsed = prev.0.elapsed().as_secs_f64();
        let rates = Rates {
            requests: (watch && elapsed > 0.1)
                .then(|| now.requests.saturating_sub(prev.1.requests) as f64 / elapsed),
            syncs: (elapsed > 0.1).then(|| now_syncs.saturating_sub(prev.2) as f64 / elapsed),
        };
        let out = match format {
            StatsFormat::Text => text(&seg, &now, rates),
            StatsFormat::Prometheus => prometheus(&seg),
            StatsFormat::Json => json(&seg, &now),
        };
        if watch {
            // Clear the screen and home the cursor, like `watch`.
            print!("\x1b[2J\x1b[H{out}");
        } else {
            print!("{out}");
        }
        if !watch {
            return Ok(0);
        }
        prev = (Instant::now(), now, now_syncs);
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// `uring-server audit`.
pub fn audit(name: &str, lock_timeout_ms: u64) -> anyhow::Result<i32> {
    let seg = Segment::attach(name, true)?;
    let r = shm::ledger::audit(&seg, Duration::from_millis(lock_timeout_ms))?;
    println!(
        "accounts {}  balance sum {}  deposits {}  withdrawals {}  txn_seq {}",
        r.accounts, r.balance_sum, r.deposits, r.withdrawals, r.txn_seq
    );
    println!(
        "log entries checked {}  unused ids {}  full replay {}  locks taken from dead owners {}",
        r.log_entries_checked, r.log_holes, r.full_replay, r.locks_recovered
    );
    if r.ok() {
        println!("audit OK: conservation holds, the log agrees with the balances, no stuck lock");
        Ok(0)
    } else {
        for v in &r.violations {
            println!("VIOLATION: {v}");
        }
        Ok(1)
    }
}

/// `uring-server adduser`.
pub fn adduser(name: &str, user: &str, password: Option<String>, slot: u32) -> anyhow::Result<i32> {
    let password = match password {
        Some(p) => p,
        None => std::env::var("NS_PASSWORD")
            .map_err(|_| anyhow::anyhow!("give --password or set NS_PASSWORD"))?,
    };
    proto::codec::Name::new(user).map_err(|e| anyhow::anyhow!("user name {user:?}: {e}"))?;
    let seg = Segment::attach(name, true)?;
    let _ = slot;
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| anyhow::anyhow!("randomness: {e}"))?;
    let iterations = proto::scram::ITERATIONS_DEFAULT;
    let secret = proto::scram::ClientSecret::derive(password.as_bytes(), &salt, iterations);
    let stored = secret.stored();
    let id = shm::Users::of(&seg).register(
        user,
        &shm::Credentials {
            salt: salt.to_vec(),
            iterations,
            stored_key: stored.stored_key,
            server_key: stored.server_key,
        },
    )?;
    // As for REGISTER over the wire: reported only once its journal record is on disk.
    if shm::journal::mode(&seg) == shm::journal::Mode::Sync {
        let need = shm::journal::head(&seg);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while shm::journal::durable(&seg) < need {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "user {user} is registered (id {id}) but its journal record is not on disk \
                 after 10 s: is the journal writer failing? (see `uring-server stats`)"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    println!("user {user} registered with id {id}");
    Ok(0)
}
