//! The segment: one POSIX shared-memory object per server instance, its header, its layout, and
//! its lifecycle (create, attach, stale detection, unlink).
//!
//! The layout is computed from the [`Capacities`] alone, so every process that reads the header
//! finds every table at the same offset. Nothing is allocated after creation: every table has a
//! fixed number of entries, and a full table is an error the caller turns into a status.

use core::fmt;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use memmap2::{Mmap, MmapMut, MmapOptions};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use crate::cluster::ClusterCtl;
use crate::journal::{JournalCtl, RingEntry};
use crate::ledger::{Account, LogEntry, ResultEntry, Slot};
use crate::lock::RobustMutex;
use crate::metrics::WorkerMetrics;
use crate::rooms::{Member, Room, RoomEvent};
use crate::users::UserRecord;

/// `"NSSHM\0"` and the layout version in the low bytes.
pub const MAGIC: u64 = 0x4E53_5348_4D00_0000;
/// Bumped whenever any shared struct changes; a tool built for another layout refuses to attach.
pub const LAYOUT_VERSION: u32 = 8;

/// Entries of a cluster node's outbox (workers to the bridge); a power of two.
pub const OUTBOX_RING: usize = 1024;

/// How the ledger serialises operations. Fixed when the segment is created: every process must
/// use the same one, or they would not exclude each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// One lock per account, two taken in (min, max) order for a transfer.
    Account,
    /// One lock for the whole ledger: the "before" of the per-account comparison.
    Global,
}

impl LockMode {
    fn to_u32(self) -> u32 {
        match self {
            LockMode::Account => 1,
            LockMode::Global => 2,
        }
    }

    fn from_u32(v: u32) -> Option<LockMode> {
        match v {
            1 => Some(LockMode::Account),
            2 => Some(LockMode::Global),
            _ => None,
        }
    }
}

/// The fixed size of every table, chosen at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Capacities {
    /// Users, and so accounts (ids 1..=users).
    pub users: u32,
    /// Rooms (ids 1..=rooms).
    pub rooms: u32,
    /// Members one room can hold.
    pub members_per_room: u32,
    /// Events a room's ring holds; a power of two.
    pub room_ring: u32,
    /// Entries the transaction log ring holds; a power of two.
    pub txn_log: u32,
    /// Outcomes of ledger requests kept per user, by req_id: a retry whose req_id is within this
    /// distance of the user's highest decided one gets its first answer. A power of two.
    pub results_per_user: u32,
    /// Process slots: one per worker (and per test helper process).
    pub workers: u32,
}
crate::layout!(Capacities, 28, 4);

impl Default for Capacities {
    fn default() -> Self {
        Capacities {
            users: 100_000,
            rooms: 256,
            members_per_room: 1024,
            room_ring: 256,
            txn_log: 1 << 18,
            results_per_user: 32,
            workers: 64,
        }
    }
}

/// Largest value any capacity may take: keeps every offset computation far from overflow.
const CAPACITY_MAX: u32 = 1 << 24;

impl Capacities {
    /// Checks the capacities are usable: non-zero, bounded, rings a power of two.
    pub fn validate(&self) -> Result<(), ShmError> {
        let fields = [
            ("users", self.users),
            ("rooms", self.rooms),
            ("members_per_room", self.members_per_room),
            ("room_ring", self.room_ring),
            ("txn_log", self.txn_log),
            ("results_per_user", self.results_per_user),
            ("workers", self.workers),
        ];
        for (name, v) in fields {
            if v == 0 || v > CAPACITY_MAX {
                return Err(ShmError::BadCapacity {
                    name,
                    value: v,
                    why: "must be 1..=16777216",
                });
            }
        }
        for (name, v) in [
            ("room_ring", self.room_ring),
            ("txn_log", self.txn_log),
            ("results_per_user", self.results_per_user),
        ] {
            if !v.is_power_of_two() {
                return Err(ShmError::BadCapacity {
                    name,
                    value: v,
                    why: "must be a power of two",
                });
            }
        }
        Ok(())
    }
}

