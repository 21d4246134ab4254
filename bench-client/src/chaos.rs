//! `bench-client chaos`: ledger traffic from many users while requests are abandoned on purpose
//! and, on the same machine, every 0.5–2 s a random worker of the server is either killed with
//! SIGKILL or stalled (SIGSTOP for 200–500 ms, then SIGCONT). At the end every account's BALANCE
//! and TXN_HISTORY are read back **over the wire** and compared with a model the client kept:
//! every acknowledged operation applied exactly once, nothing applied twice, nothing the client
//! never sent.
//!
//! How a request is abandoned: the client sends it, gives up on the connection without reading
//! the answer, leaves that connection open, connects again (to whichever worker), logs in (which
//! ends the old session) and retries with the same `req_id` until it gets an answer
//! (PROTOCOL.md 8.4). It does so on purpose for a share of requests, and whenever an answer takes
//! longer than its timeout (a stalled worker): then the stalled worker reads the first copy after
//! the retry was answered and after many later requests, which is issue 10's sequence.
//!
//! With a [`Restarter`] (`bench-client chaos --restart`), each fault is a full crash instead:
//! SIGKILL to the master, every worker and the journal writer at a random instant, the
//! shared-memory segment removed as after a reboot, and the server started again on the same
//! port and data directory. Clients retry through the outage with the same `req_id`s, so an
//! operation in flight at the crash is either found applied (and answered with its original
//! outcome) or applied once after the restart; the reconciliation checks both.
//!
//! The model: each account's balance when the run began plus the effect of every operation
//! acknowledged `OK`; refusals change nothing. An operation whose outcome stayed unknown (retries
//! gave up) makes the run fail, since the model cannot be checked without it. The reconciliation
//! uses only the wire, so it works against a server on another machine; only the killer and the
//! audit (with `server_name`) run the server's own tools on this machine.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use proto::body::*;
use proto::{Reply, Request, Response};

use crate::client::{Client, ClientError, Retry};
use crate::rng::Rng;

/// Chaos settings.
#[derive(Debug, Clone)]
pub struct ChaosConfig {
    /// Server address.
    pub addr: SocketAddr,
    /// TLS on every connection, or plaintext.
    pub tls: Option<crate::ClientTls>,
    /// The server's `--name`, when it runs on this machine: `uring-server stats` tells the
    /// worker pids to kill and `uring-server audit` checks the ledger. `None`: no kills, no
    /// audit (abandonment only).
    pub server_name: Option<String>,
    /// Connections (one user each).
    pub connections: usize,
    /// Client threads; each drives its share of the connections one request at a time.
    pub threads: usize,
    /// How long to run.
    pub duration: Duration,
    /// Shortest and longest pause between faults (a kill or a stall).
    pub kill_every: (Duration, Duration),
    /// How long the client waits for an answer before it gives up on the connection.
    pub timeout: Duration,
    /// Accounts that receive transfers.
    pub hot_accounts: usize,
    /// Requests abandoned on purpose, per thousand.
    pub abandon_per_mille: u32,
    /// Seed: the run's choices (operations, amounts, abandonments, kill times) follow from it.
    pub seed: u64,
}

/// What a full-restart chaos run needs: the server it started, and how to start it again.
#[derive(Debug)]
pub struct Restarter {
    /// The server running now.
    pub server: crate::server::SpawnedServer,
    /// Its binary.
    pub exe: std::path::PathBuf,
    /// Its arguments (a fixed `--port` and `--data-dir`, so the restart serves the same ones).
    pub args: Vec<String>,
}

impl Restarter {
    /// Starts the server the first time.
    pub fn start(
        exe: std::path::PathBuf,
        name: &str,
        args: Vec<String>,
    ) -> anyhow::Result<Restarter> {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let server = crate::server::SpawnedServer::start(&exe, name, &a)?;
        Ok(Restarter { server, exe, args })
    }

    /// Kills every process of the server with SIGKILL, removes its segment and starts it again;
    /// returns how long it was down.
    pub fn crash_and_restart(&mut self) -> anyhow::Result<Duration> {
        let down = Instant::now();
        self.server.crash()?;
        let a: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let name = self.server.name.clone();
        self.server = crate::server::SpawnedServer::start(&self.exe, &name, &a)?;
        Ok(down.elapsed())
    }
}

