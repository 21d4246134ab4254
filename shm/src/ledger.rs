//! The ledger: balances, the transaction log ring, idempotency records, running totals, and the
//! crash recovery that keeps them consistent when a process dies at any instruction.
//!
//! # How an operation survives `kill -9`
//!
//! Every process that changes the ledger owns a [`Slot`]. An operation:
//!
//! 1. locks the accounts it touches (two in (min, max) order for a transfer; or the one ledger
//!    lock in [`LockMode::Global`]), each a robust mutex;
//! 2. checks everything (funds, overflow, idempotency) and computes the *absolute* new values:
//!    balances, the log entry, the idempotency record, the slot's new totals;
//! 3. writes them into its slot as an intent and marks it `PREPARED` (the commit point);
//! 4. applies the intent: stores those absolute values;
//! 5. marks the intent `IDLE`, unlocks, and only then reports success.
//!
//! A process killed before step 3 changed nothing. Killed after it, its intent holds everything
//! needed to finish: applying it again stores the same values, so it can be applied any number of
//! times (roll forward). Whoever next locks one of the dead process's accounts gets
//! [`Locked::OwnerDied`], takes the recovery lock, applies every `PREPARED` intent that touches
//! that account (only the dead process can have one, since it held the lock), and marks the lock
//! consistent. A process that claims a slot first finishes that slot's intent. So a lock is
//! never held forever, no transfer is half applied, and nothing acknowledged is lost.

#![forbid(unsafe_code)]

use core::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::journal::{AccountRec, Journal, OutcomeRec, Record, TotalsRec, TxnRec, Unavailable};
use crate::lock::{LockError, Locked, RobustMutex};
use crate::segment::{process_alive, wall_ms, Globals, LockMode, Segment, ShmError};
use crate::users::{SessionId, Users};

/// One account. Its id is its index; index 0 is unused.
#[repr(C, align(128))]
pub(crate) struct Account {
    pub(crate) lock: RobustMutex,
    /// 1 once the user that owns it is registered.
    pub(crate) exists: AtomicU32,
    /// The slot holding `lock`, plus one; 0 when free.
    holder: AtomicU32,
    balance: AtomicU64,
    /// The newest transaction touching this account: the head of its history chain in the log.
    last_txn_id: AtomicU64,
    /// The highest req_id of a ledger request this user sent that was decided (applied, or
    /// refused under the lock). A copy with a req_id at or below it is never applied again.
    req_id_hw: AtomicU64,
    /// Durable mode: one past the LSN of the newest journal record that changed this account
    /// (0: none since the server started; what recovery loaded is on disk). A read of the
    /// account answers once `durable` reaches it. Stored before the balance (Release).
    written_lsn: AtomicU64,
}
crate::layout!(Account, 128, 128);

/// The decided outcome of one (user, req_id): applied, or refused by a rule checked under the
/// lock. A user's results live at `req_id % results_per_user`, so the table holds the outcome of
/// every decided req_id in `(req_id_hw - results_per_user, req_id_hw]`.
#[repr(C)]
pub(crate) struct ResultEntry {
    req_id: AtomicU64,
    /// The request's opcode, 0 for an empty entry. Written last: the entry's commit point.
    opcode: AtomicU32,
    target: AtomicU32,
    /// `REFUSAL_NONE` when applied, else which refusal.
    refusal: AtomicU32,
    _pad: AtomicU32,
    amount: AtomicU64,
    /// The caller's balance after it (applied), or at the refusal (insufficient funds).
    balance: AtomicU64,
    txn_id: AtomicU64,
}
crate::layout!(ResultEntry, 48, 8);

// 48 bytes: the layout's outcome table is (users + 1) × results_per_user of these.

const REFUSAL_NONE: u32 = 0;
const REFUSAL_FUNDS: u32 = 1;
const REFUSAL_OVERFLOW: u32 = 2;
const REFUSAL_UNKNOWN_ACCOUNT: u32 = 3;

