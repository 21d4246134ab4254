//! Storing a decided transaction's absolute values: both balances, the log entry, the outcome.
//! Idempotent, so an intent's roll-forward and journal replay come here too.

#![forbid(unsafe_code)]

use super::intent::intent_txn;
use super::*;

impl<'s> Tables<'s> {
    /// Stores an intent's absolute values. Idempotent: applying it twice is applying it once.
    pub(super) fn apply(&self, s: &Slot) {
        if self.journal.enabled() {
            let lsn = s.lsn.load(Ordering::Relaxed) + 1;
            for id in [s.from.load(Ordering::Relaxed), s.to.load(Ordering::Relaxed)] {
                if id != 0 {
                    self.accounts[id as usize]
                        .written_lsn
                        .fetch_max(lsn, Ordering::Relaxed);
                }
            }
        }
        self.apply_txn(&intent_txn(s));
        store_u128(&s.deposits, load_u128(&s.new_deposits));
        store_u128(&s.withdrawals, load_u128(&s.new_withdrawals));
    }

    /// Stores a transaction's absolute values: both balances, the log entry, the caller's
    /// outcome. Idempotent. An intent's roll-forward and journal replay both come here.
    pub(super) fn apply_txn(&self, x: &TxnRec) {
        for (id, new) in [(x.from, x.from_new), (x.to, x.to_new)] {
            if id != 0 {
                let a = &self.accounts[id as usize];
                // Release: a reader that sees the balance sees `written_lsn` (set before).
                a.balance.store(new, Ordering::Release);
                a.last_txn_id.store(x.txn_id, Ordering::Release);
            }
        }
        self.write_log(x);
        let caller_balance = if x.caller == x.from {
            x.from_new
        } else {
            x.to_new
        };
        self.store_result(
            x.caller,
            x.req_id,
            x.opcode,
            x.target,
            x.amount,
            REFUSAL_NONE,
            caller_balance,
            x.txn_id,
        );
    }

    /// Writes `x`'s log entry like a seqlock (id 0 while being written). A late roll-forward
    /// must not overwrite a newer transaction that took this ring slot.
    pub(super) fn write_log(&self, x: &TxnRec) {
        let e = self.log_entry(x.txn_id);
        if e.txn_id.load(Ordering::Acquire) > x.txn_id {
            return;
        }
        e.txn_id.store(0, Ordering::Relaxed);
        fence(Ordering::Release);
        e.kind.store(x.kind, Ordering::Relaxed);
        e.from.store(x.from, Ordering::Relaxed);
        e.to.store(x.to, Ordering::Relaxed);
        e.amount.store(x.amount, Ordering::Relaxed);
        e.from_balance.store(x.from_new, Ordering::Relaxed);
        e.to_balance.store(x.to_new, Ordering::Relaxed);
        e.time_ms.store(x.time_ms, Ordering::Relaxed);
        e.from_prev.store(x.from_prev, Ordering::Relaxed);
        e.to_prev.store(x.to_prev, Ordering::Relaxed);
        e.txn_id.store(x.txn_id, Ordering::Release);
    }
}