/// What a chaos run found.
#[derive(Debug, Default)]
pub struct ChaosReport {
    /// Full crashes (every process killed, shared memory removed) and restarts.
    pub restarts: u64,
    /// Longest time from the kill to the restarted server listening, ms.
    pub restart_ms_max: u64,
    /// Workers killed.
    pub kills: u64,
    /// Workers stalled (stopped, then continued).
    pub stalls: u64,
    /// Audits run (after every kill and at the end).
    pub audits: u64,
    /// Audits that found a violation.
    pub audit_failures: u64,
    /// Operations acknowledged OK.
    pub acknowledged: u64,
    /// Requests abandoned on purpose and retried on a new connection.
    pub abandoned: u64,
    /// Of those, requests left unread in a stalled worker while the user retried elsewhere and
    /// went on with more requests than the server keeps outcomes for: copies the stalled worker
    /// reads late.
    pub late_copies: u64,
    /// Refusals by status (insufficient funds is normal here).
    pub refused: HashMap<&'static str, u64>,
    /// Operations whose retries gave up: their outcome is unknown.
    pub retries_exhausted: u64,
    /// Client threads that panicked.
    pub thread_panics: u64,
    /// Accounts whose BALANCE and TXN_HISTORY were read back and compared.
    pub accounts_checked: u64,
    /// Accounts whose history reached back to the start of the run (the log ring held it all).
    pub histories_complete: u64,
    /// Accounts whose BALANCE differs from the model.
    pub balance_mismatches: u64,
    /// History entries that match an acknowledged operation (a transfer counts at both ends).
    pub reconciled: u64,
    /// Acknowledged operations missing from a history that reaches back far enough.
    pub missing: u64,
    /// History entries no acknowledged operation explains: applied twice, or never sent.
    pub unexplained: u64,
    /// What went wrong, in words (the first few of each kind, and audit violations).
    pub violations: Vec<String>,
}

impl ChaosReport {
    /// True when every check held and something was checked.
    pub fn ok(&self, expect_kills: bool) -> bool {
        self.audit_failures == 0
            && self.balance_mismatches == 0
            && self.missing == 0
            && self.unexplained == 0
            && self.retries_exhausted == 0
            && self.thread_panics == 0
            && self.reconciled > 0
            && (!expect_kills || self.kills + self.stalls + self.restarts > 0)
    }

    fn note(&mut self, what: String) {
        if self.violations.len() < 50 {
            self.violations.push(what);
        }
    }
}

/// An operation acknowledged OK: what the client sent and the txn_id it was told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ack {
    txn_id: u64,
    kind: TxnKind,
    /// Debited account, 0 for a deposit.
    from: u32,
    /// Credited account, 0 for a withdrawal.
    to: u32,
    amount: u64,
}

/// What one client thread brings back.
#[derive(Default)]
struct ThreadOutcome {
    acks: Vec<Ack>,
    refused: HashMap<&'static str, u64>,
    abandoned: u64,
    late_copies: u64,
    exhausted: u64,
}