/// The segment's first bytes. Written once by the creator; `state` flips to ready last.
#[repr(C)]
pub(crate) struct Header {
    magic: AtomicU64,
    layout_version: AtomicU32,
    state: AtomicU32,
    creator_pid: AtomicU32,
    lock_mode: AtomicU32,
    size: AtomicU64,
    created_ms: AtomicU64,
    caps: [AtomicU32; 7],
}
crate::layout!(Header, 72, 8);

const STATE_READY: u32 = 0x5245_4459; // "REDY"

/// Global words of the ledger, users and rooms, each on its own cache line where it is hot.
#[repr(C, align(128))]
pub struct Globals {
    /// The one ledger lock in [`LockMode::Global`].
    pub ledger_lock: RobustMutex,
    /// Serialises repairs after an owner died.
    pub recovery_lock: RobustMutex,
    /// Serialises user registration.
    pub users_lock: RobustMutex,
    /// Serialises room creation.
    pub rooms_lock: RobustMutex,
    /// Registered users; ids 1..=users_count are in use.
    pub users_count: AtomicU32,
    /// Rooms created; ids 1..=rooms_count are in use.
    pub rooms_count: AtomicU32,
    /// Locks taken over from a dead owner.
    pub locks_recovered: AtomicU64,
    /// Half-done operations rolled forward after their process died.
    pub intents_recovered: AtomicU64,
    /// Which slot holds the ledger lock in global mode (slot + 1, 0 when free).
    pub ledger_holder: AtomicU32,
    _pad: [u8; 60],
    /// The last transaction id handed out; on its own cache line, written by every transaction.
    pub txn_seq: AtomicU64,
    _pad2: [u8; 120],
    /// Bumped after every room event; workers wait on it (futex word).
    pub chat_epoch: AtomicU32,
}
crate::layout!(Globals, 384, 128);

impl fmt::Debug for Globals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Globals")
            .field("users_count", &self.users_count)
            .field("rooms_count", &self.rooms_count)
            .field("txn_seq", &self.txn_seq)
            .finish_non_exhaustive()
    }
}

/// Offsets of every table, computed from the capacities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Capacities the layout was computed from.
    pub caps: Capacities,
    pub(crate) globals: usize,
    pub(crate) slots: usize,
    pub(crate) metrics: usize,
    pub(crate) accounts: usize,
    pub(crate) results: usize,
    pub(crate) log: usize,
    pub(crate) users: usize,
    pub(crate) user_index: usize,
    pub(crate) user_index_len: usize,
    pub(crate) rooms: usize,
    pub(crate) members: usize,
    pub(crate) room_index: usize,
    pub(crate) room_index_len: usize,
    pub(crate) events: usize,
    pub(crate) inboxes: usize,
    pub(crate) inbox_events: usize,
    pub(crate) journal: usize,
    pub(crate) journal_ring: usize,
    pub(crate) cluster: usize,
    pub(crate) outbox: usize,
    pub(crate) outbox_events: usize,
    /// Total bytes.
    pub size: usize,
}

struct Cursor(usize);

impl Cursor {
    fn take<T>(&mut self, count: usize) -> usize {
        let align = core::mem::align_of::<T>().max(64);
        let start = self.0.next_multiple_of(align);
        self.0 = start + core::mem::size_of::<T>() * count;
        start
    }
}