/// One entry of the transaction log ring, written like a seqlock: `txn_id` is 0 while the entry
/// is being written and the id once it is whole.
#[repr(C)]
pub(crate) struct LogEntry {
    txn_id: AtomicU64,
    kind: AtomicU32,
    from: AtomicU32,
    to: AtomicU32,
    _pad: AtomicU32,
    amount: AtomicU64,
    from_balance: AtomicU64,
    to_balance: AtomicU64,
    time_ms: AtomicU64,
    from_prev: AtomicU64,
    to_prev: AtomicU64,
}
crate::layout!(LogEntry, 72, 8);

const INTENT_IDLE: u32 = 0;
const INTENT_PREPARED: u32 = 1;

/// A process's slot: who owns it, its intent, and its share of the running totals.
#[repr(C, align(128))]
pub(crate) struct Slot {
    pid: AtomicU32,
    state: AtomicU32,
    kind: AtomicU32,
    caller: AtomicU32,
    from: AtomicU32,
    to: AtomicU32,
    result_target: AtomicU32,
    result_opcode: AtomicU32,
    txn_id: AtomicU64,
    amount: AtomicU64,
    from_new: AtomicU64,
    to_new: AtomicU64,
    time_ms: AtomicU64,
    from_prev: AtomicU64,
    to_prev: AtomicU64,
    req_id: AtomicU64,
    /// The journal LSN the intent's record took (durable mode).
    lsn: AtomicU64,
    /// Totals after the intent, as (low, high) halves of u128s.
    new_deposits: [AtomicU64; 2],
    new_withdrawals: [AtomicU64; 2],
    /// Money this slot's operations brought in and took out, ever: u128 as (low, high).
    deposits: [AtomicU64; 2],
    withdrawals: [AtomicU64; 2],
    /// Operations completed by this slot.
    pub(crate) ops: AtomicU64,
    /// Times a lock was busy when this slot wanted it, and the time spent waiting.
    pub(crate) lock_waits: AtomicU64,
    pub(crate) lock_wait_ns: AtomicU64,
}
crate::layout!(Slot, 256, 128);

fn load_u128(w: &[AtomicU64; 2]) -> u128 {
    u128::from(w[0].load(Ordering::Relaxed)) | (u128::from(w[1].load(Ordering::Relaxed)) << 64)
}

fn store_u128(w: &[AtomicU64; 2], v: u128) {
    w[0].store(v as u64, Ordering::Relaxed);
    w[1].store((v >> 64) as u64, Ordering::Relaxed);
}

/// Why a ledger operation was refused. Nothing was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LedgerError {
    /// No registered user has this id.
    UnknownAccount(u32),
    /// The amount is zero.
    InvalidAmount,
    /// The balance is below the amount.
    InsufficientFunds {
        /// The balance now.
        balance: u64,
    },
    /// The balance would pass `u64::MAX`.
    Overflow,
    /// A transfer to the caller's own account.
    SelfTransfer,
    /// The req_id was used before for a different operation.
    ReqIdReused,
    /// The req_id is at or below the caller's highest decided one and no result is kept for
    /// it: this copy is not applied, and no later copy will be.
    Stale {
        /// The caller's highest decided req_id.
        req_id_hw: u64,
        /// True when the req_id is within the results kept, so it was certainly never applied;
        /// false when it is older than they reach.
        within_kept: bool,
    },
    /// The caller's session is no longer the user's current one (a newer login ended it).
    SessionSuperseded,
    /// The journal cannot take the record (disk failing, or behind): nothing was applied.
    Unavailable(Unavailable),
    /// A lock failed.
    Lock(LockError),
}

impl core::fmt::Display for LedgerError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            LedgerError::UnknownAccount(id) => write!(f, "no account {id}"),
            LedgerError::InvalidAmount => f.write_str("amount must be above 0"),
            LedgerError::InsufficientFunds { balance } => {
                write!(f, "insufficient funds: balance {balance}")
            }
            LedgerError::Overflow => f.write_str("the balance would overflow"),
            LedgerError::SelfTransfer => f.write_str("transfer to oneself"),
            LedgerError::ReqIdReused => f.write_str("req_id already used for another request"),
            LedgerError::Stale {
                req_id_hw,
                within_kept: true,
            } => write!(
                f,
                "stale req_id: at or below {req_id_hw}, the highest decided; never applied"
            ),
            LedgerError::Stale {
                req_id_hw,
                within_kept: false,
            } => write!(
                f,
                "stale req_id: older than the results kept below {req_id_hw}; not applied now"
            ),
            LedgerError::SessionSuperseded => {
                f.write_str("session ended by a newer login: not executed")
            }
            LedgerError::Unavailable(u) => write!(f, "{u}"),
            LedgerError::Lock(e) => write!(f, "ledger lock: {e}"),
        }
    }
}

