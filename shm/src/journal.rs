//! The journal's shared-memory side: a ring of records in commit order that the journal writer
//! process copies to disk, and the words that say how far the disk has them (`durable`).
//!
//! # Order, and why it is a valid serial order of the ledger
//!
//! A record gets its log sequence number (LSN) from `head` under the journal lock, and a ledger
//! operation appends its record while it still holds the account locks it changed. An operation
//! that depends on another (it moves money the other brought in) takes one of the same locks
//! after the other released it, so its LSN is larger: replaying records in LSN order replays a
//! serial order of the ledger. The lock is the innermost one (account locks, then the recovery
//! lock, then this), held for a copy of at most 256 bytes.
//!
//! # No holes
//!
//! LSNs are handed out only under the journal lock, one per appended record, so a process killed
//! anywhere leaves no gap the writer would wait on forever:
//! - a ledger operation marks its intent `PREPARED` (its commit point, with the LSN it takes)
//!   and appends its record in one critical section; whoever next takes the lock after it died
//!   there (the lock comes back owner-died) appends every prepared intent whose LSN is `head`;
//! - a registration is journaled after the user is committed: every critical section first
//!   appends users registered but not yet journaled (`journaled_users` < `users_count`), so a
//!   registrant killed between the two is journaled by the next appender, before anything that
//!   could depend on the new user.
//!
//! Transaction ids are another matter: they are taken before the commit point and a process
//! killed between the two leaves an unused one. Nothing waits on them.
//!
//! # Waiting for the disk
//!
//! A worker answers a request that changed or read the ledger only once `durable` has reached
//! the `head` it saw after the request was decided (everything appended before it is on stable
//! storage). The writer bumps `durable` after each fdatasync and wakes the workers.

#![forbid(unsafe_code)]

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::lock::{LockError, Locked, RobustMutex};
use crate::segment::Segment;

/// Records the ring holds: those appended but not yet durable. Power of two.
pub const RING: usize = 1 << 14;
/// Ring entries kept free for the appends a critical section owes before its own (a dead
/// owner's prepared intent, registrations not yet journaled): ordinary appends stop short of it.
const RESERVE: u64 = 1024;
/// Words in one ring entry.
pub const WORDS: usize = 32;
/// Sync latencies kept for the percentiles `stats` shows.
pub const SYNC_SAMPLES: usize = 1024;

/// Durability modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No journal: nothing survives a full restart (the behaviour before the journal).
    Off = 0,
    /// Every ledger and registration answer waits until its record is on stable storage.
    Sync = 1,
}

/// The journal's control words. One per segment.
#[repr(C, align(128))]
pub(crate) struct JournalCtl {
    /// Serialises appends; robust, repaired by the next taker (see the module doc).
    pub(crate) lock: RobustMutex,
    mode: AtomicU32,
    /// errno of the writer's last failed write or sync; 0 while writes succeed.
    error: AtomicU32,
    /// Users journaled so far (ids 1..=journaled_users).
    journaled_users: AtomicU32,
    /// The writer process's pid.
    writer_pid: AtomicU32,
    /// The next LSN to hand out; records below it are in the ring or on disk.
    head: AtomicU64,
    _pad: [u8; 64],
    /// Records below this LSN are on stable storage. Written by the writer only.
    durable: AtomicU64,
    /// Set by the writer before it sleeps; an appender that sees it wakes the writer (futex).
    writer_sleeping: AtomicU32,
    _pad2: [u8; 116],
    /// Figures for `stats`, written by the writer.
    records: AtomicU64,
    bytes: AtomicU64,
    syncs: AtomicU64,
    sync_ns: AtomicU64,
    /// Appends refused because the journal was failing or full.
    refused: AtomicU64,
    checkpoints: AtomicU64,
    /// Times the journal lock came back owner-died (a process killed inside it).
    repairs: AtomicU64,
    /// Wall ms of the last checkpoint, and the LSN it covers.
    checkpoint_ms: AtomicU64,
    checkpoint_lsn: AtomicU64,
    sync_sample_next: AtomicU64,
    sync_us: [AtomicU32; SYNC_SAMPLES],
}
crate::layout!(JournalCtl, 4480, 128);