impl Layout {
    /// The layout for `caps`, which must be valid.
    pub fn new(caps: Capacities) -> Layout {
        let users = caps.users as usize;
        let rooms = caps.rooms as usize;
        let mut c = Cursor(4096);
        let globals = c.take::<Globals>(1);
        let slots = c.take::<Slot>(caps.workers as usize);
        let metrics = c.take::<WorkerMetrics>(caps.workers as usize);
        // Index 0 of accounts, users and rooms is unused so that ids are indices.
        let accounts = c.take::<Account>(users + 1);
        let results = c.take::<ResultEntry>((users + 1) * caps.results_per_user as usize);
        let log = c.take::<LogEntry>(caps.txn_log as usize);
        let users_off = c.take::<UserRecord>(users + 1);
        let user_index_len = (users * 2).next_power_of_two();
        let user_index = c.take::<AtomicU32>(user_index_len);
        let rooms_off = c.take::<Room>(rooms + 1);
        let members = c.take::<Member>((rooms + 1) * caps.members_per_room as usize);
        let room_index_len = (rooms * 2).next_power_of_two();
        let room_index = c.take::<AtomicU32>(room_index_len);
        let events = c.take::<RoomEvent>((rooms + 1) * caps.room_ring as usize);
        // One inbox ring per worker slot (direct messages), sized like a room's.
        let inboxes = c.take::<Room>(caps.workers as usize);
        let inbox_events = c.take::<RoomEvent>(caps.workers as usize * caps.room_ring as usize);
        let journal = c.take::<JournalCtl>(1);
        let journal_ring = c.take::<RingEntry>(crate::journal::RING);
        // A cluster node's bridge block and outbox (unused, and never touched, on one node).
        let cluster = c.take::<ClusterCtl>(1);
        let outbox = c.take::<Room>(1);
        let outbox_events = c.take::<RoomEvent>(OUTBOX_RING);
        let size = c.0.next_multiple_of(4096);
        Layout {
            caps,
            globals,
            slots,
            metrics,
            accounts,
            results,
            log,
            users: users_off,
            user_index,
            user_index_len,
            rooms: rooms_off,
            members,
            room_index,
            room_index_len,
            events,
            inboxes,
            inbox_events,
            journal,
            journal_ring,
            cluster,
            outbox,
            outbox_events,
            size,
        }
    }
}

/// Why a segment could not be created or attached.
#[derive(Debug)]
#[non_exhaustive]
pub enum ShmError {
    /// A capacity is out of range.
    BadCapacity {
        /// Which.
        name: &'static str,
        /// Its value.
        value: u32,
        /// What is required.
        why: &'static str,
    },
    /// The instance name has characters a POSIX shm name cannot hold.
    BadName(String),
    /// A live process created a segment of this name.
    InUse {
        /// The segment's name.
        name: String,
        /// Its creator, still running.
        pid: u32,
    },
    /// No segment of this name exists.
    NotFound(String),
    /// The segment is not one of ours, or of another layout version.
    Mismatch {
        /// The segment's name.
        name: String,
        /// What differs.
        what: String,
    },
    /// A segment opened read-only was asked for something that writes.
    ReadOnly,
    /// A live process owns the ledger slot asked for.
    SlotInUse {
        /// The slot.
        slot: u32,
        /// Its owner.
        pid: u32,
    },
    /// A system call failed.
    Os {
        /// What was being done.
        what: &'static str,
        /// The error.
        errno: Errno,
    },
    /// A lock could not be initialised.
    Lock(crate::lock::LockError),
}

impl fmt::Display for ShmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShmError::BadCapacity { name, value, why } => {
                write!(f, "capacity {name} = {value}: {why}")
            }
            ShmError::BadName(n) => write!(
                f,
                "instance name {n:?}: use 1 to 200 characters of [A-Za-z0-9_.-]"
            ),
            ShmError::InUse { name, pid } => write!(
                f,
                "shared memory /dev/shm{name} belongs to a running server (pid {pid}); \
                 stop it or pick another --name"
            ),
            ShmError::NotFound(n) => write!(
                f,
                "no shared memory /dev/shm{n}: is the server running, with the same --name?"
            ),
            ShmError::Mismatch { name, what } => write!(
                f,
                "/dev/shm{name} is not a segment this build can use: {what}"
            ),
            ShmError::ReadOnly => f.write_str("the segment was attached read-only"),
            ShmError::SlotInUse { slot, pid } => {
                write!(f, "ledger slot {slot} belongs to running process {pid}")
            }
            ShmError::Os { what, errno } => write!(f, "{what}: {errno}"),
            ShmError::Lock(e) => write!(f, "initialising a lock: {e}"),
        }
    }
}

impl std::error::Error for ShmError {}

fn os(what: &'static str) -> impl FnOnce(Errno) -> ShmError {
    move |errno| ShmError::Os { what, errno }
}

/// Turns an instance name into a POSIX shm name: `/ns-<name>`.
pub fn shm_name(instance: &str) -> Result<String, ShmError> {
    let ok = !instance.is_empty()
        && instance.len() <= 200
        && instance
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !ok {
        return Err(ShmError::BadName(instance.to_string()));
    }
    Ok(format!("/ns-{instance}"))
}

