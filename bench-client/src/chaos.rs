//! `bench-client chaos`: trade-heavy load while a random worker of a running server is killed
//! with SIGKILL every 0.5–2 s. Clients time out, reconnect and retry with the same req_id; every
//! acknowledged transfer is recorded and, at the end, reconciled against the ledger's log; the
//! ledger audit runs after every kill and at the end.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto::body::*;
use proto::Request;

use crate::client::{Client, ClientError, Retry};

/// Chaos settings.
#[derive(Debug, Clone)]
pub struct ChaosConfig {
    /// Server address.
    pub addr: SocketAddr,
    /// The server's `--name` (its shared memory tells the worker pids, and hosts the audit).
    pub server_name: String,
    /// Connections (one user each).
    pub connections: usize,
    /// Client threads; each drives its share of the connections one request at a time.
    pub threads: usize,
    /// How long to run.
    pub duration: Duration,
    /// Shortest and longest pause between kills.
    pub kill_every: (Duration, Duration),
    /// Accounts that receive transfers.
    pub hot_accounts: usize,
    /// Seed.
    pub seed: u64,
}

/// What a chaos run found.
#[derive(Debug, Default)]
pub struct ChaosReport {
    /// Workers killed.
    pub kills: u64,
    /// Audits run during the chaos, and how many failed.
    pub audits: u64,
    /// Audits that found a violation (during or at the end).
    pub audit_failures: u64,
    /// Transfers the clients saw acknowledged.
    pub acknowledged: u64,
    /// Acknowledged transfers still in the log ring, checked field by field.
    pub reconciled: u64,
    /// Acknowledged transfers the log should hold but does not, or holds differently.
    pub mismatches: u64,
    /// Requests retried after a timeout or a lost connection.
    pub retries_exhausted: u64,
    /// Refusals by status (insufficient funds and the like are normal).
    pub refused: HashMap<&'static str, u64>,
    /// Final audit violations, in words.
    pub violations: Vec<String>,
}

fn worker_pids(seg: &shm::Segment) -> Vec<u32> {
    shm::Metrics::of(seg)
        .workers()
        .iter()
        .map(|w| w.pid.get() as u32)
        .filter(|&p| p != 0)
        .collect()
}

