//! The audit: every invariant of the ledger checked against a live segment, with every lock
//! held (DESIGN 3.6), and the fault injection that shows it notices.

#![forbid(unsafe_code)]

use super::reads::read_entry_with_prev;
use super::*;

/// What the audit found. `violations` is empty when every invariant holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuditReport {
    /// Registered accounts.
    pub accounts: u64,
    /// Sum of all balances.
    pub balance_sum: u128,
    /// Money deposited, ever.
    pub deposits: u128,
    /// Money withdrawn, ever.
    pub withdrawals: u128,
    /// Last transaction id.
    pub txn_seq: u64,
    /// Log entries checked.
    pub log_entries_checked: u64,
    /// Ids handed out but never used (a process killed between taking the id and committing).
    pub log_holes: u64,
    /// True when the log still holds every transaction, so it was replayed from the start.
    pub full_replay: bool,
    /// Locks the audit took over from dead owners while taking them all.
    pub locks_recovered: u64,
    /// Every invariant that does not hold, in words.
    pub violations: Vec<String>,
}

impl AuditReport {
    /// True when nothing was violated.
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Checks the ledger's invariants on a consistent view: it takes every lock (in account order,
/// or the global one), so no operation is in flight while it reads. A lock it cannot get within
/// `lock_timeout` is reported as stuck, with its holder.
///
/// Checks: the sum of balances equals deposits minus withdrawals; no intent is left prepared;
/// every log entry still in the ring agrees with its neighbours on each account's chain and the
/// newest with the account's balance; and when the ring never wrapped, replaying the whole log
/// from zero gives exactly every balance and both totals.
pub fn audit(seg: &Segment, lock_timeout: Duration) -> Result<AuditReport, ShmError> {
    seg.require_writable()?;
    let t = Tables::of(seg);
    let mut report = AuditReport::default();
    let recovered_before = t.globals.locks_recovered.load(Ordering::Relaxed);
    let users = t.globals.users_count.load(Ordering::Acquire) as usize;
    // The kernel releases at most 2048 robust locks of a dying thread (ROBUST_LIST_LIMIT); the
    // audit may hold more. Block every signal that could end it while it holds them, so only
    // SIGKILL can, and keep the locked section short.
    let _signals = SignalsBlocked::new();
    let mut held: Vec<&RobustMutex> = Vec::new();
    let lock_list: Vec<(Option<u32>, &RobustMutex, &AtomicU32)> = if t.mode == LockMode::Global {
        vec![(None, &t.globals.ledger_lock, &t.globals.ledger_holder)]
    } else {
        (1..=users)
            .map(|id| {
                let a = &t.accounts[id];
                (Some(id as u32), &a.lock, &a.holder)
            })
            .collect()
    };
    for (id, m, holder) in &lock_list {
        match t.acquire(m, *id, None, Some(lock_timeout)) {
            Ok(()) => held.push(m),
            Err(e) => {
                let h = holder.load(Ordering::Relaxed);
                let pid = h
                    .checked_sub(1)
                    .and_then(|s| t.slots.get(s as usize))
                    .map_or(0, |s| s.pid.load(Ordering::Relaxed));
                report.violations.push(format!(
                    "lock of {} not taken: {e}; held by slot {} (pid {pid}, {})",
                    id.map_or("the ledger".to_string(), |i| format!("account {i}")),
                    h.saturating_sub(1),
                    if process_alive(pid) { "alive" } else { "dead" }
                ));
            }
        }
    }
    if report.violations.is_empty() {
        check_locked(&t, users, &mut report);
    }
    for m in held.into_iter().rev() {
        let _ = m.unlock();
    }
    report.locks_recovered = t.globals.locks_recovered.load(Ordering::Relaxed) - recovered_before;
    Ok(report)
}

/// Blocks catchable signals in this thread until dropped.
struct SignalsBlocked(Option<nix::sys::signal::SigSet>);

impl SignalsBlocked {
    pub(super) fn new() -> SignalsBlocked {
        use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow};
        let mut old = SigSet::empty();
        let ok = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&SigSet::all()), Some(&mut old));
        SignalsBlocked(ok.ok().map(|()| old))
    }
}

impl Drop for SignalsBlocked {
    fn drop(&mut self) {
        if let Some(old) = self.0 {
            let _ = nix::sys::signal::pthread_sigmask(
                nix::sys::signal::SigmaskHow::SIG_SETMASK,
                Some(&old),
                None,
            );
        }
    }
}