/// True unless `pid` is certainly gone (a pid of 0 or out of range counts as gone).
pub(crate) fn process_alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    if raw <= 0 {
        return false;
    }
    // Signal 0 checks existence only. EPERM means it exists but is not ours: alive.
    if matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None),
        Err(Errno::ESRCH)
    ) {
        return false;
    }
    // A zombie (dead, not yet reaped: its parent died too and nothing reaps orphans here) still
    // answers signal 0; its state in /proc says it is gone.
    let zombie = std::fs::read_to_string(format!("/proc/{raw}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X")
    });
    !zombie
}

/// Wall clock, milliseconds since the Unix epoch.
pub(crate) fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

enum Map {
    ReadWrite(MmapMut),
    ReadOnly(Mmap),
}

/// A mapped segment. The creator's value unlinks the name when dropped in the creating process
/// (not in forked children, which share the value but not the ownership).
pub struct Segment {
    map: Map,
    name: String,
    layout: Layout,
    lock_mode: LockMode,
    creator_pid: u32,
    unlink_on_drop: bool,
}

impl fmt::Debug for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Segment")
            .field("name", &self.name)
            .field("size", &self.layout.size)
            .field("lock_mode", &self.lock_mode)
            .field("creator_pid", &self.creator_pid)
            .finish()
    }
}

/// What [`Segment::create`] found under the name before creating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Previous {
    /// Nothing: the name was free.
    None,
    /// A segment whose creator is dead (pid, or 0 if its header was unreadable); replaced.
    Stale(u32),
}

impl Segment {
    /// Creates the segment for `instance`, replacing a stale one left by a dead creator.
    pub fn create(
        instance: &str,
        caps: Capacities,
        lock_mode: LockMode,
    ) -> Result<(Segment, Previous), ShmError> {
        caps.validate()?;
        let name = shm_name(instance)?;
        let layout = Layout::new(caps);
        let mut previous = Previous::None;
        let fd = loop {
            match nix::sys::mman::shm_open(
                name.as_str(),
                OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR,
                Mode::from_bits_truncate(0o600),
            ) {
                Ok(fd) => break fd,
                Err(Errno::EEXIST) => {
                    let pid = Self::creator_of(&name);
                    if pid != 0 && process_alive(pid) {
                        return Err(ShmError::InUse { name, pid });
                    }
                    tracing::warn!(
                        segment = %name,
                        dead_creator_pid = pid,
                        "replacing a stale shared-memory segment left by a dead server"
                    );
                    previous = Previous::Stale(pid);
                    match nix::sys::mman::shm_unlink(name.as_str()) {
                        Ok(()) | Err(Errno::ENOENT) => {}
                        Err(e) => return Err(os("shm_unlink of the stale segment")(e)),
                    }
                }
                Err(e) => return Err(os("shm_open")(e)),
            }
        };
        // From here the name is ours: unlink it if anything below fails.
        let unlink_guard = UnlinkOnError(&name);
        nix::unistd::ftruncate(fd.as_fd(), layout.size as i64).map_err(os("ftruncate"))?;
        // SAFETY: the object was just created with O_EXCL and sized; nobody else maps it until
        // the header says ready, and the mapping is owned by the returned Segment.
        let mut map = unsafe { MmapOptions::new().len(layout.size).map_mut(&fd) }
            .map_err(|e| os("mmap")(Errno::from_raw(e.raw_os_error().unwrap_or(0))))?;
        let creator_pid = std::process::id();
        // SAFETY: the mapping is writable, zeroed by ftruncate, sized by `layout`, and private to
        // this process until the ready flag is stored below.
        unsafe { init(map.as_mut_ptr(), &layout, lock_mode, creator_pid)? };
        core::mem::forget(unlink_guard);
        Ok((
            Segment {
                map: Map::ReadWrite(map),
                name,
                layout,
                lock_mode,
                creator_pid,
                unlink_on_drop: true,
            },
            previous,
        ))
    }