/// One ring entry: a record as words (see [`Record::to_words`]).
#[repr(C)]
pub(crate) struct RingEntry {
    w: [AtomicU64; WORDS],
}
crate::layout!(RingEntry, 256, 8);

/// Why a record could not be appended. Nothing was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// The writer's last write or sync failed with this errno (disk full, IO error).
    Failing(u32),
    /// The ring is full: the disk is behind.
    Full,
}

impl core::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Unavailable::Failing(e) => write!(
                f,
                "the journal cannot write ({}): nothing applied, retry later",
                nix::errno::Errno::from_raw(*e as i32).desc()
            ),
            Unavailable::Full => f.write_str("the journal is behind: nothing applied, retry later"),
        }
    }
}

/// A transaction as the journal records it: everything replay needs to redo it and to answer
/// its retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TxnRec {
    /// 1 deposit, 2 withdraw, 3 transfer.
    pub kind: u32,
    /// The request's opcode (for the outcome table).
    pub opcode: u32,
    /// The user who asked.
    pub caller: u32,
    /// Debited account, 0 for a deposit.
    pub from: u32,
    /// Credited account, 0 for a withdrawal.
    pub to: u32,
    /// The request's target (recipient id), for the outcome table.
    pub target: u32,
    /// Transaction id.
    pub txn_id: u64,
    /// Amount.
    pub amount: u64,
    /// Debited account's balance after.
    pub from_new: u64,
    /// Credited account's balance after.
    pub to_new: u64,
    /// Wall ms.
    pub time_ms: u64,
    /// Previous transaction of `from` (history chain).
    pub from_prev: u64,
    /// Previous transaction of `to`.
    pub to_prev: u64,
    /// The caller's req_id.
    pub req_id: u64,
}

/// One outcome-table entry (a refusal decided under the lock, or a checkpointed outcome).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OutcomeRec {
    /// The user.
    pub user: u32,
    /// The request's opcode.
    pub opcode: u32,
    /// Its target.
    pub target: u32,
    /// Which refusal (0: applied).
    pub refusal: u32,
    /// Its req_id.
    pub req_id: u64,
    /// Its amount.
    pub amount: u64,
    /// The balance answered.
    pub balance: u64,
    /// The txn id answered (0 for a refusal).
    pub txn_id: u64,
}

/// A registered user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRec {
    /// Id.
    pub id: u32,
    /// Name.
    pub name: Vec<u8>,
    /// SCRAM record.
    pub creds: crate::users::Credentials,
}

/// One account's state (checkpoints).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AccountRec {
    /// Id.
    pub id: u32,
    /// Balance.
    pub balance: u64,
    /// Newest transaction touching it.
    pub last_txn_id: u64,
    /// Highest decided req_id.
    pub req_id_hw: u64,
}

/// The ledger's totals (checkpoints).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TotalsRec {
    /// Money deposited, ever.
    pub deposits: u128,
    /// Money withdrawn, ever.
    pub withdrawals: u128,
    /// Last txn id handed out.
    pub txn_seq: u64,
}

/// A journal or checkpoint record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// An applied ledger operation.
    Txn(TxnRec),
    /// A refusal decided under the lock (a retry must get it again).
    Refusal(OutcomeRec),
    /// A registration.
    User(UserRec),
    /// Checkpoint: an account.
    Account(AccountRec),
    /// Checkpoint: an outcome-table entry.
    Outcome(OutcomeRec),
    /// Checkpoint: a transaction still in the log ring (history).
    Log(TxnRec),
    /// Checkpoint: totals.
    Totals(TotalsRec),
    /// Checkpoint: its first record: the LSN it covers up to (exclusive).
    CheckpointBegin {
        /// Records below this LSN are in the checkpoint.
        next_lsn: u64,
    },
    /// Checkpoint: its last record, with the number of records before it.
    CheckpointEnd {
        /// Records in the checkpoint before this one.
        count: u64,
    },
}

const T_TXN: u64 = 1;
const T_REFUSAL: u64 = 2;
const T_USER: u64 = 3;
const T_ACCOUNT: u64 = 4;
const T_OUTCOME: u64 = 5;
const T_LOG: u64 = 6;
const T_TOTALS: u64 = 7;
const T_CP_BEGIN: u64 = 8;
const T_CP_END: u64 = 9;

