//! The ledger operations: a process's handle on its slot, DEPOSIT, WITHDRAW and TRANSFER,
//! each under its account locks, committed as an intent and (durable mode) a journal record.

#![forbid(unsafe_code)]

use super::intent::{intent_txn, Held};
use super::*;

/// One process's handle on the ledger, bound to its slot. Operations take `&mut self`: a slot
/// runs one operation at a time.
pub struct Ledger<'s> {
    pub(super) t: Tables<'s>,
    pub(super) users: Users<'s>,
    pub(super) slot_index: u32,
    /// Durable mode: the `durable` the last operation's answer waits for (see
    /// [`Ledger::take_rests_on`]).
    pub(super) rests_on: core::cell::Cell<Option<u64>>,
}

/// Who asks for a ledger operation: the user whose account it debits (or credits, for a
/// deposit), and the session the request came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// The user.
    pub user: u32,
    /// When set, the operation runs only if this is still the user's current session, checked
    /// under the lock that applies it ([`LedgerError::SessionSuperseded`] otherwise).
    pub session: Option<SessionId>,
}

impl From<u32> for Caller {
    /// A caller with no session to check (tools, tests, benchmarks).
    fn from(user: u32) -> Caller {
        Caller {
            user,
            session: None,
        }
    }
}

impl core::fmt::Debug for Ledger<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Ledger")
            .field("slot", &self.slot_index)
            .field("mode", &self.t.mode)
            .finish()
    }
}

impl<'s> Ledger<'s> {
    /// Claims slot `slot` for this process. A prepared intent left in it by a dead process is
    /// finished first.
    pub fn attach(seg: &'s Segment, slot: u32) -> Result<Ledger<'s>, ShmError> {
        seg.require_writable()?;
        if slot >= seg.caps().workers {
            return Err(ShmError::BadCapacity {
                name: "slot",
                value: slot,
                why: "must be below the workers capacity",
            });
        }
        let ledger = Ledger {
            t: Tables::of(seg),
            users: Users::of(seg),
            slot_index: slot,
            rests_on: core::cell::Cell::new(None),
        };
        let owner = ledger.slot().pid.load(Ordering::Acquire);
        if owner != 0 && owner != std::process::id() && process_alive(owner) {
            return Err(ShmError::SlotInUse { slot, pid: owner });
        }
        recover_slot(seg, slot).map_err(|e| match e {
            LedgerError::Lock(l) => ShmError::Lock(l),
            _ => ShmError::Lock(LockError::Os(0)),
        })?;
        ledger
            .slot()
            .pid
            .store(std::process::id(), Ordering::Release);
        Ok(ledger)
    }

    pub(super) fn slot(&self) -> &'s Slot {
        &self.t.slots[self.slot_index as usize]
    }

    /// The slot this handle owns.
    pub fn slot_index(&self) -> u32 {
        self.slot_index
    }

    /// Durable mode: what the answer of the operation since the last call rests on, as the
    /// value `shm::journal::durable` must reach before it may be sent: one past its own
    /// record's LSN when it appended one (applied, or refused under the lock: everything it
    /// read has smaller LSNs), the journal's head when it answered from the outcome table (the
    /// original's record may still be in flight), `None` when it decided nothing (refused on
    /// its input alone, or because the journal cannot write).
    pub fn take_rests_on(&self) -> Option<u64> {
        self.rests_on.take()
    }