    /// A segment in this process's private memory (anonymous, MAP_PRIVATE), with no name in
    /// /dev/shm: for a copy of the state only one process keeps, such as the journal writer's.
    /// A child forked from the owner gets a copy-on-write snapshot of it, frozen at the fork
    /// (a shared mapping would go on changing under the child).
    pub fn private(caps: Capacities, lock_mode: LockMode) -> Result<Segment, ShmError> {
        caps.validate()?;
        let layout = Layout::new(caps);
        let mut map = MmapOptions::new()
            .len(layout.size)
            .map_anon()
            .map_err(|e| os("mmap")(Errno::from_raw(e.raw_os_error().unwrap_or(0))))?;
        let creator_pid = std::process::id();
        // SAFETY: a fresh anonymous mapping: writable, zeroed, sized by `layout`, and seen by
        // this process only.
        unsafe { init(map.as_mut_ptr(), &layout, lock_mode, creator_pid)? };
        Ok(Segment {
            map: Map::ReadWrite(map),
            name: String::from("(private)"),
            layout,
            lock_mode,
            creator_pid,
            unlink_on_drop: false,
        })
    }

    /// Reads the creator pid from an existing segment's header, 0 if unreadable.
    fn creator_of(name: &str) -> u32 {
        let Ok(fd) = nix::sys::mman::shm_open(name, OFlag::O_RDONLY, Mode::empty()) else {
            return 0;
        };
        match map_header(&fd) {
            // SAFETY: the mapping holds at least a Header (checked by map_header).
            Ok(m) => unsafe { &*(m.as_ptr() as *const Header) }
                .creator_pid
                .load(Ordering::Acquire),
            Err(_) => 0,
        }
    }

    /// Attaches to the running instance's segment; `writable` for workers, read-only for tools.
    pub fn attach(instance: &str, writable: bool) -> Result<Segment, ShmError> {
        let name = shm_name(instance)?;
        let flags = if writable {
            OFlag::O_RDWR
        } else {
            OFlag::O_RDONLY
        };
        let fd = match nix::sys::mman::shm_open(name.as_str(), flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Err(ShmError::NotFound(name)),
            Err(e) => return Err(os("shm_open")(e)),
        };
        let head = map_header(&fd).map_err(|what| ShmError::Mismatch {
            name: name.clone(),
            what,
        })?;
        // SAFETY: map_header checked the mapping holds a Header.
        let header = unsafe { &*(head.as_ptr() as *const Header) };
        let (layout, lock_mode, creator_pid) =
            check_header(header).map_err(|what| ShmError::Mismatch {
                name: name.clone(),
                what,
            })?;
        let file_len = nix::sys::stat::fstat(fd.as_raw_fd())
            .map_err(os("fstat"))?
            .st_size as usize;
        if file_len < layout.size {
            return Err(ShmError::Mismatch {
                name,
                what: format!("size {file_len} is below the layout's {}", layout.size),
            });
        }
        let map = if writable {
            // SAFETY: the object is a segment of this layout (checked above); the mapping is
            // owned by the returned Segment and every shared field is an atomic or a lock.
            Map::ReadWrite(
                unsafe { MmapOptions::new().len(layout.size).map_mut(&fd) }
                    .map_err(|e| os("mmap")(Errno::from_raw(e.raw_os_error().unwrap_or(0))))?,
            )
        } else {
            // SAFETY: as above, read-only.
            Map::ReadOnly(
                unsafe { MmapOptions::new().len(layout.size).map(&fd) }
                    .map_err(|e| os("mmap")(Errno::from_raw(e.raw_os_error().unwrap_or(0))))?,
            )
        };
        Ok(Segment {
            map,
            name,
            layout,
            lock_mode,
            creator_pid,
            unlink_on_drop: false,
        })
    }

    /// The POSIX name, `/ns-<instance>`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The layout in force.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The capacities in force.
    pub fn caps(&self) -> &Capacities {
        &self.layout.caps
    }

    /// The ledger's lock mode.
    pub fn lock_mode(&self) -> LockMode {
        self.lock_mode
    }

    /// The pid of the process that created it.
    pub fn creator_pid(&self) -> u32 {
        self.creator_pid
    }

    /// When the creator made it (ms since the epoch): tells one life of a name from the next.
    pub fn created_ms(&self) -> u64 {
        // SAFETY: the header sits at offset 0 of every mapping (checked at attach).
        let h = unsafe { &*(self.base() as *const Header) };
        h.created_ms.load(Ordering::Relaxed)
    }