fn pair(a: u32, b: u32) -> u64 {
    (u64::from(a) << 32) | u64::from(b)
}

fn unpair(w: u64) -> (u32, u32) {
    ((w >> 32) as u32, w as u32)
}

fn pack_bytes(out: &mut [u64], bytes: &[u8]) {
    for (i, chunk) in bytes.chunks(8).enumerate() {
        let mut b = [0u8; 8];
        b[..chunk.len()].copy_from_slice(chunk);
        out[i] = u64::from_le_bytes(b);
    }
}

fn unpack_bytes(words: &[u64], len: usize) -> Vec<u8> {
    words
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .take(len)
        .collect()
}

fn txn_words(t: &TxnRec, w: &mut [u64; WORDS]) -> usize {
    w[1] = pair(t.kind, t.opcode);
    w[2] = pair(t.caller, t.from);
    w[3] = pair(t.to, t.target);
    w[4] = t.txn_id;
    w[5] = t.amount;
    w[6] = t.from_new;
    w[7] = t.to_new;
    w[8] = t.time_ms;
    w[9] = t.from_prev;
    w[10] = t.to_prev;
    w[11] = t.req_id;
    12
}

fn txn_from(w: &[u64]) -> TxnRec {
    let (kind, opcode) = unpair(w[1]);
    let (caller, from) = unpair(w[2]);
    let (to, target) = unpair(w[3]);
    TxnRec {
        kind,
        opcode,
        caller,
        from,
        to,
        target,
        txn_id: w[4],
        amount: w[5],
        from_new: w[6],
        to_new: w[7],
        time_ms: w[8],
        from_prev: w[9],
        to_prev: w[10],
        req_id: w[11],
    }
}

fn outcome_words(o: &OutcomeRec, w: &mut [u64; WORDS]) -> usize {
    w[1] = pair(o.user, o.opcode);
    w[2] = pair(o.target, o.refusal);
    w[3] = o.req_id;
    w[4] = o.amount;
    w[5] = o.balance;
    w[6] = o.txn_id;
    7
}

fn outcome_from(w: &[u64]) -> OutcomeRec {
    let (user, opcode) = unpair(w[1]);
    let (target, refusal) = unpair(w[2]);
    OutcomeRec {
        user,
        opcode,
        target,
        refusal,
        req_id: w[3],
        amount: w[4],
        balance: w[5],
        txn_id: w[6],
    }
}

/// Words a record of type `ty` takes, type word included; `None` for an unknown type.
fn words_for(ty: u64) -> Option<usize> {
    Some(match ty {
        T_TXN | T_LOG => 12,
        T_REFUSAL | T_OUTCOME => 7,
        T_USER => 23,
        T_ACCOUNT => 5,
        T_TOTALS => 6,
        T_CP_BEGIN | T_CP_END => 2,
        _ => return None,
    })
}

impl Record {
    /// The record as words, the first its type; returns how many are used.
    pub fn to_words(&self, w: &mut [u64; WORDS]) -> usize {
        let n = match self {
            Record::Txn(t) => {
                w[0] = T_TXN;
                txn_words(t, w)
            }
            Record::Log(t) => {
                w[0] = T_LOG;
                txn_words(t, w)
            }
            Record::Refusal(o) => {
                w[0] = T_REFUSAL;
                outcome_words(o, w)
            }
            Record::Outcome(o) => {
                w[0] = T_OUTCOME;
                outcome_words(o, w)
            }
            Record::User(u) => {
                w[0] = T_USER;
                w[1] = pair(u.id, u.creds.iterations);
                w[2] = pair(u.name.len() as u32, u.creds.salt.len() as u32);
                w[3..23].fill(0);
                pack_bytes(&mut w[3..7], &u.name);
                pack_bytes(&mut w[7..15], &u.creds.salt);
                pack_bytes(&mut w[15..19], &u.creds.stored_key);
                pack_bytes(&mut w[19..23], &u.creds.server_key);
                23
            }
            Record::Account(a) => {
                w[0] = T_ACCOUNT;
                w[1] = u64::from(a.id);
                w[2] = a.balance;
                w[3] = a.last_txn_id;
                w[4] = a.req_id_hw;
                5
            }
            Record::Totals(t) => {
                w[0] = T_TOTALS;
                w[1] = t.deposits as u64;
                w[2] = (t.deposits >> 64) as u64;
                w[3] = t.withdrawals as u64;
                w[4] = (t.withdrawals >> 64) as u64;
                w[5] = t.txn_seq;
                6
            }
            Record::CheckpointBegin { next_lsn } => {
                w[0] = T_CP_BEGIN;
                w[1] = *next_lsn;
                2
            }
            Record::CheckpointEnd { count } => {
                w[0] = T_CP_END;
                w[1] = *count;
                2
            }
        };
        debug_assert!(n <= WORDS);
        n
    }