/// The audit's checks, with every ledger lock held.
pub(super) fn check_locked(t: &Tables<'_>, users: usize, report: &mut AuditReport) {
    report.accounts = users as u64;
    report.txn_seq = t.globals.txn_seq.load(Ordering::Acquire);
    for (i, s) in t.slots.iter().enumerate() {
        if s.state.load(Ordering::Acquire) == INTENT_PREPARED {
            report
                .violations
                .push(format!("slot {i} still has a prepared intent"));
        }
        report.deposits += load_u128(&s.deposits);
        report.withdrawals += load_u128(&s.withdrawals);
    }
    let balances: Vec<u64> = (0..=users)
        .map(|i| t.accounts[i].balance.load(Ordering::Relaxed))
        .collect();
    report.balance_sum = balances.iter().map(|&b| u128::from(b)).sum();
    if report.deposits < report.withdrawals
        || report.balance_sum != report.deposits - report.withdrawals
    {
        report.violations.push(format!(
            "conservation: sum of balances {} != deposits {} - withdrawals {}",
            report.balance_sum, report.deposits, report.withdrawals
        ));
    }
    let cap = t.log.len() as u64;
    let first = report.txn_seq.saturating_sub(cap) + 1;
    report.full_replay = report.txn_seq <= cap;
    let mut replay = vec![0u64; users + 1];
    let (mut dep, mut wd) = (0u128, 0u128);
    // Balance each account had after its newest entry seen so far in the walk, to check the
    // next entry's starting balance against.
    let mut seen_after: Vec<Option<u64>> = vec![None; users + 1];
    for id in first..=report.txn_seq {
        let Some((e, _, _)) = read_entry_with_prev(t.log_entry(id), id) else {
            report.log_holes += 1;
            continue;
        };
        report.log_entries_checked += 1;
        let bad = |what: &str| format!("log entry {id} ({:?}): {what}", e.kind);
        let (f, to) = (e.from as usize, e.to as usize);
        if f > users || to > users {
            report.violations.push(bad("account out of range"));
            continue;
        }
        // Check each side's balance before the entry against the previous entry's after.
        let sides: [(usize, u64, i128); 2] = [
            (f, e.from_balance, i128::from(e.amount)),
            (to, e.to_balance, -i128::from(e.amount)),
        ];
        for (acct, after, delta) in sides {
            if acct == 0 {
                continue;
            }
            let before = i128::from(after) + delta;
            if let Some(prev_after) = seen_after[acct] {
                if i128::from(prev_after) != before {
                    report.violations.push(bad(&format!(
                        "account {acct} starts at {before}, its previous entry left {prev_after}"
                    )));
                }
            }
            seen_after[acct] = Some(after);
        }
        match e.kind {
            TxnKind::Deposit => {
                replay[to] = replay[to].wrapping_add(e.amount);
                dep += u128::from(e.amount);
            }
            TxnKind::Withdraw => {
                replay[f] = replay[f].wrapping_sub(e.amount);
                wd += u128::from(e.amount);
            }
            TxnKind::Transfer => {
                replay[f] = replay[f].wrapping_sub(e.amount);
                replay[to] = replay[to].wrapping_add(e.amount);
            }
        }
    }
    for (acct, after) in seen_after.iter().enumerate() {
        if let Some(after) = after {
            if *after != balances[acct] {
                report.violations.push(format!(
                    "account {acct}: balance {} but its newest log entry says {after}",
                    balances[acct]
                ));
            }
        }
    }
    if report.full_replay {
        for acct in 1..=users {
            if replay[acct] != balances[acct] {
                report.violations.push(format!(
                    "account {acct}: balance {} but replaying the log gives {}",
                    balances[acct], replay[acct]
                ));
            }
        }
        if dep != report.deposits || wd != report.withdrawals {
            report.violations.push(format!(
                "totals: slots say deposits {} withdrawals {}, the log says {dep} and {wd}",
                report.deposits, report.withdrawals
            ));
        }
    }
}

/// Breaks the ledger on purpose, to show the audit notices. Not for servers: tests and the
/// audit tool's self-check only.
#[doc(hidden)]
pub mod fault_injection {
    use super::*;

    /// Overwrites a balance without a transaction, as a bug or a stray write would.
    pub fn set_balance(seg: &Segment, user: u32, balance: u64) {
        if let Some(a) = Tables::of(seg).accounts.get(user as usize) {
            a.balance.store(balance, Ordering::Relaxed);
        }
    }
}