    /// True when attached read-write.
    pub fn is_writable(&self) -> bool {
        matches!(self.map, Map::ReadWrite(_))
    }

    /// Fails unless attached read-write.
    pub fn require_writable(&self) -> Result<(), ShmError> {
        if self.is_writable() {
            Ok(())
        } else {
            Err(ShmError::ReadOnly)
        }
    }

    fn base(&self) -> *const u8 {
        match &self.map {
            Map::ReadWrite(m) => m.as_ptr(),
            Map::ReadOnly(m) => m.as_ptr(),
        }
    }

    /// A table of `len` `T`s at `offset`.
    ///
    /// # Safety
    ///
    /// `offset` and `len` must be one of the layout's tables of `T`: inside the mapping,
    /// aligned for `T`, and initialised (every `T` here is valid when zeroed, or initialised by
    /// `init` before the segment was published).
    unsafe fn table<T>(&self, offset: usize, len: usize) -> &[T] {
        debug_assert!(offset + len * core::mem::size_of::<T>() <= self.layout.size);
        debug_assert_eq!(offset % core::mem::align_of::<T>(), 0);
        // SAFETY: per the caller's contract; the slice borrows `self`, which owns the mapping.
        unsafe { core::slice::from_raw_parts(self.base().add(offset) as *const T, len) }
    }

    /// The tables, each a safe typed view: the only place that turns offsets into slices.
    /// Every one is a table the layout placed for exactly that type and length, inside the
    /// mapping and aligned, whose every field is an atomic or a lock (valid when zeroed, locks
    /// initialised by `init` before the segment was published).
    pub(crate) fn accounts(&self) -> &[Account] {
        let l = &self.layout;
        // SAFETY: the layout's account table: users + 1 entries of `Account` (see above).
        unsafe { self.table(l.accounts, l.caps.users as usize + 1) }
    }

    pub(crate) fn results(&self) -> &[ResultEntry] {
        let l = &self.layout;
        let n = (l.caps.users as usize + 1) * l.caps.results_per_user as usize;
        // SAFETY: the layout's outcome table: (users + 1) × results_per_user `ResultEntry`s.
        unsafe { self.table(l.results, n) }
    }

    pub(crate) fn log(&self) -> &[LogEntry] {
        let l = &self.layout;
        // SAFETY: the layout's transaction ring: txn_log `LogEntry`s.
        unsafe { self.table(l.log, l.caps.txn_log as usize) }
    }

    pub(crate) fn slots(&self) -> &[Slot] {
        let l = &self.layout;
        // SAFETY: the layout's slot table: one `Slot` per worker slot.
        unsafe { self.table(l.slots, l.caps.workers as usize) }
    }

    pub(crate) fn metrics_blocks(&self) -> &[WorkerMetrics] {
        let l = &self.layout;
        // SAFETY: the layout's metrics table: one `WorkerMetrics` per worker slot.
        unsafe { self.table(l.metrics, l.caps.workers as usize) }
    }

    pub(crate) fn user_records(&self) -> &[UserRecord] {
        let l = &self.layout;
        // SAFETY: the layout's user table: users + 1 `UserRecord`s.
        unsafe { self.table(l.users, l.caps.users as usize + 1) }
    }

    pub(crate) fn user_index(&self) -> &[AtomicU32] {
        let l = &self.layout;
        // SAFETY: the layout's user name index: user_index_len `AtomicU32`s.
        unsafe { self.table(l.user_index, l.user_index_len) }
    }

    pub(crate) fn room_table(&self) -> &[Room] {
        let l = &self.layout;
        // SAFETY: the layout's room table: rooms + 1 `Room`s.
        unsafe { self.table(l.rooms, l.caps.rooms as usize + 1) }
    }

    pub(crate) fn members(&self) -> &[Member] {
        let l = &self.layout;
        let n = (l.caps.rooms as usize + 1) * l.caps.members_per_room as usize;
        // SAFETY: the layout's member table: (rooms + 1) × members_per_room `Member`s.
        unsafe { self.table(l.members, n) }
    }

    pub(crate) fn room_index(&self) -> &[AtomicU32] {
        let l = &self.layout;
        // SAFETY: the layout's room name index: room_index_len `AtomicU32`s.
        unsafe { self.table(l.room_index, l.room_index_len) }
    }