    /// Decodes words written by [`Record::to_words`]. Checks the type, the length and the
    /// lengths inside; the checksum around them is the caller's.
    pub fn from_words(w: &[u64]) -> Result<Record, &'static str> {
        let ty = *w.first().ok_or("empty record")?;
        let n = words_for(ty).ok_or("unknown record type")?;
        if w.len() != n {
            return Err("record length does not match its type");
        }
        Ok(match ty {
            T_TXN => Record::Txn(txn_from(w)),
            T_LOG => Record::Log(txn_from(w)),
            T_REFUSAL => Record::Refusal(outcome_from(w)),
            T_OUTCOME => Record::Outcome(outcome_from(w)),
            T_USER => {
                let (id, iterations) = unpair(w[1]);
                let (name_len, salt_len) = unpair(w[2]);
                let (name_len, salt_len) = (name_len as usize, salt_len as usize);
                if name_len == 0 || name_len > 32 || salt_len > 64 {
                    return Err("user record with a bad name or salt length");
                }
                let mut stored_key = [0u8; 32];
                stored_key.copy_from_slice(&unpack_bytes(&w[15..19], 32));
                let mut server_key = [0u8; 32];
                server_key.copy_from_slice(&unpack_bytes(&w[19..23], 32));
                Record::User(UserRec {
                    id,
                    name: unpack_bytes(&w[3..7], name_len),
                    creds: crate::users::Credentials {
                        salt: unpack_bytes(&w[7..15], salt_len),
                        iterations,
                        stored_key,
                        server_key,
                    },
                })
            }
            T_ACCOUNT => Record::Account(AccountRec {
                id: w[1] as u32,
                balance: w[2],
                last_txn_id: w[3],
                req_id_hw: w[4],
            }),
            T_TOTALS => Record::Totals(TotalsRec {
                deposits: u128::from(w[1]) | (u128::from(w[2]) << 64),
                withdrawals: u128::from(w[3]) | (u128::from(w[4]) << 64),
                txn_seq: w[5],
            }),
            T_CP_BEGIN => Record::CheckpointBegin { next_lsn: w[1] },
            _ => Record::CheckpointEnd { count: w[1] },
        })
    }
}

/// The journal's tables in a segment.
#[derive(Clone, Copy)]
pub(crate) struct Journal<'s> {
    pub(crate) seg: &'s Segment,
    pub(crate) ctl: &'s JournalCtl,
    ring: &'s [RingEntry],
}

impl<'s> Journal<'s> {
    pub(crate) fn of(seg: &'s Segment) -> Journal<'s> {
        Journal {
            seg,
            ctl: seg.journal_ctl(),
            ring: seg.journal_ring(),
        }
    }

    /// The next LSN to hand out.
    pub(crate) fn head(&self) -> u64 {
        self.ctl.head.load(Ordering::Acquire)
    }

    /// True when records must be appended.
    pub(crate) fn enabled(&self) -> bool {
        self.ctl.mode.load(Ordering::Relaxed) == Mode::Sync as u32
    }

    /// Takes the journal lock, owing first what a dead owner and unjournaled registrations left.
    pub(crate) fn lock(&self) -> Result<Appender<'s>, LockError> {
        let outcome = self.ctl.lock.lock()?;
        let a = Appender { j: *self };
        if outcome == Locked::OwnerDied {
            self.ctl.repairs.fetch_add(1, Ordering::Relaxed);
            // The dead owner may have marked an intent prepared with LSN `head` and not bumped
            // `head`: append it now, before anything else gets that LSN.
            let head = self.ctl.head.load(Ordering::Relaxed);
            if let Some(rec) = crate::ledger::prepared_intent_at(self.seg, head) {
                a.push(&rec);
            }
            self.ctl.lock.mark_consistent()?;
        }
        let users = crate::users::Users::of(self.seg);
        loop {
            let next = self.ctl.journaled_users.load(Ordering::Relaxed) + 1;
            if next > users.count() {
                break;
            }
            if let Some(rec) = users.journal_record(next) {
                a.push(&Record::User(rec));
            }
            self.ctl.journaled_users.store(next, Ordering::Relaxed);
        }
        Ok(a)
    }