/// Runs the chaos and reconciles.
pub fn run(cfg: &ChaosConfig, mut restart: Option<&mut Restarter>) -> anyhow::Result<ChaosReport> {
    // Fail early, before any traffic, if the server to kill cannot be asked for its workers.
    if let Some(name) = &cfg.server_name {
        crate::server::server_stats(name)?;
    }
    let salt = [0x24u8; 16];
    let secret =
        proto::scram::ClientSecret::derive(b"chaos", &salt, proto::scram::ITERATIONS_DEFAULT);
    let mut clients = Vec::new();
    for i in 0..cfg.connections {
        let mut c = Client::connect_with(cfg.addr, cfg.timeout, cfg.tls.as_ref())?;
        c.hello("bench-client chaos")?;
        let user = format!("k{}x{i}", cfg.seed % 1_000_000);
        match c.register_secret(&user, &salt, &secret) {
            Ok(_) | Err(ClientError::Refused(proto::Status::ErrAlreadyExists, _)) => {}
            Err(e) => return Err(e.into()),
        }
        c.login_secret(&user, secret.clone())?;
        c.ledger(&Request::Deposit(AmountRequest { amount: 1_000_000 }))?;
        clients.push(c);
    }
    // The model starts from what each account holds now (the users may exist from an earlier
    // run), and each history is compared from its newest transaction on.
    let mut start: HashMap<u32, (u64, u64)> = HashMap::new();
    for c in &mut clients {
        let balance = c.balance()?;
        let newest = c.txn_history(0, 1)?.first().map_or(0, |t| t.txn_id);
        start.insert(c.user_id, (balance, newest));
    }
    let hot: Vec<u32> = clients
        .iter()
        .take(cfg.hot_accounts.max(2))
        .map(|c| c.user_id)
        .collect();
    let shared = std::sync::Arc::new(Shared {
        stop: std::sync::atomic::AtomicBool::new(false),
        stalled: std::sync::atomic::AtomicU32::new(0),
    });
    let per = cfg.connections.div_ceil(cfg.threads.max(1));
    let mut groups: Vec<Vec<Client>> = Vec::new();
    while !clients.is_empty() {
        let n = per.min(clients.len());
        groups.push(clients.drain(..n).collect());
    }
    let retry = Retry {
        attempts: 40,
        backoff: Duration::from_millis(20),
        backoff_max: Duration::from_millis(500),
    };
    let handles: Vec<_> = groups
        .into_iter()
        .enumerate()
        .map(|(t, group)| {
            let (shared, hot) = (shared.clone(), hot.clone());
            let rng = Rng::stream(cfg.seed, t as u64);
            let abandon = cfg.abandon_per_mille;
            std::thread::spawn(move || drive(group, &hot, &shared, rng, abandon, retry))
        })
        .collect();
    let mut report = ChaosReport::default();
    let end = Instant::now() + cfg.duration;
    let mut rng = Rng::new(cfg.seed);
    while Instant::now() < end {
        let (lo, hi) = cfg.kill_every;
        let span = hi.saturating_sub(lo).as_millis().max(1) as u64;
        let pause = lo + Duration::from_millis(rng.next_u64() % span);
        std::thread::sleep(pause.min(end.saturating_duration_since(Instant::now())));
        let Some(name) = &cfg.server_name else {
            continue;
        };
        if Instant::now() >= end {
            break;
        }
        if let Some(r) = restart.as_deref_mut() {
            let took = r.crash_and_restart()?;
            report.restarts += 1;
            report.restart_ms_max = report.restart_ms_max.max(took.as_millis() as u64);
            audit(name, &mut report)?;
            continue;
        }
        let pids = worker_pids(name);
        let Some(&(index, pid)) = pids.get((rng.next_u64() >> 11) as usize % pids.len().max(1))
        else {
            continue;
        };
        let victim = nix::unistd::Pid::from_raw(pid as i32);
        use nix::sys::signal::{kill, Signal};
        use std::sync::atomic::Ordering::Relaxed;
        if rng.next_u64() % 2 == 0 {
            if kill(victim, Signal::SIGKILL).is_ok() {
                report.kills += 1;
            }
        } else if kill(victim, Signal::SIGSTOP).is_ok() {
            shared.stalled.store(index as u32 + 1, Relaxed);
            std::thread::sleep(Duration::from_millis(200 + rng.next_u64() % 300));
            shared.stalled.store(0, Relaxed);
            // Continued whatever happened meanwhile: a stopped worker must never be left.
            let _ = kill(victim, Signal::SIGCONT);
            report.stalls += 1;
        }
        audit(name, &mut report)?;
    }
    shared
        .stop
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acks = Vec::new();
    let mut clients = Vec::new();
    for h in handles {
        match h.join() {
            Ok((outcome, group)) => {
                acks.extend(outcome.acks);
                report.abandoned += outcome.abandoned;
                report.late_copies += outcome.late_copies;
                report.retries_exhausted += outcome.exhausted;
                for (k, v) in outcome.refused {
                    *report.refused.entry(k).or_default() += v;
                }
                clients.extend(group);
            }
            Err(_) => report.thread_panics += 1,
        }
    }
    report.acknowledged = acks.len() as u64;
    if let Some(name) = &cfg.server_name {
        // Let the master finish restarting and recovering.
        std::thread::sleep(Duration::from_millis(500));
        audit(name, &mut report)?;
    }
    reconcile(&mut clients, &start, &acks, retry, &mut report);
    Ok(report)
}

/// What a thread shares with the fault injector.
struct Shared {
    stop: std::sync::atomic::AtomicBool,
    /// The index of the worker stalled right now, plus one; 0 when none is.
    stalled: std::sync::atomic::AtomicU32,
}

/// Operations a user sends at once after giving up on a stalled worker: more than the server
/// keeps outcomes for (32 by default), so that when the worker resumes and reads the abandoned
/// copy, only the high-water mark and the session fence stand between it and a second apply.
pub const BURST_AFTER_STALL: usize = 40;

