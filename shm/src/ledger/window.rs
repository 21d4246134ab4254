//! The exactly-once window: each user's decided outcomes (the result table, K entries at
//! `req_id % K`) and high-water mark, looked up before a request is applied and written when
//! it is decided (DESIGN 3.5).

#![forbid(unsafe_code)]

use super::*;

impl<'s> Tables<'s> {
    /// Records the outcome of (`caller`, `req_id`) and raises the caller's high-water mark.
    /// Called with the caller's lock held, or by a roll-forward that holds it for a dead owner.
    /// The opcode is stored last, so an entry cut short by a kill reads as empty; the mark is
    /// raised after the entry is whole, so a kill between the two leaves an entry that answers
    /// retries and a mark that still lets nothing else through twice.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn store_result(
        &self,
        caller: u32,
        req_id: u64,
        opcode: u32,
        target: u32,
        amount: u64,
        refusal: u32,
        balance: u64,
        txn_id: u64,
    ) {
        let e = self.result_entry(caller, req_id);
        e.opcode.store(0, Ordering::Relaxed);
        fence(Ordering::Release);
        e.req_id.store(req_id, Ordering::Relaxed);
        e.target.store(target, Ordering::Relaxed);
        e.refusal.store(refusal, Ordering::Relaxed);
        e.amount.store(amount, Ordering::Relaxed);
        e.balance.store(balance, Ordering::Relaxed);
        e.txn_id.store(txn_id, Ordering::Relaxed);
        e.opcode.store(opcode, Ordering::Release);
        let hw = &self.accounts[caller as usize].req_id_hw;
        if hw.load(Ordering::Relaxed) < req_id {
            hw.store(req_id, Ordering::Release);
        }
    }
}

impl Ledger<'_> {
    /// The earlier outcome of (`caller`, `req_id`) if it was decided before, or a refusal if
    /// it can no longer be applied; `None` for a new request. Called with the caller's lock
    /// held, so the answer stays true until the request is decided under the same lock.
    pub(super) fn decided(
        &self,
        caller: u32,
        req_id: u64,
        opcode: u32,
        target: u32,
        amount: u64,
    ) -> Option<Result<Applied, LedgerError>> {
        let e = self.t.result_entry(caller, req_id);
        let op = e.opcode.load(Ordering::Acquire);
        if op != 0 && e.req_id.load(Ordering::Relaxed) == req_id {
            if self.t.journal.enabled() {
                self.rests_on.set(Some(self.t.journal.head()));
            }
            if op != opcode
                || e.target.load(Ordering::Relaxed) != target
                || e.amount.load(Ordering::Relaxed) != amount
            {
                return Some(Err(LedgerError::ReqIdReused));
            }
            let balance = e.balance.load(Ordering::Relaxed);
            return Some(match e.refusal.load(Ordering::Relaxed) {
                REFUSAL_NONE => Ok(Applied {
                    balance,
                    txn_id: e.txn_id.load(Ordering::Relaxed),
                    replayed: true,
                }),
                REFUSAL_FUNDS => Err(LedgerError::InsufficientFunds { balance }),
                REFUSAL_OVERFLOW => Err(LedgerError::Overflow),
                _ => Err(LedgerError::UnknownAccount(target)),
            });
        }
        let hw = self.t.accounts[caller as usize]
            .req_id_hw
            .load(Ordering::Relaxed);
        if req_id <= hw {
            if self.t.journal.enabled() {
                self.rests_on.set(Some(self.t.journal.head()));
            }
            // Every decided req_id above `hw - k` has its own entry (they map to distinct
            // entries), so one that is not there was never decided, and never will be now.
            return Some(Err(LedgerError::Stale {
                req_id_hw: hw,
                within_kept: hw - req_id < self.t.results_per_user as u64,
            }));
        }
        None
    }

    /// Records a refusal decided under the lock, so that a retry gets the same answer, and
    /// returns it. Refusals that depend only on the request (a zero amount) are not recorded.
    pub(super) fn refuse(
        &self,
        caller: u32,
        req_id: u64,
        opcode: u32,
        target: u32,
        amount: u64,
        err: LedgerError,
    ) -> LedgerError {
        let (code, balance) = match err {
            LedgerError::InsufficientFunds { balance } => (REFUSAL_FUNDS, balance),
            LedgerError::Overflow => (REFUSAL_OVERFLOW, 0),
            LedgerError::UnknownAccount(_) => (REFUSAL_UNKNOWN_ACCOUNT, 0),
            _ => return err,
        };
        if self.t.journal.enabled() {
            let j = match self.t.journal.lock() {
                Ok(j) => j,
                Err(e) => return e.into(),
            };
            if let Err(u) = j.check() {
                return LedgerError::Unavailable(u);
            }
            self.rests_on.set(Some(j.head() + 1));
            j.push(&Record::Refusal(OutcomeRec {
                user: caller,
                opcode,
                target,
                refusal: code,
                req_id,
                amount,
                balance,
                txn_id: 0,
            }));
        }
        self.t
            .store_result(caller, req_id, opcode, target, amount, code, balance, 0);
        err
    }
}

/// The highest req_id of `user`'s ledger requests decided so far (0 for none): a client that
/// lost count continues above it. One atomic load; needs no lock.
pub fn req_id_hw(seg: &Segment, user: u32) -> Result<u64, LedgerError> {
    Ok(Tables::of(seg)
        .account(user)?
        .req_id_hw
        .load(Ordering::Acquire))
}

/// How many decided outcomes are kept per user: the window of req_ids below the high-water mark
/// whose retries still get their first answer.
pub fn results_per_user(seg: &Segment) -> u32 {
    seg.caps().results_per_user
}