    /// Why an append would be refused now, checked without the lock (the appender checks again).
    pub(crate) fn unavailable(&self) -> Option<Unavailable> {
        match self.ctl.error.load(Ordering::Relaxed) {
            0 => None,
            e => Some(Unavailable::Failing(e)),
        }
    }
}

/// The journal lock, held; appends records. Unlocks when dropped.
pub(crate) struct Appender<'s> {
    j: Journal<'s>,
}

impl Appender<'_> {
    /// The LSN the next record gets.
    pub(crate) fn head(&self) -> u64 {
        self.j.ctl.head.load(Ordering::Relaxed)
    }

    /// Whether an ordinary append may go ahead now.
    pub(crate) fn check(&self) -> Result<(), Unavailable> {
        if let Some(u) = self.j.unavailable() {
            self.j.ctl.refused.fetch_add(1, Ordering::Relaxed);
            return Err(u);
        }
        let in_ring = self.head() - self.j.ctl.durable.load(Ordering::Acquire);
        if in_ring + 1 + RESERVE > RING as u64 {
            self.j.ctl.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Unavailable::Full);
        }
        Ok(())
    }

    /// Appends `rec` at LSN `head` and publishes it.
    pub(crate) fn push(&self, rec: &Record) {
        let lsn = self.head();
        let mut w = [0u64; WORDS];
        let n = rec.to_words(&mut w);
        let e = &self.j.ring[(lsn as usize) & (RING - 1)];
        for (slot, v) in e.w.iter().zip(&w[..n]) {
            slot.store(*v, Ordering::Relaxed);
        }
        // The writer reads entries below `head` after an Acquire load of it.
        self.j.ctl.head.store(lsn + 1, Ordering::Release);
    }
}

impl Drop for Appender<'_> {
    fn drop(&mut self) {
        let _ = self.j.ctl.lock.unlock();
        // Wake the writer if it sleeps. The writer stores its flag, then reads `head`; this
        // side stored `head`, then reads the flag: the fence keeps that store before this load
        // (a store followed by a load may otherwise pass it), so one of the two sees the other.
        core::sync::atomic::fence(Ordering::SeqCst);
        let ctl = self.j.ctl;
        if ctl.writer_sleeping.load(Ordering::SeqCst) == 1
            && ctl.writer_sleeping.swap(0, Ordering::SeqCst) == 1
        {
            crate::wake::wake_word(&ctl.writer_sleeping);
        }
    }
}

// ---- The public face: for the server's workers, the writer, recovery and stats. ----

/// Turns the journal on or off. Set by the master after recovery, before workers start.
pub fn set_mode(seg: &Segment, mode: Mode) {
    seg.journal_ctl().mode.store(mode as u32, Ordering::Release);
}

/// The mode in force.
pub fn mode(seg: &Segment) -> Mode {
    if seg.journal_ctl().mode.load(Ordering::Acquire) == Mode::Sync as u32 {
        Mode::Sync
    } else {
        Mode::Off
    }
}

/// Sets the LSN the ring starts at (recovery's next LSN) and marks every user journaled.
pub fn start_at(seg: &Segment, next_lsn: u64) {
    let c = seg.journal_ctl();
    c.head.store(next_lsn, Ordering::Release);
    c.durable.store(next_lsn, Ordering::Release);
    c.journaled_users
        .store(crate::users::Users::of(seg).count(), Ordering::Release);
}

