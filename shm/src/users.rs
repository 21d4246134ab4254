//! Users: the name ↔ id index, the SCRAM credential record, and online state.
//!
//! Registration is serialised by one robust lock; lookups are lock-free. A record is written
//! whole before its id is published in the index, and `users_count` is the commit point: a
//! registration killed halfway is either invisible or, if it reached the index, finished by the
//! next registrant's repair.

#![forbid(unsafe_code)]

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::limits::{ITERATIONS_MAX, ITERATIONS_MIN, NAME_LEN_MAX, SALT_LEN_MAX, SALT_LEN_MIN};

use crate::ledger::Account;
use crate::lock::{LockError, Locked};
use crate::segment::{Globals, Segment, ShmError};
use crate::words::{eq_bytes, index_find, index_insert, load_bytes, store_bytes};

/// One user. Index 0 is unused.
#[repr(C, align(64))]
pub(crate) struct UserRecord {
    name_len: AtomicU32,
    salt_len: AtomicU32,
    iterations: AtomicU32,
    failures: AtomicU32,
    name: [AtomicU64; NAME_LEN_MAX / 8],
    salt: [AtomicU64; SALT_LEN_MAX / 8],
    stored_key: [AtomicU64; 4],
    server_key: [AtomicU64; 4],
    session: AtomicU64,
    last_failure_ms: AtomicU64,
}
crate::layout!(UserRecord, 192, 64);

/// What a server stores to check a SCRAM login: never the password, nor anything that logs in.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Salt, 16..=64 bytes.
    pub salt: Vec<u8>,
    /// PBKDF2 iterations.
    pub iterations: u32,
    /// SHA-256(ClientKey).
    pub stored_key: [u8; 32],
    /// HMAC(SaltedPassword, "Server Key").
    pub server_key: [u8; 32],
}

impl core::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Credentials")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

/// Where a logged-in user's session lives: which worker, which connection on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId {
    /// The worker's index.
    pub worker: u16,
    /// The connection's id on that worker (48 bits).
    pub conn: u64,
}

const CONN_BITS: u32 = 48;

impl SessionId {
    fn pack(self) -> u64 {
        ((u64::from(self.worker) + 1) << CONN_BITS) | (self.conn & ((1 << CONN_BITS) - 1))
    }

    fn unpack(v: u64) -> Option<SessionId> {
        let w = v >> CONN_BITS;
        if w == 0 {
            return None;
        }
        Some(SessionId {
            worker: (w - 1) as u16,
            conn: v & ((1 << CONN_BITS) - 1),
        })
    }
}

/// Why a user operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum UserError {
    /// The name is taken.
    AlreadyExists,
    /// The user table is full.
    Full,
    /// The name is not 1..=32 bytes, the salt not 16..=64, or the iterations out of range.
    Invalid(&'static str),
    /// No such user.
    NotFound,
    /// The journal cannot take the record (disk failing, or behind): nothing was done.
    Unavailable(crate::journal::Unavailable),
    /// A lock failed.
    Lock(LockError),
}

impl core::fmt::Display for UserError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            UserError::AlreadyExists => f.write_str("user name taken"),
            UserError::Full => f.write_str("user table full"),
            UserError::Invalid(what) => write!(f, "invalid {what}"),
            UserError::NotFound => f.write_str("no such user"),
            UserError::Unavailable(u) => write!(f, "{u}"),
            UserError::Lock(e) => write!(f, "users lock: {e}"),
        }
    }
}

impl std::error::Error for UserError {}

impl From<LockError> for UserError {
    fn from(e: LockError) -> Self {
        UserError::Lock(e)
    }
}

/// The users tables of a segment.
#[derive(Clone, Copy)]
pub struct Users<'s> {
    globals: &'s Globals,
    records: &'s [UserRecord],
    index: &'s [AtomicU32],
    accounts: &'s [Account],
    seg: &'s Segment,
}

impl core::fmt::Debug for Users<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Users")
            .field("count", &self.count())
            .finish()
    }
}

impl<'s> Users<'s> {
    /// The users tables of `seg`.
    pub fn of(seg: &'s Segment) -> Users<'s> {
        Users {
            globals: seg.globals(),
            records: seg.user_records(),
            index: seg.user_index(),
            accounts: seg.accounts(),
            seg,
        }
    }

    /// Registered users; their ids are 1..=count.
    pub fn count(&self) -> u32 {
        self.globals.users_count.load(Ordering::Acquire)
    }

    /// The most users the table holds.
    pub fn capacity(&self) -> u32 {
        (self.records.len() - 1) as u32
    }

    fn record(&self, id: u32) -> Option<&'s UserRecord> {
        if id == 0 || id > self.count() {
            return None;
        }
        self.records.get(id as usize)
    }