/// One thread's loop: random ledger operations on its clients until told to stop.
fn drive(
    mut group: Vec<Client>,
    hot: &[u32],
    shared: &Shared,
    mut rng: Rng,
    abandon_per_mille: u32,
    retry: Retry,
) -> (ThreadOutcome, Vec<Client>) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut out = ThreadOutcome::default();
    // Connections given up on but left open, so the server may still read them late; the
    // oldest are closed as new ones come.
    let mut left_open: VecDeque<crate::Stream> = VecDeque::new();
    while !shared.stop.load(Relaxed) {
        for c in group.iter_mut() {
            let stalled = shared.stalled.load(Relaxed);
            let stalled_worker = stalled.checked_sub(1).map(|w| w as u16);
            let on_stalled = stalled_worker.is_some() && c.worker == stalled_worker;
            let abandon = on_stalled || (rng.next_u64() % 1000) < u64::from(abandon_per_mille);
            let (req, ack) = pick(c.user_id, hot, &mut rng);
            let id = c.next_req_id();
            if abandon {
                // Give up on this connection with the request sent and unanswered (a stalled
                // worker holds it unread), and go elsewhere: a connection that lands on the
                // stalled worker again times out in HELLO and is tried again.
                if c.send_with_id(id, &req).is_ok() {
                    out.abandoned += 1;
                }
                for _ in 0..8 {
                    if let Ok(old) = c.reconnect_keeping_old() {
                        left_open.push_back(old);
                        if left_open.len() > 8 {
                            left_open.pop_front();
                        }
                        if !on_stalled || c.worker != stalled_worker {
                            break;
                        }
                    }
                }
            }
            settle(c, id, &req, ack, retry, &mut out);
            if on_stalled {
                out.late_copies += 1;
                for _ in 0..BURST_AFTER_STALL {
                    let (req, ack) = pick(c.user_id, hot, &mut rng);
                    let id = c.next_req_id();
                    settle(c, id, &req, ack, retry, &mut out);
                }
            }
        }
    }
    (out, group)
}

/// What an acknowledgement of a request records: kind, debited, credited, amount.
type AckShape = (TxnKind, u32, u32, u64);

/// A random ledger request of user `me`, and what its acknowledgement would record.
fn pick(me: u32, hot: &[u32], rng: &mut Rng) -> (Request<'static>, AckShape) {
    let amount = 1 + rng.next_u64() % 100;
    let roll = rng.next_u64() % 100;
    if roll < 60 {
        let mut to = hot[(rng.next_u64() % hot.len() as u64) as usize];
        if to == me {
            to = hot[(hot.iter().position(|&h| h == me).unwrap_or(0) + 1) % hot.len()];
        }
        let req = Request::Transfer(TransferRequest {
            to: Target::Id(to),
            amount,
        });
        (req, (TxnKind::Transfer, me, to, amount))
    } else if roll < 80 {
        let req = Request::Deposit(AmountRequest { amount });
        (req, (TxnKind::Deposit, 0, me, amount))
    } else {
        let req = Request::Withdraw(AmountRequest { amount });
        (req, (TxnKind::Withdraw, me, 0, amount))
    }
}

/// Sends (or re-sends) request `id` until it is answered, and records the outcome.
fn settle(
    c: &mut Client,
    id: u64,
    req: &Request<'_>,
    ack: AckShape,
    retry: Retry,
    out: &mut ThreadOutcome,
) {
    match c.call_retrying_id(id, req, retry) {
        Ok(r) => match r.reply() {
            Ok(Reply::Ok(Response::Deposit(x) | Response::Withdraw(x) | Response::Transfer(x))) => {
                out.acks.push(Ack {
                    txn_id: x.txn_id,
                    kind: ack.0,
                    from: ack.1,
                    to: ack.2,
                    amount: ack.3,
                })
            }
            Ok(Reply::Err(st, _)) => *out.refused.entry(st.name()).or_default() += 1,
            _ => *out.refused.entry("unexpected reply").or_default() += 1,
        },
        Err(_) => out.exhausted += 1,
    }
}

/// (worker index, pid) of every running worker. A pid of 0 (a worker being restarted) or 1
/// would signal a process group or init: left out.
fn worker_pids(name: &str) -> Vec<(usize, u32)> {
    crate::server::server_stats(name)
        .map(|s| s.running_workers())
        .unwrap_or_default()
}