    pub(crate) fn room_events(&self) -> &[RoomEvent] {
        let l = &self.layout;
        let n = (l.caps.rooms as usize + 1) * l.caps.room_ring as usize;
        // SAFETY: the layout's room rings: (rooms + 1) × room_ring `RoomEvent`s.
        unsafe { self.table(l.events, n) }
    }

    pub(crate) fn inboxes(&self) -> &[Room] {
        let l = &self.layout;
        // SAFETY: the layout's inbox heads: one `Room` per worker slot.
        unsafe { self.table(l.inboxes, l.caps.workers as usize) }
    }

    pub(crate) fn inbox_events(&self) -> &[RoomEvent] {
        let l = &self.layout;
        let n = l.caps.workers as usize * l.caps.room_ring as usize;
        // SAFETY: the layout's inbox rings: workers × room_ring `RoomEvent`s.
        unsafe { self.table(l.inbox_events, n) }
    }

    pub(crate) fn journal_ctl(&self) -> &JournalCtl {
        // SAFETY: the layout places one JournalCtl at `journal`, its lock initialised by `init`.
        unsafe { &self.table::<JournalCtl>(self.layout.journal, 1)[0] }
    }

    pub(crate) fn journal_ring(&self) -> &[RingEntry] {
        // SAFETY: the layout's journal ring: RING `RingEntry`s.
        unsafe { self.table(self.layout.journal_ring, crate::journal::RING) }
    }

    pub(crate) fn cluster_ctl(&self) -> &ClusterCtl {
        // SAFETY: the layout places one ClusterCtl at `cluster`; all atomics, valid zeroed.
        unsafe { &self.table::<ClusterCtl>(self.layout.cluster, 1)[0] }
    }

    pub(crate) fn outbox(&self) -> &Room {
        // SAFETY: the layout places one Room at `outbox`, its lock initialised by `init`.
        unsafe { &self.table::<Room>(self.layout.outbox, 1)[0] }
    }

    pub(crate) fn outbox_events(&self) -> &[RoomEvent] {
        // SAFETY: the layout's outbox ring: OUTBOX_RING `RoomEvent`s.
        unsafe { self.table(self.layout.outbox_events, OUTBOX_RING) }
    }

    /// The global words.
    pub fn globals(&self) -> &Globals {
        // SAFETY: the layout places one Globals at `globals`, initialised by `init`.
        unsafe { &self.table::<Globals>(self.layout.globals, 1)[0] }
    }

    /// Unlinks the name now (the mapping stays valid until drop). For the master's shutdown.
    pub fn unlink(&mut self) -> Result<(), ShmError> {
        self.unlink_on_drop = false;
        match nix::sys::mman::shm_unlink(self.name.as_str()) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(os("shm_unlink")(e)),
        }
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // A forked child holds a copy of the creator's value; only the creating process unlinks.
        if self.unlink_on_drop && std::process::id() == self.creator_pid {
            let _ = nix::sys::mman::shm_unlink(self.name.as_str());
        }
    }
}

struct UnlinkOnError<'a>(&'a str);

impl Drop for UnlinkOnError<'_> {
    fn drop(&mut self) {
        let _ = nix::sys::mman::shm_unlink(self.0);
    }
}

fn map_header(fd: &OwnedFd) -> Result<Mmap, String> {
    let len = nix::sys::stat::fstat(fd.as_raw_fd())
        .map_err(|e| format!("fstat: {e}"))?
        .st_size as usize;
    if len < core::mem::size_of::<Header>() {
        return Err(format!("{len} bytes, too small for a header"));
    }
    // SAFETY: a read-only mapping of the header's bytes, owned by the returned Mmap.
    unsafe {
        MmapOptions::new()
            .len(core::mem::size_of::<Header>())
            .map(fd)
    }
    .map_err(|e| format!("mmap: {e}"))
}