/// The next LSN to be handed out: a request decided now is durable once `durable` reaches it.
pub fn head(seg: &Segment) -> u64 {
    seg.journal_ctl().head.load(Ordering::Acquire)
}

/// Records below this are on stable storage.
pub fn durable(seg: &Segment) -> u64 {
    seg.journal_ctl().durable.load(Ordering::Acquire)
}

/// Why ledger writes and registrations are refused now, if they are.
pub fn unavailable(seg: &Segment) -> Option<Unavailable> {
    let j = Journal::of(seg);
    if !j.enabled() {
        return None;
    }
    j.unavailable()
}

/// Copies the records in `[from, head)` (at most `max`) into `out`, in LSN order; returns the
/// LSN after the last one copied. For the writer, which alone moves `durable`.
pub fn read_pending(seg: &Segment, from: u64, max: usize, out: &mut Vec<(u64, Record)>) -> u64 {
    let j = Journal::of(seg);
    let head = j.ctl.head.load(Ordering::Acquire);
    let end = head.min(from + max as u64);
    for lsn in from..end {
        let e = &j.ring[(lsn as usize) & (RING - 1)];
        let mut w = [0u64; WORDS];
        for (d, s) in w.iter_mut().zip(&e.w) {
            *d = s.load(Ordering::Relaxed);
        }
        let n = words_for(w[0]).unwrap_or(1);
        // Entries are written only by appenders under the lock, whole, before `head` moved
        // past them; a decode failure is a bug, reported rather than hidden.
        match Record::from_words(&w[..n]) {
            Ok(r) => out.push((lsn, r)),
            Err(e) => panic!("journal ring entry {lsn} undecodable: {e}"),
        }
    }
    end
}

/// The writer: records below `lsn` are durable; wakes nothing (the caller wakes the workers).
pub fn set_durable(seg: &Segment, lsn: u64) {
    seg.journal_ctl().durable.store(lsn, Ordering::Release);
}

/// The writer: the last write or sync failed with `errno` (0: writes succeed again).
pub fn set_error(seg: &Segment, errno: u32) {
    seg.journal_ctl().error.store(errno, Ordering::Release);
}

/// The writer's pid (0: none running).
pub fn set_writer_pid(seg: &Segment, pid: u32) {
    seg.journal_ctl().writer_pid.store(pid, Ordering::Release);
}

/// The writer: sleeps until a record is appended past `written`, or `timeout`.
pub fn writer_wait(seg: &Segment, written: u64, timeout: std::time::Duration) {
    let c = seg.journal_ctl();
    c.writer_sleeping.store(1, Ordering::SeqCst);
    if c.head.load(Ordering::SeqCst) != written {
        c.writer_sleeping.store(0, Ordering::SeqCst);
        return;
    }
    crate::wake::wait_word(&c.writer_sleeping, 1, timeout);
    c.writer_sleeping.store(0, Ordering::SeqCst);
}

/// The writer: one batch written and synced.
pub fn note_sync(seg: &Segment, records: u64, bytes: u64, sync_ns: u64) {
    let c = seg.journal_ctl();
    c.records.fetch_add(records, Ordering::Relaxed);
    c.bytes.fetch_add(bytes, Ordering::Relaxed);
    c.syncs.fetch_add(1, Ordering::Relaxed);
    c.sync_ns.fetch_add(sync_ns, Ordering::Relaxed);
    let i = c.sync_sample_next.fetch_add(1, Ordering::Relaxed) as usize % SYNC_SAMPLES;
    c.sync_us[i].store(
        (sync_ns / 1000).min(u64::from(u32::MAX)) as u32,
        Ordering::Relaxed,
    );
}

/// The writer: a checkpoint covering records below `lsn` is in place.
pub fn note_checkpoint(seg: &Segment, lsn: u64, wall_ms: u64) {
    let c = seg.journal_ctl();
    c.checkpoints.fetch_add(1, Ordering::Relaxed);
    c.checkpoint_lsn.store(lsn, Ordering::Relaxed);
    c.checkpoint_ms.store(wall_ms, Ordering::Relaxed);
}