/// `uring-server audit` against the server; a failure is counted and its violations noted.
fn audit(name: &str, report: &mut ChaosReport) -> anyhow::Result<()> {
    report.audits += 1;
    if let Some(violations) = crate::server::audit(name)? {
        report.audit_failures += 1;
        for v in violations.lines() {
            report.note(format!("audit: {v}"));
        }
    }
    Ok(())
}

/// Reads every account back over the wire and compares it with the model.
fn reconcile(
    clients: &mut [Client],
    start: &HashMap<u32, (u64, u64)>,
    acks: &[Ack],
    retry: Retry,
    report: &mut ChaosReport,
) {
    let mut ids = HashSet::new();
    for a in acks {
        if !ids.insert(a.txn_id) {
            report.unexplained += 1;
            report.note(format!("txn {} acknowledged for two requests", a.txn_id));
        }
    }
    let mut by_account: HashMap<u32, Vec<&Ack>> = HashMap::new();
    for a in acks {
        for acct in [a.from, a.to] {
            if acct != 0 {
                by_account.entry(acct).or_default().push(a);
            }
        }
    }
    for c in clients.iter_mut() {
        let user = c.user_id;
        let Some(&(start_balance, start_txn)) = start.get(&user) else {
            continue;
        };
        let mine = by_account.remove(&user).unwrap_or_default();
        let mut expected = i128::from(start_balance);
        for a in &mine {
            let amount = i128::from(a.amount);
            expected += if a.to == user { amount } else { -amount };
        }
        let read = read_account(c, start_txn, retry);
        let Ok((balance, history, complete)) = read else {
            report.note(format!("account {user}: could not be read back"));
            report.retries_exhausted += 1;
            continue;
        };
        report.accounts_checked += 1;
        if i128::from(balance) != expected {
            report.balance_mismatches += 1;
            report.note(format!(
                "account {user}: BALANCE {balance}, the model says {expected}"
            ));
        }
        if complete {
            report.histories_complete += 1;
        }
        // Entries older than the oldest one read are only checkable when the walk reached the
        // start of the run.
        let cutoff = if complete {
            start_txn + 1
        } else {
            history.iter().map(|t| t.txn_id).min().unwrap_or(u64::MAX)
        };
        let acked: HashMap<u64, &Ack> = mine.iter().map(|a| (a.txn_id, *a)).collect();
        let mut seen = HashSet::new();
        for t in &history {
            seen.insert(t.txn_id);
            match acked.get(&t.txn_id) {
                Some(a)
                    if (a.kind, a.from, a.to, a.amount)
                        == (t.kind, t.from_id, t.to_id, t.amount) =>
                {
                    report.reconciled += 1;
                }
                Some(a) => {
                    report.unexplained += 1;
                    report.note(format!(
                        "account {user}: txn {} is {t:?}, acknowledged as {a:?}",
                        t.txn_id
                    ));
                }
                None => {
                    report.unexplained += 1;
                    report.note(format!(
                        "account {user}: txn {} ({:?} {} from {} to {}) explained by no acknowledged request",
                        t.txn_id, t.kind, t.amount, t.from_id, t.to_id
                    ));
                }
            }
        }
        for a in &mine {
            if a.txn_id >= cutoff && !seen.contains(&a.txn_id) {
                report.missing += 1;
                report.note(format!(
                    "account {user}: acknowledged {a:?} is not in its history"
                ));
            }
        }
    }
}

/// BALANCE, and TXN_HISTORY newer than `start_txn`, newest first, and whether the walk reached
/// `start_txn` (the log ring still held everything since). Reconnects first: the connection may
/// have been lost with a killed worker.
fn read_account(
    c: &mut Client,
    start_txn: u64,
    retry: Retry,
) -> Result<(u64, Vec<TxnEntry>, bool), ClientError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let read = (|| {
            c.reconnect()?;
            let balance = c.balance()?;
            let mut history = Vec::new();
            let mut before = 0u64;
            // Pages of up to 1000; the ring bounds the walk.
            for _ in 0..100_000 {
                let page = c.txn_history(before, 1000)?;
                let Some(last) = page.last().map(|t| t.txn_id) else {
                    return Ok((balance, history, start_txn == 0));
                };
                for t in page {
                    if t.txn_id <= start_txn {
                        return Ok((balance, history, true));
                    }
                    history.push(t);
                }
                before = last;
            }
            Ok((balance, history, false))
        })();
        match read {
            Ok(r) => return Ok(r),
            Err(e) if attempt >= retry.attempts => return Err(e),
            Err(_) => std::thread::sleep(retry.backoff),
        }
    }
}