fn check_header(h: &Header) -> Result<(Layout, LockMode, u32), String> {
    let magic = h.magic.load(Ordering::Acquire);
    if magic != MAGIC {
        return Err(format!("magic {magic:#018x}, expected {MAGIC:#018x}"));
    }
    let version = h.layout_version.load(Ordering::Acquire);
    if version != LAYOUT_VERSION {
        return Err(format!(
            "layout version {version}, this build reads {LAYOUT_VERSION}"
        ));
    }
    if h.state.load(Ordering::Acquire) != STATE_READY {
        return Err("its creator has not finished initialising it".into());
    }
    let c: Vec<u32> = h.caps.iter().map(|a| a.load(Ordering::Acquire)).collect();
    let caps = Capacities {
        users: c[0],
        rooms: c[1],
        members_per_room: c[2],
        room_ring: c[3],
        txn_log: c[4],
        results_per_user: c[5],
        workers: c[6],
    };
    caps.validate().map_err(|e| e.to_string())?;
    let layout = Layout::new(caps);
    let size = h.size.load(Ordering::Acquire);
    if size != layout.size as u64 {
        return Err(format!(
            "header size {size} differs from the layout's {}",
            layout.size
        ));
    }
    let mode = LockMode::from_u32(h.lock_mode.load(Ordering::Acquire))
        .ok_or_else(|| "unknown lock mode".to_string())?;
    Ok((layout, mode, h.creator_pid.load(Ordering::Acquire)))
}

/// Initialises a fresh, zeroed mapping: every lock, then the header, ready flag last.
///
/// # Safety
///
/// `base` must point to a writable, zeroed mapping of `layout.size` bytes that no other process
/// uses yet.
unsafe fn init(
    base: *mut u8,
    layout: &Layout,
    mode: LockMode,
    creator_pid: u32,
) -> Result<(), ShmError> {
    // SAFETY: every pointer below is inside the mapping at an offset the layout aligned for its
    // type; the memory is zeroed (a valid value for every atomic) and private to us.
    unsafe {
        let g = base.add(layout.globals) as *mut Globals;
        for m in [
            core::ptr::addr_of_mut!((*g).ledger_lock),
            core::ptr::addr_of_mut!((*g).recovery_lock),
            core::ptr::addr_of_mut!((*g).users_lock),
            core::ptr::addr_of_mut!((*g).rooms_lock),
        ] {
            RobustMutex::init(m).map_err(ShmError::Lock)?;
        }
        let accounts = base.add(layout.accounts) as *mut Account;
        for i in 0..=layout.caps.users as usize {
            RobustMutex::init(core::ptr::addr_of_mut!((*accounts.add(i)).lock))
                .map_err(ShmError::Lock)?;
        }
        let rooms = base.add(layout.rooms) as *mut Room;
        for i in 0..=layout.caps.rooms as usize {
            RobustMutex::init(core::ptr::addr_of_mut!((*rooms.add(i)).lock))
                .map_err(ShmError::Lock)?;
        }
        let inboxes = base.add(layout.inboxes) as *mut Room;
        for i in 0..layout.caps.workers as usize {
            RobustMutex::init(core::ptr::addr_of_mut!((*inboxes.add(i)).lock))
                .map_err(ShmError::Lock)?;
        }
        let outbox = base.add(layout.outbox) as *mut Room;
        RobustMutex::init(core::ptr::addr_of_mut!((*outbox).lock)).map_err(ShmError::Lock)?;
        let j = base.add(layout.journal) as *mut JournalCtl;
        RobustMutex::init(core::ptr::addr_of_mut!((*j).lock)).map_err(ShmError::Lock)?;
        let h = &*(base as *const Header);
        h.magic.store(MAGIC, Ordering::Relaxed);
        h.layout_version.store(LAYOUT_VERSION, Ordering::Relaxed);
        h.creator_pid.store(creator_pid, Ordering::Relaxed);
        h.lock_mode.store(mode.to_u32(), Ordering::Relaxed);
        h.size.store(layout.size as u64, Ordering::Relaxed);
        h.created_ms.store(wall_ms(), Ordering::Relaxed);
        let c = &layout.caps;
        for (slot, v) in h.caps.iter().zip([
            c.users,
            c.rooms,
            c.members_per_room,
            c.room_ring,
            c.txn_log,
            c.results_per_user,
            c.workers,
        ]) {
            slot.store(v, Ordering::Relaxed);
        }
        h.state.store(STATE_READY, Ordering::Release);
    }
    Ok(())
}