/// The journal's figures, for `stats`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JournalStats {
    /// Durability mode (`sync` or `off`).
    pub mode: &'static str,
    /// The writer's pid.
    pub writer_pid: u32,
    /// errno of the failing write, 0 when healthy.
    pub error: u32,
    /// Next LSN.
    pub head: u64,
    /// Durable below this.
    pub durable: u64,
    /// Records written.
    pub records: u64,
    /// Bytes written.
    pub bytes: u64,
    /// fdatasyncs done.
    pub syncs: u64,
    /// Time spent in them.
    pub sync_ns: u64,
    /// Appends refused (failing or full).
    pub refused: u64,
    /// Checkpoints written.
    pub checkpoints: u64,
    /// Times the journal lock was taken over from a process killed inside it.
    pub repairs: u64,
    /// Wall ms of the last one (0: none yet).
    pub checkpoint_ms: u64,
    /// LSN it covers.
    pub checkpoint_lsn: u64,
    /// The last syncs' latencies in µs (up to [`SYNC_SAMPLES`]), unsorted.
    pub sync_us: Vec<u32>,
}

/// Reads the journal's figures; works on a read-only segment.
pub fn stats(seg: &Segment) -> JournalStats {
    let c = seg.journal_ctl();
    let n = (c.sync_sample_next.load(Ordering::Relaxed) as usize).min(SYNC_SAMPLES);
    JournalStats {
        mode: match mode(seg) {
            Mode::Sync => "sync",
            Mode::Off => "none",
        },
        writer_pid: c.writer_pid.load(Ordering::Relaxed),
        error: c.error.load(Ordering::Relaxed),
        head: c.head.load(Ordering::Relaxed),
        durable: c.durable.load(Ordering::Relaxed),
        records: c.records.load(Ordering::Relaxed),
        bytes: c.bytes.load(Ordering::Relaxed),
        syncs: c.syncs.load(Ordering::Relaxed),
        sync_ns: c.sync_ns.load(Ordering::Relaxed),
        refused: c.refused.load(Ordering::Relaxed),
        checkpoints: c.checkpoints.load(Ordering::Relaxed),
        repairs: c.repairs.load(Ordering::Relaxed),
        checkpoint_ms: c.checkpoint_ms.load(Ordering::Relaxed),
        checkpoint_lsn: c.checkpoint_lsn.load(Ordering::Relaxed),
        sync_us: c.sync_us[..n]
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_record_kind_round_trips_through_words() {
        let creds = crate::users::Credentials {
            salt: (0..20).collect(),
            iterations: 4096,
            stored_key: [7; 32],
            server_key: [9; 32],
        };
        let txn = TxnRec {
            kind: 3,
            opcode: 0x23,
            caller: 5,
            from: 5,
            to: 6,
            target: 6,
            txn_id: 77,
            amount: u64::MAX,
            from_new: 1,
            to_new: 2,
            time_ms: 3,
            from_prev: 4,
            to_prev: 5,
            req_id: 6,
        };
        let out = OutcomeRec {
            user: 1,
            opcode: 2,
            target: 3,
            refusal: 1,
            req_id: 9,
            amount: 10,
            balance: 11,
            txn_id: 0,
        };
        for rec in [
            Record::Txn(txn),
            Record::Log(txn),
            Record::Refusal(out),
            Record::Outcome(out),
            Record::User(UserRec {
                id: 42,
                name: b"a-name-of-thirty-two-bytes-long!".to_vec(),
                creds,
            }),
            Record::Account(AccountRec {
                id: 3,
                balance: 4,
                last_txn_id: 5,
                req_id_hw: 6,
            }),
            Record::Totals(TotalsRec {
                deposits: u128::MAX - 1,
                withdrawals: 1 << 70,
                txn_seq: 8,
            }),
            Record::CheckpointBegin { next_lsn: 5 },
            Record::CheckpointEnd { count: 6 },
        ] {
            let mut w = [0u64; WORDS];
            let n = rec.to_words(&mut w);
            assert_eq!(Record::from_words(&w[..n]).expect("decodes"), rec);
            assert!(
                Record::from_words(&w[..n - 1]).is_err(),
                "{rec:?} cut short"
            );
        }
        let mut w = [0u64; WORDS];
        w[0] = 99;
        assert_eq!(Record::from_words(&w[..2]), Err("unknown record type"));
    }
}