impl std::error::Error for LedgerError {}

impl From<LockError> for LedgerError {
    fn from(e: LockError) -> Self {
        LedgerError::Lock(e)
    }
}

/// The result of an applied operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// The caller's balance after it.
    pub balance: u64,
    /// Its transaction id.
    pub txn_id: u64,
    /// True when this is a retry answered from the idempotency record, applied earlier.
    pub replayed: bool,
}

/// One transaction as the history returns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnRecord {
    /// Its id.
    pub txn_id: u64,
    /// What it did.
    pub kind: TxnKind,
    /// Debited account (0 for a deposit).
    pub from: u32,
    /// Credited account (0 for a withdrawal).
    pub to: u32,
    /// Amount moved.
    pub amount: u64,
    /// The debited account's balance after it.
    pub from_balance: u64,
    /// The credited account's balance after it.
    pub to_balance: u64,
    /// When it was applied.
    pub time_ms: u64,
}

/// What a transaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TxnKind {
    /// Money in from outside the ledger.
    Deposit = 1,
    /// Money out of the ledger.
    Withdraw = 2,
    /// Money from one account to another.
    Transfer = 3,
}

fn kind_code(k: TxnKind) -> u32 {
    k as u32
}

fn kind_from(code: u32) -> Option<TxnKind> {
    match code {
        1 => Some(TxnKind::Deposit),
        2 => Some(TxnKind::Withdraw),
        3 => Some(TxnKind::Transfer),
        _ => None,
    }
}

/// The ledger's tables inside a segment.
#[derive(Clone, Copy)]
pub(crate) struct Tables<'s> {
    pub(crate) globals: &'s Globals,
    pub(crate) accounts: &'s [Account],
    results: &'s [ResultEntry],
    log: &'s [LogEntry],
    pub(crate) slots: &'s [Slot],
    results_per_user: usize,
    mode: LockMode,
    journal: Journal<'s>,
}

impl<'s> Tables<'s> {
    pub(crate) fn of(seg: &'s Segment) -> Tables<'s> {
        let caps = seg.caps();
        Tables {
            globals: seg.globals(),
            accounts: seg.accounts(),
            results: seg.results(),
            log: seg.log(),
            slots: seg.slots(),
            results_per_user: caps.results_per_user as usize,
            mode: seg.lock_mode(),
            journal: Journal::of(seg),
        }
    }

    fn account(&self, id: u32) -> Result<&'s Account, LedgerError> {
        match self.accounts.get(id as usize) {
            Some(a) if id != 0 && a.exists.load(Ordering::Acquire) == 1 => Ok(a),
            _ => Err(LedgerError::UnknownAccount(id)),
        }
    }