/// Runs the chaos and reconciles.
pub fn run(cfg: &ChaosConfig) -> anyhow::Result<ChaosReport> {
    let seg = shm::Segment::attach(&cfg.server_name, true)?;
    let salt = [0x24u8; 16];
    let secret =
        proto::scram::ClientSecret::derive(b"chaos", &salt, proto::scram::ITERATIONS_DEFAULT);
    let mut clients = Vec::new();
    for i in 0..cfg.connections {
        let mut c = Client::connect(cfg.addr, Duration::from_secs(2))?;
        let user = format!("k{}x{i}", cfg.seed % 1_000_000);
        match c.register_secret(&user, &salt, &secret) {
            Ok(_) | Err(ClientError::Refused(proto::Status::ErrAlreadyExists, _)) => {}
            Err(e) => return Err(e.into()),
        }
        c.login_secret(&user, secret.clone())?;
        c.ledger(&Request::Deposit(AmountRequest { amount: 1_000_000 }))?;
        clients.push(c);
    }
    let hot: Vec<u32> = clients
        .iter()
        .take(cfg.hot_accounts.max(2))
        .map(|c| c.user_id)
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let acks: Arc<Mutex<Vec<(u64, u32, u32)>>> = Arc::new(Mutex::new(Vec::new()));
    let exhausted = Arc::new(AtomicU64::new(0));
    let refused: Arc<Mutex<HashMap<&'static str, u64>>> = Arc::new(Mutex::new(HashMap::new()));
    let per = cfg.connections.div_ceil(cfg.threads.max(1));
    let mut groups: Vec<Vec<Client>> = Vec::new();
    while !clients.is_empty() {
        let n = per.min(clients.len());
        groups.push(clients.drain(..n).collect());
    }
    let retry = Retry {
        attempts: 20,
        backoff: Duration::from_millis(20),
        backoff_max: Duration::from_millis(500),
    };
    let handles: Vec<_> = groups
        .into_iter()
        .enumerate()
        .map(|(t, mut group)| {
            let (stop, acks, exhausted, refused, hot) = (
                stop.clone(),
                acks.clone(),
                exhausted.clone(),
                refused.clone(),
                hot.clone(),
            );
            let mut rng = cfg.seed ^ (t as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    for c in group.iter_mut() {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        let mut to = hot[(rng % hot.len() as u64) as usize];
                        if to == c.user_id {
                            to = hot[((rng >> 8) % hot.len() as u64) as usize];
                            if to == c.user_id {
                                continue;
                            }
                        }
                        let req = Request::Transfer(TransferRequest {
                            to: Target::Id(to),
                            amount: 1,
                        });
                        match c.call_retrying(&req, retry) {
                            Ok(r) => match r.reply() {
                                Ok(proto::Reply::Ok(proto::Response::Transfer(x))) => {
                                    mine.push((x.txn_id, c.user_id, to));
                                }
                                Ok(proto::Reply::Err(st, _)) => {
                                    if let Ok(mut m) = refused.lock() {
                                        *m.entry(st.name()).or_default() += 1;
                                    }
                                }
                                _ => {}
                            },
                            Err(_) => {
                                exhausted.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
                if let Ok(mut a) = acks.lock() {
                    a.extend(mine);
                }
            })
        })
        .collect();
    // The killer, and an audit after every kill.
    let mut report = ChaosReport::default();
    let end = Instant::now() + cfg.duration;
    let mut rng = cfg.seed | 1;
    while Instant::now() < end {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let (lo, hi) = cfg.kill_every;
        let span = hi.saturating_sub(lo).as_millis().max(1) as u64;
        std::thread::sleep(lo + Duration::from_millis(rng % span));
        let pids = worker_pids(&seg);
        if pids.is_empty() {
            continue;
        }
        let victim = pids[(rng >> 11) as usize % pids.len()];
        if nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(victim as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .is_ok()
        {
            report.kills += 1;
        }
        report.audits += 1;
        if !shm::ledger::audit(&seg, Duration::from_secs(5))?.ok() {
            report.audit_failures += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    // Let the master finish restarting and recovering, then audit and reconcile.
    std::thread::sleep(Duration::from_millis(500));
    let final_audit = shm::ledger::audit(&seg, Duration::from_secs(5))?;
    report.violations = final_audit.violations.clone();
    if !final_audit.ok() {
        report.audit_failures += 1;
    }
    let acks = std::mem::take(&mut *acks.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    report.acknowledged = acks.len() as u64;
    report.retries_exhausted = exhausted.load(Ordering::Relaxed);
    report.refused = refused.lock().map(|m| m.clone()).unwrap_or_default();
    let oldest = final_audit
        .txn_seq
        .saturating_sub(u64::from(seg.caps().txn_log))
        + 1;
    let mut log: HashMap<u64, shm::TxnRecord> = HashMap::new();
    let mut accounts: Vec<u32> = acks.iter().flat_map(|a| [a.1, a.2]).collect();
    accounts.sort_unstable();
    accounts.dedup();
    for a in accounts {
        for t in shm::ledger::history(&seg, a, 0, usize::MAX)? {
            log.insert(t.txn_id, t);
        }
    }
    for (txn_id, from, to) in acks {
        if txn_id < oldest {
            continue; // The ring has moved past it: not checkable, not counted.
        }
        match log.get(&txn_id) {
            Some(t) if t.from == from && t.to == to && t.amount == 1 => report.reconciled += 1,
            _ => report.mismatches += 1,
        }
    }
    Ok(report)
}
