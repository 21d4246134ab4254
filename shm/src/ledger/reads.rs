//! Reads without locks: balances, histories through the log ring, what a read rests on in
//! durable mode, and the counters `stats` shows.

#![forbid(unsafe_code)]

use super::*;

/// Reads `user`'s balance without locking: one atomic load, always a value the account held.
pub fn balance(seg: &Segment, user: u32) -> Result<u64, LedgerError> {
    Ok(Tables::of(seg)
        .account(user)?
        .balance
        .load(Ordering::Acquire))
}

/// Durable mode: what a read of `user`'s account just made rests on, as the value
/// `shm::journal::durable` must reach before its answer may be sent (0: nothing undurable).
/// Call it after the read: a balance or history entry seen was stored after this was.
pub fn read_rests_on(seg: &Segment, user: u32) -> Result<u64, LedgerError> {
    Ok(Tables::of(seg)
        .account(user)?
        .written_lsn
        .load(Ordering::Acquire))
}

/// Reads one log entry whole with its two chain links, or `None` if it does not hold `txn_id`
/// (never written, being written, or overwritten by a newer lap of the ring).
pub(super) fn read_entry_with_prev(e: &LogEntry, txn_id: u64) -> Option<(TxnRecord, u64, u64)> {
    if e.txn_id.load(Ordering::Acquire) != txn_id {
        return None;
    }
    let kind = e.kind.load(Ordering::Relaxed);
    let rec = TxnRecord {
        txn_id,
        kind: TxnKind::Deposit,
        from: e.from.load(Ordering::Relaxed),
        to: e.to.load(Ordering::Relaxed),
        amount: e.amount.load(Ordering::Relaxed),
        from_balance: e.from_balance.load(Ordering::Relaxed),
        to_balance: e.to_balance.load(Ordering::Relaxed),
        time_ms: e.time_ms.load(Ordering::Relaxed),
    };
    let from_prev = e.from_prev.load(Ordering::Relaxed);
    let to_prev = e.to_prev.load(Ordering::Relaxed);
    fence(Ordering::Acquire);
    if e.txn_id.load(Ordering::Relaxed) != txn_id {
        return None;
    }
    let kind = kind_from(kind)?;
    Some((TxnRecord { kind, ..rec }, from_prev, to_prev))
}

/// `user`'s transactions with ids below `before_txn_id` (0: no bound), newest first, at most
/// `limit`, while the log ring still holds them. Follows the account's chain through the log, so
/// it costs O(limit), not O(log size).
pub fn history(
    seg: &Segment,
    user: u32,
    before_txn_id: u64,
    limit: usize,
) -> Result<Vec<TxnRecord>, LedgerError> {
    let t = Tables::of(seg);
    let acct = t.account(user)?;
    let mut out = Vec::with_capacity(limit.min(256));
    let mut next = acct.last_txn_id.load(Ordering::Acquire);
    let bound = if before_txn_id == 0 {
        u64::MAX
    } else {
        before_txn_id
    };
    // Each step moves to a strictly smaller id, so the walk ends; the ring bounds it too.
    let mut steps = 0usize;
    while next != 0 && out.len() < limit && steps <= t.log.len() {
        steps += 1;
        let Some((rec, from_prev, to_prev)) = read_entry_with_prev(t.log_entry(next), next) else {
            break; // Overwritten by a newer lap of the ring: older history is gone.
        };
        if rec.txn_id < bound {
            out.push(rec);
        }
        let prev = if rec.from == user { from_prev } else { to_prev };
        if prev >= next {
            break;
        }
        next = prev;
    }
    Ok(out)
}

/// Counters of the whole ledger, summed over slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LedgerStats {
    /// Last transaction id handed out.
    pub txn_seq: u64,
    /// Operations completed.
    pub ops: u64,
    /// Times a lock was busy.
    pub lock_waits: u64,
    /// Nanoseconds spent waiting for busy locks.
    pub lock_wait_ns: u64,
    /// Locks taken over from dead owners.
    pub locks_recovered: u64,
    /// Half-done operations rolled forward.
    pub intents_recovered: u64,
}

/// Reads the counters; needs no lock and works on a read-only segment.
pub fn stats(seg: &Segment) -> LedgerStats {
    let t = Tables::of(seg);
    let mut st = LedgerStats {
        txn_seq: t.globals.txn_seq.load(Ordering::Relaxed),
        locks_recovered: t.globals.locks_recovered.load(Ordering::Relaxed),
        intents_recovered: t.globals.intents_recovered.load(Ordering::Relaxed),
        ..LedgerStats::default()
    };
    for s in t.slots {
        st.ops += s.ops.load(Ordering::Relaxed);
        st.lock_waits += s.lock_waits.load(Ordering::Relaxed);
        st.lock_wait_ns += s.lock_wait_ns.load(Ordering::Relaxed);
    }
    st
}