    fn log_entry(&self, txn_id: u64) -> &'s LogEntry {
        &self.log[(txn_id % self.log.len() as u64) as usize]
    }

    /// The entry that holds (or would hold) the outcome of `account`'s `req_id`.
    fn result_entry(&self, account: u32, req_id: u64) -> &'s ResultEntry {
        // A power of two (checked at creation): a mask, not a division, on the hot path.
        let k = self.results_per_user;
        &self.results[account as usize * k + (req_id as usize & (k - 1))]
    }

    /// Records the outcome of (`caller`, `req_id`) and raises the caller's high-water mark.
    /// Called with the caller's lock held, or by a roll-forward that holds it for a dead owner.
    /// The opcode is stored last, so an entry cut short by a kill reads as empty; the mark is
    /// raised after the entry is whole, so a kill between the two leaves an entry that answers
    /// retries and a mark that still lets nothing else through twice.
    #[allow(clippy::too_many_arguments)]
    fn store_result(
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

    /// Stores an intent's absolute values. Idempotent: applying it twice is applying it once.
    fn apply(&self, s: &Slot) {
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
    fn apply_txn(&self, x: &TxnRec) {
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
    fn write_log(&self, x: &TxnRec) {
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

    /// After a lock came back [`Locked::OwnerDied`]: rolls forward every prepared intent that
    /// touches `account` (any account when `None`, for the global lock). Only the dead owner
    /// can have one, because it held the lock the caller now holds.
    fn repair(&self, account: Option<u32>) -> Result<(), LedgerError> {
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
    fn acquire(
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
struct Held<'s> {
    tables: Tables<'s>,
    locks: [Option<&'s RobustMutex>; 2],
    holders: [Option<&'s AtomicU32>; 2],
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

/// One process's handle on the ledger, bound to its slot. Operations take `&mut self`: a slot
/// runs one operation at a time.
pub struct Ledger<'s> {
    t: Tables<'s>,
    users: Users<'s>,
    slot_index: u32,
    /// Durable mode: the `durable` the last operation's answer waits for (see
    /// [`Ledger::take_rests_on`]).
    rests_on: core::cell::Cell<Option<u64>>,
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

    fn slot(&self) -> &'s Slot {
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

    fn lock_accounts(&self, a: u32, b: u32) -> Result<Held<'s>, LedgerError> {
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
    fn check_session(&self, caller: Caller) -> Result<(), LedgerError> {
        match caller.session {
            Some(sid) if self.users.session(caller.user) != Some(sid) => {
                Err(LedgerError::SessionSuperseded)
            }
            _ => Ok(()),
        }
    }

    /// The earlier outcome of (`caller`, `req_id`) if it was decided before, or a refusal if
    /// it can no longer be applied; `None` for a new request. Called with the caller's lock
    /// held, so the answer stays true until the request is decided under the same lock.
    fn decided(
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
    fn refuse(
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

    /// Writes the intent, commits it, applies it, and clears it. Called with the locks held.
    #[allow(clippy::too_many_arguments)]
    fn commit(
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
    fn one_account(
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

/// A slot's intent as its journal record.
fn intent_txn(s: &Slot) -> TxnRec {
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

/// Applies one journal or checkpoint record to a segment being rebuilt (recovery, or the
/// journal writer's private copy). Single-threaded: nothing else uses `seg` meanwhile.
/// Ledger records store absolute values, so the result is the state after the record.
pub fn replay(seg: &Segment, rec: &Record) -> Result<(), String> {
    let t = Tables::of(seg);
    let account = |id: u32| -> Result<&Account, String> {
        match t.accounts.get(id as usize) {
            Some(a) if id != 0 && a.exists.load(Ordering::Relaxed) == 1 => Ok(a),
            _ => Err(format!(
                "record names account {id}, which is not registered"
            )),
        }
    };
    match rec {
        Record::Txn(x) => {
            for id in [x.from, x.to, x.caller] {
                if id != 0 {
                    account(id)?;
                }
            }
            let s = &t.slots[0];
            match kind_from(x.kind) {
                Some(TxnKind::Deposit) => {
                    store_u128(&s.deposits, load_u128(&s.deposits) + u128::from(x.amount))
                }
                Some(TxnKind::Withdraw) => store_u128(
                    &s.withdrawals,
                    load_u128(&s.withdrawals) + u128::from(x.amount),
                ),
                Some(TxnKind::Transfer) => {}
                None => return Err(format!("transaction kind {}", x.kind)),
            }
            t.apply_txn(x);
            if t.globals.txn_seq.load(Ordering::Relaxed) < x.txn_id {
                t.globals.txn_seq.store(x.txn_id, Ordering::Relaxed);
            }
        }
        Record::Log(x) => t.write_log(x),
        Record::Refusal(o) | Record::Outcome(o) => {
            account(o.user)?;
            t.store_result(
                o.user, o.req_id, o.opcode, o.target, o.amount, o.refusal, o.balance, o.txn_id,
            );
        }
        Record::Account(a) => {
            let acct = account(a.id)?;
            acct.balance.store(a.balance, Ordering::Relaxed);
            acct.last_txn_id.store(a.last_txn_id, Ordering::Relaxed);
            acct.req_id_hw.store(a.req_id_hw, Ordering::Relaxed);
        }
        Record::Totals(x) => {
            for (i, s) in t.slots.iter().enumerate() {
                let (d, w) = if i == 0 {
                    (x.deposits, x.withdrawals)
                } else {
                    (0, 0)
                };
                store_u128(&s.deposits, d);
                store_u128(&s.withdrawals, w);
            }
            t.globals.txn_seq.store(x.txn_seq, Ordering::Relaxed);
        }
        Record::User(u) => {
            let users = Users::of(seg);
            let name = core::str::from_utf8(&u.name).map_err(|_| "user name not UTF-8")?;
            let id = users
                .register(name, &u.creds)
                .map_err(|e| format!("user {name}: {e}"))?;
            if id != u.id {
                return Err(format!(
                    "user {name} got id {id}, the journal says {}",
                    u.id
                ));
            }
        }
        Record::CheckpointBegin { .. } | Record::CheckpointEnd { .. } => {}
    }
    Ok(())
}

/// Every record a checkpoint of `seg` holds, in the order [`replay`] takes them: users, then
/// accounts, outcomes, the log ring's transactions (oldest first) and the totals. For a segment
/// nothing else changes meanwhile (the writer's private copy, or a forked snapshot of it).
pub fn checkpoint_records(seg: &Segment, mut emit: impl FnMut(&Record)) {
    let t = Tables::of(seg);
    let users = Users::of(seg);
    let count = users.count();
    for id in 1..=count {
        if let Some(u) = users.journal_record(id) {
            emit(&Record::User(u));
        }
    }
    for id in 1..=count {
        let a = &t.accounts[id as usize];
        emit(&Record::Account(AccountRec {
            id,
            balance: a.balance.load(Ordering::Relaxed),
            last_txn_id: a.last_txn_id.load(Ordering::Relaxed),
            req_id_hw: a.req_id_hw.load(Ordering::Relaxed),
        }));
        let k = t.results_per_user;
        for e in &t.results[id as usize * k..(id as usize + 1) * k] {
            let opcode = e.opcode.load(Ordering::Relaxed);
            if opcode == 0 {
                continue;
            }
            emit(&Record::Outcome(OutcomeRec {
                user: id,
                opcode,
                target: e.target.load(Ordering::Relaxed),
                refusal: e.refusal.load(Ordering::Relaxed),
                req_id: e.req_id.load(Ordering::Relaxed),
                amount: e.amount.load(Ordering::Relaxed),
                balance: e.balance.load(Ordering::Relaxed),
                txn_id: e.txn_id.load(Ordering::Relaxed),
            }));
        }
    }
    let seq = t.globals.txn_seq.load(Ordering::Relaxed);
    let first = seq.saturating_sub(t.log.len() as u64) + 1;
    for id in first..=seq {
        let e = t.log_entry(id);
        if let Some((r, from_prev, to_prev)) = read_entry_with_prev(e, id) {
            emit(&Record::Log(TxnRec {
                kind: kind_code(r.kind),
                from: r.from,
                to: r.to,
                txn_id: id,
                amount: r.amount,
                from_new: r.from_balance,
                to_new: r.to_balance,
                time_ms: r.time_ms,
                from_prev,
                to_prev,
                ..TxnRec::default()
            }));
        }
    }
    let (mut deposits, mut withdrawals) = (0u128, 0u128);
    for s in t.slots {
        deposits += load_u128(&s.deposits);
        withdrawals += load_u128(&s.withdrawals);
    }
    emit(&Record::Totals(TotalsRec {
        deposits,
        withdrawals,
        txn_seq: seq,
    }));
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
fn read_entry_with_prev(e: &LogEntry, txn_id: u64) -> Option<(TxnRecord, u64, u64)> {
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
    fn new() -> SignalsBlocked {
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
fn check_locked(t: &Tables<'_>, users: usize, report: &mut AuditReport) {
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
