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

//! # Where things are
//!
//! This file: the shared layouts (accounts, outcome entries, log entries, slots) and the error
//! and value types. `ops`: the operations; `window`: the exactly-once window; `intent`: locks,
//! intents and their repair; `apply`: storing a decided transaction; `replay`: records in and
//! out; `reads`: lock-free reads and counters; `audit`: the invariants.

#![forbid(unsafe_code)]

mod apply;
mod audit;
mod intent;
mod ops;
mod reads;
mod replay;
mod window;

pub use audit::{audit, fault_injection, AuditReport};
pub(crate) use intent::prepared_intent_at;
pub use intent::{recover_slot, RecoveryReport};
pub use ops::{Caller, Ledger};
pub use reads::{balance, history, read_rests_on, stats, LedgerStats};
pub use replay::{checkpoint_records, replay};
pub use window::{req_id_hw, results_per_user};

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
}