    pub(super) fn lock_accounts(&self, a: u32, b: u32) -> Result<Held<'s>, LedgerError> {
        let t = self.t;
        let me = self.slot_index + 1;
        let slot = Some(self.slot());
        if t.mode == LockMode::Global {
            let g = &t.globals.ledger_lock;
            t.acquire(g, None, slot, None)?;
            t.globals.ledger_holder.store(me, Ordering::Relaxed);
            return Ok(Held {
                tables: t,
                locks: [Some(g), None],
                holders: [Some(&t.globals.ledger_holder), None],
            });
        }
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        let mut held = Held {
            tables: t,
            locks: [None, None],
            holders: [None, None],
        };
        for (i, id) in [lo, hi].into_iter().enumerate() {
            if i == 1 && id == lo {
                break;
            }
            let acct = &t.accounts[id as usize];
            t.acquire(&acct.lock, Some(id), slot, None)?;
            acct.holder.store(me, Ordering::Relaxed);
            held.locks[i] = Some(&acct.lock);
            held.holders[i] = Some(&acct.holder);
        }
        Ok(held)
    }

    /// Refuses a request whose session a newer login ended. Called with the caller's lock
    /// held, so a request is either decided before the newer login took the session or never.
    pub(super) fn check_session(&self, caller: Caller) -> Result<(), LedgerError> {
        match caller.session {
            Some(sid) if self.users.session(caller.user) != Some(sid) => {
                Err(LedgerError::SessionSuperseded)
            }
            _ => Ok(()),
        }
    }

    /// Writes the intent, commits it, applies it, and clears it. Called with the locks held.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn commit(
        &self,
        kind: TxnKind,
        caller: u32,
        from: u32,
        to: u32,
        amount: u64,
        from_new: u64,
        to_new: u64,
        req_id: u64,
        opcode: u32,
        target: u32,
    ) -> Result<Applied, LedgerError> {
        let t = &self.t;
        let s = self.slot();
        debug_assert_eq!(s.state.load(Ordering::Relaxed), INTENT_IDLE);
        // Durable mode: the intent's commit point and its journal record are one critical
        // section of the journal lock (see journal.rs), so the record's LSN is its place in a
        // serial order and a kill between the two cannot leave a hole.
        let journal = if t.journal.enabled() {
            let j = t.journal.lock()?;
            j.check().map_err(LedgerError::Unavailable)?;
            Some(j)
        } else {
            None
        };
        let (mut dep, mut wd) = (load_u128(&s.deposits), load_u128(&s.withdrawals));
        match kind {
            TxnKind::Deposit => dep += u128::from(amount),
            TxnKind::Withdraw => wd += u128::from(amount),
            TxnKind::Transfer => {}
        }
        let prev = |id: u32| {
            if id == 0 {
                0
            } else {
                t.accounts[id as usize].last_txn_id.load(Ordering::Relaxed)
            }
        };
        // The id is taken under the account locks, so each account's ids rise in the order its
        // balance changed. A process killed between here and PREPARED leaves an unused id.
        let txn_id = t.globals.txn_seq.fetch_add(1, Ordering::AcqRel) + 1;
        s.kind.store(kind_code(kind), Ordering::Relaxed);
        s.caller.store(caller, Ordering::Relaxed);
        s.from.store(from, Ordering::Relaxed);
        s.to.store(to, Ordering::Relaxed);
        s.txn_id.store(txn_id, Ordering::Relaxed);
        s.amount.store(amount, Ordering::Relaxed);
        s.from_new.store(from_new, Ordering::Relaxed);
        s.to_new.store(to_new, Ordering::Relaxed);
        s.time_ms.store(wall_ms(), Ordering::Relaxed);
        s.from_prev.store(prev(from), Ordering::Relaxed);
        s.to_prev.store(prev(to), Ordering::Relaxed);
        s.req_id.store(req_id, Ordering::Relaxed);
        s.result_opcode.store(opcode, Ordering::Relaxed);
        s.result_target.store(target, Ordering::Relaxed);
        store_u128(&s.new_deposits, dep);
        store_u128(&s.new_withdrawals, wd);
        if let Some(j) = &journal {
            s.lsn.store(j.head(), Ordering::Relaxed);
            self.rests_on.set(Some(j.head() + 1));
        }
        s.state.store(INTENT_PREPARED, Ordering::Release);
        if let Some(j) = journal {
            j.push(&Record::Txn(intent_txn(s)));
        }
        t.apply(s);
        s.state.store(INTENT_IDLE, Ordering::Release);
        s.ops.fetch_add(1, Ordering::Relaxed);
        Ok(Applied {
            balance: if caller == from { from_new } else { to_new },
            txn_id,
            replayed: false,
        })
    }

    /// Adds `amount` to the caller's account.
    pub fn deposit(
        &mut self,
        caller: impl Into<Caller>,
        req_id: u64,
        amount: u64,
    ) -> Result<Applied, LedgerError> {
        self.one_account(TxnKind::Deposit, caller.into(), req_id, amount)
    }

    /// Takes `amount` from the caller's account.
    pub fn withdraw(
        &mut self,
        caller: impl Into<Caller>,
        req_id: u64,
        amount: u64,
    ) -> Result<Applied, LedgerError> {
        self.one_account(TxnKind::Withdraw, caller.into(), req_id, amount)
    }

    /// A deposit or withdrawal: money in from, or out to, outside the ledger.
    pub(super) fn one_account(
        &mut self,
        kind: TxnKind,
        caller: Caller,
        req_id: u64,
        amount: u64,
    ) -> Result<Applied, LedgerError> {
        let user = caller.user;
        let acct = self.t.account(user)?;
        if amount == 0 {
            return Err(LedgerError::InvalidAmount);
        }
        let _held = self.lock_accounts(user, user)?;
        self.check_session(caller)?;
        let op = kind_code(kind);
        if let Some(done) = self.decided(user, req_id, op, 0, amount) {
            return done;
        }
        let balance = acct.balance.load(Ordering::Relaxed);
        // A deposit credits `user` from outside (from 0); a withdrawal debits it (to 0).
        let (from, to, from_new, to_new) = if kind == TxnKind::Withdraw {
            let Some(new) = balance.checked_sub(amount) else {
                let e = LedgerError::InsufficientFunds { balance };
                return Err(self.refuse(user, req_id, op, 0, amount, e));
            };
            (user, 0, new, 0)
        } else {
            let Some(new) = balance.checked_add(amount) else {
                return Err(self.refuse(user, req_id, op, 0, amount, LedgerError::Overflow));
            };
            (0, user, 0, new)
        };
        self.commit(
            kind, user, from, to, amount, from_new, to_new, req_id, op, 0,
        )
    }

    /// Moves `amount` from the caller's account to `to`'s: both change or neither does.
    pub fn transfer(
        &mut self,
        caller: impl Into<Caller>,
        to: u32,
        req_id: u64,
        amount: u64,
    ) -> Result<Applied, LedgerError> {
        let caller = caller.into();
        let from = caller.user;
        let src = self.t.account(from)?;
        if from == to {
            return Err(LedgerError::SelfTransfer);
        }
        if amount == 0 {
            return Err(LedgerError::InvalidAmount);
        }
        // An unknown recipient is a refusal decided under the caller's lock like any other, so
        // a retry after the name is registered still gets the first answer.
        let dst = self.t.account(to).ok();
        let _held = self.lock_accounts(from, if dst.is_some() { to } else { from })?;
        self.check_session(caller)?;
        let op = kind_code(TxnKind::Transfer);
        if let Some(done) = self.decided(from, req_id, op, to, amount) {
            return done;
        }
        let Some(dst) = dst else {
            let e = LedgerError::UnknownAccount(to);
            return Err(self.refuse(from, req_id, op, to, amount, e));
        };
        let from_balance = src.balance.load(Ordering::Relaxed);
        let Some(from_new) = from_balance.checked_sub(amount) else {
            let e = LedgerError::InsufficientFunds {
                balance: from_balance,
            };
            return Err(self.refuse(from, req_id, op, to, amount, e));
        };
        let Some(to_new) = dst.balance.load(Ordering::Relaxed).checked_add(amount) else {
            return Err(self.refuse(from, req_id, op, to, amount, LedgerError::Overflow));
        };
        self.commit(
            TxnKind::Transfer,
            from,
            from,
            to,
            amount,
            from_new,
            to_new,
            req_id,
            op,
            to,
        )
    }
}