    /// The id of `name`, without locking.
    pub fn lookup(&self, name: &str) -> Option<u32> {
        index_find(self.index, name.as_bytes(), |id| {
            let r = &self.records[id as usize];
            eq_bytes(
                &r.name,
                r.name_len.load(Ordering::Relaxed) as usize,
                name.as_bytes(),
            )
        })
    }

    /// Registers `name` with `creds`; the new user's account starts at 0.
    pub fn register(&self, name: &str, creds: &Credentials) -> Result<u32, UserError> {
        if name.is_empty() || name.len() > NAME_LEN_MAX {
            return Err(UserError::Invalid("name"));
        }
        if creds.salt.len() < SALT_LEN_MIN || creds.salt.len() > SALT_LEN_MAX {
            return Err(UserError::Invalid("salt"));
        }
        if !(ITERATIONS_MIN..=ITERATIONS_MAX).contains(&creds.iterations) {
            return Err(UserError::Invalid("iterations"));
        }
        let journal = crate::journal::Journal::of(self.seg);
        if journal.enabled() {
            if let Some(u) = journal.unavailable() {
                return Err(UserError::Unavailable(u));
            }
        }
        let lock = &self.globals.users_lock;
        if lock.lock()? == Locked::OwnerDied {
            self.repair();
            lock.mark_consistent()?;
        }
        let result = self.register_locked(name, creds);
        if result.is_ok() && journal.enabled() {
            // Journaled by the lock itself: it appends every user not journaled yet (so a
            // registrant killed right here is journaled by the next appender, whoever it is).
            if let Err(e) = journal.lock() {
                let _ = lock.unlock();
                return Err(e.into());
            }
        }
        lock.unlock()?;
        result
    }

    /// User `id` as the journal records it.
    pub(crate) fn journal_record(&self, id: u32) -> Option<crate::journal::UserRec> {
        let r = self.record(id)?;
        let mut name = [0u8; NAME_LEN_MAX];
        let len = load_bytes(
            &r.name,
            r.name_len.load(Ordering::Relaxed) as usize,
            &mut name,
        );
        Some(crate::journal::UserRec {
            id,
            name: name[..len].to_vec(),
            creds: self.credentials(id)?,
        })
    }

    fn register_locked(&self, name: &str, creds: &Credentials) -> Result<u32, UserError> {
        if self.lookup(name).is_some() {
            return Err(UserError::AlreadyExists);
        }
        let id = self.count() + 1;
        if id as usize >= self.records.len() {
            return Err(UserError::Full);
        }
        let r = &self.records[id as usize];
        store_bytes(&r.name, name.as_bytes());
        r.name_len.store(name.len() as u32, Ordering::Relaxed);
        store_bytes(&r.salt, &creds.salt);
        r.salt_len.store(creds.salt.len() as u32, Ordering::Relaxed);
        r.iterations.store(creds.iterations, Ordering::Relaxed);
        store_bytes(&r.stored_key, &creds.stored_key);
        store_bytes(&r.server_key, &creds.server_key);
        r.session.store(0, Ordering::Relaxed);
        r.failures.store(0, Ordering::Relaxed);
        // Publish: the index slot makes the record findable; the count commits it.
        index_insert(self.index, name.as_bytes(), id);
        self.commit(id);
        Ok(id)
    }

    fn commit(&self, id: u32) {
        self.globals.users_count.store(id, Ordering::Release);
        self.accounts[id as usize]
            .exists
            .store(1, Ordering::Release);
    }

    /// After the users lock came back OwnerDied: a registration that reached the index is
    /// finished; one that did not is forgotten (its record is overwritten by the next).
    fn repair(&self) {
        let id = self.count() + 1;
        let Some(r) = self.records.get(id as usize) else {
            return;
        };
        let mut name = [0u8; NAME_LEN_MAX];
        let len = load_bytes(
            &r.name,
            r.name_len.load(Ordering::Relaxed) as usize,
            &mut name,
        );
        let published = core::str::from_utf8(&name[..len])
            .ok()
            .and_then(|n| index_find(self.index, n.as_bytes(), |x| x == id))
            .is_some();
        if published {
            self.commit(id);
        }
    }

