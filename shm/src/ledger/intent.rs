//! Intents and their repair: taking account locks (and rolling forward what a dead owner left
//! prepared), the locks held for one operation, a dead slot's recovery, and a prepared intent
//! as its journal record.

#![forbid(unsafe_code)]

use super::*;

impl<'s> Tables<'s> {
    /// After a lock came back [`Locked::OwnerDied`]: rolls forward every prepared intent that
    /// touches `account` (any account when `None`, for the global lock). Only the dead owner
    /// can have one, because it held the lock the caller now holds.
    pub(super) fn repair(&self, account: Option<u32>) -> Result<(), LedgerError> {
        let rec = &self.globals.recovery_lock;
        let outcome = rec.lock()?;
        if self.journal.enabled() {
            // A dead owner that prepared an intent inside the journal lock may not have appended
            // its record: taking the lock appends it (see journal.rs), before it is applied here.
            if let Err(e) = self.journal.lock() {
                let _ = rec.unlock();
                return Err(e.into());
            }
        }
        for s in self.slots {
            if s.state.load(Ordering::Acquire) != INTENT_PREPARED {
                continue;
            }
            let touches = match account {
                None => true,
                Some(a) => s.from.load(Ordering::Relaxed) == a || s.to.load(Ordering::Relaxed) == a,
            };
            if touches {
                self.apply(s);
                s.state.store(INTENT_IDLE, Ordering::Release);
                self.globals
                    .intents_recovered
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        if outcome == Locked::OwnerDied {
            // A recoverer died mid-repair; the repair above redid its work.
            rec.mark_consistent()?;
        }
        rec.unlock()?;
        Ok(())
    }

    /// Takes `m`, counting a wait when it was busy and repairing when its owner died.
    pub(super) fn acquire(
        &self,
        m: &RobustMutex,
        account: Option<u32>,
        slot: Option<&Slot>,
        timeout: Option<Duration>,
    ) -> Result<(), LedgerError> {
        let outcome = match m.try_lock()? {
            Some(o) => o,
            None => {
                let start = Instant::now();
                let o = match timeout {
                    Some(t) => m.lock_timeout(t)?,
                    None => m.lock()?,
                };
                if let Some(s) = slot {
                    s.lock_waits.fetch_add(1, Ordering::Relaxed);
                    s.lock_wait_ns
                        .fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
                }
                o
            }
        };
        if outcome == Locked::OwnerDied {
            self.globals.locks_recovered.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = self.repair(account) {
                // Only a broken recovery lock gets here. Holding on would hang every later
                // caller; releasing without marking consistent makes the lock fail loudly
                // (ENOTRECOVERABLE, answered ERR_INTERNAL) instead.
                let _ = m.unlock();
                return Err(e);
            }
            m.mark_consistent()?;
        }
        Ok(())
    }
}

/// Locks held for one operation; released in reverse order on drop.
pub(super) struct Held<'s> {
    pub(super) tables: Tables<'s>,
    pub(super) locks: [Option<&'s RobustMutex>; 2],
    pub(super) holders: [Option<&'s AtomicU32>; 2],
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        for i in (0..2).rev() {
            if let Some(h) = self.holders[i] {
                h.store(0, Ordering::Relaxed);
            }
            if let Some(m) = self.locks[i] {
                // Unlock fails only for a lock this thread does not hold, which `lock_accounts`
                // rules out; nothing useful can be done about it in a destructor.
                let _ = m.unlock();
            }
        }
        let _ = self.tables;
    }
}

/// A slot's intent as its journal record.
pub(super) fn intent_txn(s: &Slot) -> TxnRec {
    TxnRec {
        kind: s.kind.load(Ordering::Relaxed),
        opcode: s.result_opcode.load(Ordering::Relaxed),
        caller: s.caller.load(Ordering::Relaxed),
        from: s.from.load(Ordering::Relaxed),
        to: s.to.load(Ordering::Relaxed),
        target: s.result_target.load(Ordering::Relaxed),
        txn_id: s.txn_id.load(Ordering::Relaxed),
        amount: s.amount.load(Ordering::Relaxed),
        from_new: s.from_new.load(Ordering::Relaxed),
        to_new: s.to_new.load(Ordering::Relaxed),
        time_ms: s.time_ms.load(Ordering::Relaxed),
        from_prev: s.from_prev.load(Ordering::Relaxed),
        to_prev: s.to_prev.load(Ordering::Relaxed),
        req_id: s.req_id.load(Ordering::Relaxed),
    }
}

/// The record of an intent prepared with LSN `lsn` and (maybe) never appended: only a process
/// that died inside the journal lock leaves one. Called with the journal lock held.
pub(crate) fn prepared_intent_at(seg: &Segment, lsn: u64) -> Option<Record> {
    Tables::of(seg)
        .slots
        .iter()
        .find(|s| {
            s.state.load(Ordering::Acquire) == INTENT_PREPARED
                && s.lsn.load(Ordering::Relaxed) == lsn
        })
        .map(|s| Record::Txn(intent_txn(s)))
}

/// Finishes whatever slot `slot` left half done (its owner is dead, or is this process claiming
/// the slot), and frees every account lock it still holds. The master calls this when it reaps a
/// dead worker; [`Ledger::attach`] calls it when a slot is claimed.
pub fn recover_slot(seg: &Segment, slot: u32) -> Result<RecoveryReport, LedgerError> {
    let t = Tables::of(seg);
    let mut report = RecoveryReport::default();
    let Some(s) = t.slots.get(slot as usize) else {
        return Ok(report);
    };
    let old_pid = s.pid.load(Ordering::Acquire);
    if old_pid != 0 && old_pid != std::process::id() && process_alive(old_pid) {
        // Still running: nothing to recover, and taking its locks would wait for it.
        return Ok(report);
    }
    let me = slot + 1;
    let before = t.globals.locks_recovered.load(Ordering::Relaxed);
    let intents_before = t.globals.intents_recovered.load(Ordering::Relaxed);
    // Taking and releasing each lock the dead process held runs the OwnerDied repair.
    if t.mode == LockMode::Global {
        if t.globals.ledger_holder.load(Ordering::Relaxed) == me
            || s.state.load(Ordering::Acquire) == INTENT_PREPARED
        {
            t.acquire(&t.globals.ledger_lock, None, None, None)?;
            t.globals.ledger_holder.store(0, Ordering::Relaxed);
            t.globals.ledger_lock.unlock()?;
        }
    } else {
        for (id, a) in t.accounts.iter().enumerate() {
            let prepared_here = s.state.load(Ordering::Acquire) == INTENT_PREPARED
                && (s.from.load(Ordering::Relaxed) == id as u32
                    || s.to.load(Ordering::Relaxed) == id as u32);
            if a.holder.load(Ordering::Relaxed) == me || prepared_here {
                t.acquire(&a.lock, Some(id as u32), None, None)?;
                a.holder.store(0, Ordering::Relaxed);
                a.lock.unlock()?;
            }
        }
    }
    report.locks_recovered = t.globals.locks_recovered.load(Ordering::Relaxed) - before;
    report.intents_recovered = t.globals.intents_recovered.load(Ordering::Relaxed) - intents_before;
    Ok(report)
}

/// What [`recover_slot`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RecoveryReport {
    /// Locks taken over from the dead owner.
    pub locks_recovered: u64,
    /// Half-done operations rolled forward.
    pub intents_recovered: u64,
}