    /// The user's name, copied into `out`; returns its length, or `None` for an unknown id.
    pub fn name_into(&self, id: u32, out: &mut [u8; NAME_LEN_MAX]) -> Option<usize> {
        let r = self.record(id)?;
        Some(load_bytes(
            &r.name,
            r.name_len.load(Ordering::Relaxed) as usize,
            out,
        ))
    }

    /// The user's name, owned.
    pub fn name(&self, id: u32) -> Option<String> {
        let mut buf = [0u8; NAME_LEN_MAX];
        let len = self.name_into(id, &mut buf)?;
        String::from_utf8(buf[..len].to_vec()).ok()
    }

    /// The user's stored credentials.
    pub fn credentials(&self, id: u32) -> Option<Credentials> {
        let r = self.record(id)?;
        let mut salt = [0u8; SALT_LEN_MAX];
        let len = load_bytes(
            &r.salt,
            r.salt_len.load(Ordering::Relaxed) as usize,
            &mut salt,
        );
        let mut stored_key = [0u8; 32];
        let mut server_key = [0u8; 32];
        load_bytes(&r.stored_key, 32, &mut stored_key);
        load_bytes(&r.server_key, 32, &mut server_key);
        Some(Credentials {
            salt: salt[..len].to_vec(),
            iterations: r.iterations.load(Ordering::Relaxed),
            stored_key,
            server_key,
        })
    }

    /// Marks the user online at `session`; returns the session it replaces, if any (the
    /// duplicate-login policy: the newer session wins and the caller ends the older one).
    pub fn set_online(&self, id: u32, session: SessionId) -> Result<Option<SessionId>, UserError> {
        let r = self.record(id).ok_or(UserError::NotFound)?;
        Ok(SessionId::unpack(
            r.session.swap(session.pack(), Ordering::AcqRel),
        ))
    }

    /// Marks the user offline if `session` is still theirs; false if a newer one replaced it.
    pub fn set_offline(&self, id: u32, session: SessionId) -> bool {
        self.record(id).is_some_and(|r| {
            r.session
                .compare_exchange(session.pack(), 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        })
    }

    /// The user's session, if online.
    pub fn session(&self, id: u32) -> Option<SessionId> {
        SessionId::unpack(self.record(id)?.session.load(Ordering::Acquire))
    }

    /// Marks offline every user whose session is on `worker` (which died); returns how many.
    pub fn clear_worker(&self, worker: u16) -> usize {
        let mut n = 0;
        for id in 1..=self.count() {
            let r = &self.records[id as usize];
            let v = r.session.load(Ordering::Acquire);
            if SessionId::unpack(v).is_some_and(|s| s.worker == worker)
                && r.session
                    .compare_exchange(v, 0, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                n += 1;
            }
        }
        n
    }

    /// Online users with ids above `after_id`, ascending, at most `limit`.
    pub fn online_after(&self, after_id: u32, limit: usize) -> Vec<u32> {
        (after_id.saturating_add(1)..=self.count())
            .filter(|&id| self.records[id as usize].session.load(Ordering::Relaxed) != 0)
            .take(limit)
            .collect()
    }

    /// Records a failed login; returns the consecutive failures so far.
    pub fn note_login_failure(&self, id: u32, now_ms: u64) -> u32 {
        self.record(id).map_or(0, |r| {
            r.last_failure_ms.store(now_ms, Ordering::Relaxed);
            r.failures.fetch_add(1, Ordering::Relaxed).saturating_add(1)
        })
    }

    /// Clears the failure count after a successful login.
    pub fn note_login_success(&self, id: u32) {
        if let Some(r) = self.record(id) {
            r.failures.store(0, Ordering::Relaxed);
        }
    }

    /// Consecutive failed logins and the time of the last one.
    pub fn login_failures(&self, id: u32) -> (u32, u64) {
        self.record(id).map_or((0, 0), |r| {
            (
                r.failures.load(Ordering::Relaxed),
                r.last_failure_ms.load(Ordering::Relaxed),
            )
        })
    }
}

/// Fails unless `seg` is writable; registration and sessions write.
pub fn writable_users(seg: &Segment) -> Result<Users<'_>, ShmError> {
    seg.require_writable()?;
    Ok(Users::of(seg))
}
