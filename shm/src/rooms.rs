//! Rooms: the name ↔ id index, member sets, and one event ring per room with a rising sequence
//! number, read by every worker without locks. Beside them, one inbox ring per worker carries
//! direct messages to the users that worker serves; inboxes are not rooms (they have no id, no
//! name and no members), so every room id a client sees is a room it can join.
//!
//! A room's lock serialises its writers (joins, leaves, messages). An event is written into its
//! ring slot like a seqlock (the slot's `seq` is 0 while being written), and the room's
//! `last_seq` is stored after it: that store is the commit point. A writer killed halfway leaves
//! a slot nobody was told about, which the next message overwrites. Readers copy an event out,
//! then check its `seq` again; if it changed, the ring lapped them and they learn how many
//! events they missed.

#![forbid(unsafe_code)]

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::limits::{NAME_LEN_MAX, TEXT_LEN_MAX};

use crate::lock::{LockError, Locked, RobustMutex};
use crate::segment::{Globals, Segment, ShmError};
use crate::words::{eq_bytes, index_find, index_insert, load_bytes, store_bytes};

/// One room. Index 0 is unused.
#[repr(C, align(128))]
pub(crate) struct Room {
    pub(crate) lock: RobustMutex,
    name_len: AtomicU32,
    member_count: AtomicU32,
    name: [AtomicU64; NAME_LEN_MAX / 8],
    last_seq: AtomicU64,
}
crate::layout!(Room, 128, 128);

/// One member of a room: a user on a worker's connection. `user` 0 marks a free entry.
#[repr(C)]
pub(crate) struct Member {
    user: AtomicU32,
    worker: AtomicU32,
    conn: AtomicU64,
}
crate::layout!(Member, 16, 8);

const TEXT_WORDS: usize = TEXT_LEN_MAX.div_ceil(8);
/// A ring event that carries a message's text.
const KIND_MESSAGE: u32 = 0;
/// An inbox event that tells a user about money it received ([`Credit`]).
const KIND_CREDIT: u32 = 1;

/// One event of a room's ring.
#[repr(C, align(64))]
pub(crate) struct RoomEvent {
    seq: AtomicU64,
    sender: AtomicU32,
    sender_len: AtomicU32,
    text_len: AtomicU32,
    target: AtomicU32,
    time_ms: AtomicU64,
    /// Who sent it in a cluster (node, worker, token: [`Origin`]), 0 on a single node.
    origin: AtomicU64,
    /// The cluster stream's sequence number of the message, 0 on a single node: a bridge that
    /// applies a message twice (killed between applying it and saying so) sees it here.
    stream_seq: AtomicU64,
    /// [`KIND_MESSAGE`], or [`KIND_CREDIT`] for a transfer's notice in an inbox, whose amount,
    /// txn id and LSN are the first three words of `text` (`text_len` 0).
    kind: AtomicU32,
    sender_name: [AtomicU64; NAME_LEN_MAX / 8],
    text: [AtomicU64; TEXT_WORDS],
}
crate::layout!(RoomEvent, 4096, 64);

/// Who joins: a user on a connection of a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberInfo {
    /// The user's id.
    pub user: u32,
    /// The worker holding the connection.
    pub worker: u32,
    /// The connection's id on that worker.
    pub conn: u64,
}

/// A room as LIST_ROOMS shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomInfo {
    /// Its id.
    pub room_id: u32,
    /// Its name.
    pub name: String,
    /// Members now.
    pub members: u32,
    /// Its latest sequence number.
    pub last_seq: u64,
}

/// What JOIN returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Joined {
    /// The room's id.
    pub room_id: u32,
    /// Its latest sequence number at the join.
    pub last_seq: u64,
    /// Members after the join.
    pub members: u32,
    /// False when the user was already a member (nothing changed).
    pub added: bool,
}

/// One event copied out of a ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Its sequence number.
    pub seq: u64,
    /// The sender's user id.
    pub sender: u32,
    /// The one user it is for (a direct message through a worker's inbox), or 0 for everyone.
    pub target: u32,
    /// When the room accepted it.
    pub time_ms: u64,
    /// The sender's name.
    pub sender_name: String,
    /// The text.
    pub text: String,
    /// Who sent it in a cluster ([`Origin::pack`]), 0 on a single node. In the outbox, where
    /// a worker hands a message to the bridge, `target` is the room's id on this node.
    pub origin: u64,
    /// Its sequence number in the cluster's stream, 0 on a single node.
    pub stream_seq: u64,
    /// Set for an inbox event that announces a transfer to `target` (its `text` is empty).
    pub credit: Option<Credit>,
}

/// A transfer announced to its recipient through their worker's inbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credit {
    /// Minor units received.
    pub amount: u64,
    /// The transfer's txn id.
    pub txn_id: u64,
    /// The journal LSN that must be durable before the recipient is told (0: none).
    pub lsn: u64,
}

/// Where a cluster message came from: which node, which worker there, and the worker's token
/// for the sender's held answer. Packed into one word: node 16 bits, worker 16, token 32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// The node's id (`--node-id`).
    pub node: u16,
    /// The worker's slot on that node.
    pub worker: u16,
    /// The worker's token for the held answer.
    pub token: u32,
}

impl Origin {
    /// One word.
    pub fn pack(self) -> u64 {
        (u64::from(self.node) << 48) | (u64::from(self.worker) << 32) | u64::from(self.token)
    }

    /// The parts of [`Origin::pack`]'s word.
    pub fn unpack(w: u64) -> Origin {
        Origin {
            node: (w >> 48) as u16,
            worker: (w >> 32) as u16,
            token: w as u32,
        }
    }
}

/// A message of a cluster room, as the bridge applies it from the stream.
#[derive(Debug, Clone, Copy)]
pub struct Remote<'a> {
    /// The room's name (rooms are one by name across the cluster).
    pub room: &'a str,
    /// The sender's user id on its node.
    pub sender: u32,
    /// The sender's name.
    pub sender_name: &'a str,
    /// The text.
    pub text: &'a str,
    /// When its node accepted it.
    pub time_ms: u64,
    /// [`Origin::pack`].
    pub origin: u64,
    /// Its sequence number in the stream (above 0).
    pub stream_seq: u64,
}

/// What applying a stream message did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteApplied {
    /// Appended to the room (id) with this sequence number.
    New {
        /// The room's id here.
        room_id: u32,
        /// The message's sequence number in the room.
        seq: u64,
    },
    /// The room already holds it (a bridge applying it again after a restart).
    Already,
}

/// What reading sequence number `seq` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// The event.
    Event(Event),
    /// `seq` is not written yet.
    NotYet,
    /// The ring moved on: events `seq..oldest` are gone; `oldest` is the oldest still held.
    Missed {
        /// The oldest sequence number the ring still holds.
        oldest: u64,
    },
}

/// Why a room operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RoomError {
    /// No such room.
    NotFound,
    /// The user is not a member.
    NotMember,
    /// The room table or the room's member set is full.
    Full,
    /// The name or text is out of bounds.
    Invalid(&'static str),
    /// A lock failed.
    Lock(LockError),
}

impl core::fmt::Display for RoomError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RoomError::NotFound => f.write_str("no such room"),
            RoomError::NotMember => f.write_str("not a member of the room"),
            RoomError::Full => f.write_str("room table or member set full"),
            RoomError::Invalid(w) => write!(f, "invalid {w}"),
            RoomError::Lock(e) => write!(f, "room lock: {e}"),
        }
    }
}

impl std::error::Error for RoomError {}

impl From<LockError> for RoomError {
    fn from(e: LockError) -> Self {
        RoomError::Lock(e)
    }
}

/// The rooms tables of a segment.
#[derive(Clone, Copy)]
pub struct Rooms<'s> {
    globals: &'s Globals,
    rooms: &'s [Room],
    members: &'s [Member],
    index: &'s [AtomicU32],
    events: &'s [RoomEvent],
    inboxes: &'s [Room],
    inbox_events: &'s [RoomEvent],
    outbox: &'s Room,
    outbox_events: &'s [RoomEvent],
    outbox_acked: &'s AtomicU64,
    members_per_room: usize,
    ring: usize,
}

/// One event ring and the header that holds its lock and last sequence number: a room's, or a
/// worker's inbox.
#[derive(Clone, Copy)]
struct Ring<'s> {
    head: &'s Room,
    events: &'s [RoomEvent],
}

impl core::fmt::Debug for Rooms<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Rooms")
            .field("count", &self.count())
            .finish()
    }
}

/// Holds a room's lock; unlocks on drop.
struct RoomGuard<'s>(&'s RobustMutex);

impl Drop for RoomGuard<'_> {
    fn drop(&mut self) {
        // Unlock fails only for a lock this thread does not hold, which the constructor rules
        // out; nothing useful can be done about it in a destructor.
        let _ = self.0.unlock();
    }
}

impl<'s> Rooms<'s> {
    /// The rooms tables of `seg`.
    pub fn of(seg: &'s Segment) -> Rooms<'s> {
        let caps = seg.caps();
        Rooms {
            globals: seg.globals(),
            rooms: seg.room_table(),
            members: seg.members(),
            index: seg.room_index(),
            events: seg.room_events(),
            inboxes: seg.inboxes(),
            inbox_events: seg.inbox_events(),
            outbox: seg.outbox(),
            outbox_events: seg.outbox_events(),
            outbox_acked: &seg.cluster_ctl().outbox_acked,
            members_per_room: caps.members_per_room as usize,
            ring: caps.room_ring as usize,
        }
    }

    /// Rooms created; ids 1..=count.
    pub fn count(&self) -> u32 {
        self.globals.rooms_count.load(Ordering::Acquire)
    }

    fn room(&self, id: u32) -> Result<&'s Room, RoomError> {
        if id == 0 || id > self.count() {
            return Err(RoomError::NotFound);
        }
        self.rooms.get(id as usize).ok_or(RoomError::NotFound)
    }

    fn members_of(&self, id: u32) -> &'s [Member] {
        let start = id as usize * self.members_per_room;
        &self.members[start..start + self.members_per_room]
    }

    /// Room `id`'s ring.
    fn room_ring(&self, id: u32) -> Result<Ring<'s>, RoomError> {
        let head = self.room(id)?;
        let start = id as usize * self.ring;
        Ok(Ring {
            head,
            events: &self.events[start..start + self.ring],
        })
    }

    /// Worker `worker`'s inbox ring.
    fn inbox_ring(&self, worker: u32) -> Result<Ring<'s>, RoomError> {
        let head = self
            .inboxes
            .get(worker as usize)
            .ok_or(RoomError::NotFound)?;
        let start = worker as usize * self.ring;
        Ok(Ring {
            head,
            events: &self.inbox_events[start..start + self.ring],
        })
    }

    /// Locks room `id`, recounting its members if the last holder died mid-change.
    fn lock(&self, id: u32) -> Result<RoomGuard<'s>, RoomError> {
        let room = &self.rooms[id as usize];
        lock_head(room, || {
            let n = self
                .members_of(id)
                .iter()
                .filter(|m| m.user.load(Ordering::Relaxed) != 0)
                .count();
            room.member_count.store(n as u32, Ordering::Relaxed);
        })
    }

    /// The id of room `name`, without locking.
    pub fn lookup(&self, name: &str) -> Option<u32> {
        index_find(self.index, name.as_bytes(), |id| {
            let r = &self.rooms[id as usize];
            eq_bytes(
                &r.name,
                r.name_len.load(Ordering::Relaxed) as usize,
                name.as_bytes(),
            )
        })
    }

    /// The id of room `name`, creating it if needed.
    pub fn lookup_or_create(&self, name: &str) -> Result<u32, RoomError> {
        if let Some(id) = self.lookup(name) {
            return Ok(id);
        }
        if name.is_empty() || name.len() > NAME_LEN_MAX {
            return Err(RoomError::Invalid("room name"));
        }
        let lock = &self.globals.rooms_lock;
        if lock.lock()? == Locked::OwnerDied {
            self.repair_create();
            lock.mark_consistent()?;
        }
        let _guard = RoomGuard(lock);
        if let Some(id) = self.lookup(name) {
            return Ok(id);
        }
        let id = self.count() + 1;
        if id as usize >= self.rooms.len() {
            return Err(RoomError::Full);
        }
        let r = &self.rooms[id as usize];
        store_bytes(&r.name, name.as_bytes());
        r.name_len.store(name.len() as u32, Ordering::Relaxed);
        index_insert(self.index, name.as_bytes(), id);
        self.globals.rooms_count.store(id, Ordering::Release);
        Ok(id)
    }

    /// A creation killed after publishing the index but before the count is finished.
    fn repair_create(&self) {
        let id = self.count() + 1;
        if self
            .index
            .iter()
            .any(|slot| slot.load(Ordering::Acquire) == id)
        {
            self.globals.rooms_count.store(id, Ordering::Release);
        }
    }

    /// Adds `who` to room `name` (created if needed). Joining twice changes nothing.
    pub fn join(&self, name: &str, who: MemberInfo) -> Result<Joined, RoomError> {
        if who.user == 0 {
            return Err(RoomError::Invalid("user"));
        }
        let id = self.lookup_or_create(name)?;
        let room = &self.rooms[id as usize];
        let _g = self.lock(id)?;
        let members = self.members_of(id);
        let mut free = None;
        for m in members {
            let u = m.user.load(Ordering::Relaxed);
            if u == who.user {
                m.worker.store(who.worker, Ordering::Relaxed);
                m.conn.store(who.conn, Ordering::Relaxed);
                return Ok(Joined {
                    room_id: id,
                    last_seq: room.last_seq.load(Ordering::Acquire),
                    members: room.member_count.load(Ordering::Relaxed),
                    added: false,
                });
            }
            if u == 0 && free.is_none() {
                free = Some(m);
            }
        }
        let m = free.ok_or(RoomError::Full)?;
        m.worker.store(who.worker, Ordering::Relaxed);
        m.conn.store(who.conn, Ordering::Relaxed);
        m.user.store(who.user, Ordering::Release);
        let n = room.member_count.load(Ordering::Relaxed) + 1;
        room.member_count.store(n, Ordering::Relaxed);
        Ok(Joined {
            room_id: id,
            last_seq: room.last_seq.load(Ordering::Acquire),
            members: n,
            added: true,
        })
    }

    /// Removes `user` from room `id`.
    pub fn leave(&self, id: u32, user: u32) -> Result<(), RoomError> {
        let room = self.room(id)?;
        let _g = self.lock(id)?;
        let m = self
            .members_of(id)
            .iter()
            .find(|m| m.user.load(Ordering::Relaxed) == user)
            .ok_or(RoomError::NotMember)?;
        m.user.store(0, Ordering::Release);
        let n = room.member_count.load(Ordering::Relaxed).saturating_sub(1);
        room.member_count.store(n, Ordering::Relaxed);
        Ok(())
    }

    /// True when `user` is in room `id`.
    pub fn is_member(&self, id: u32, user: u32) -> bool {
        self.room(id).is_ok()
            && self
                .members_of(id)
                .iter()
                .any(|m| m.user.load(Ordering::Acquire) == user)
    }

    /// Removes every member held by `worker` (which died) from every room; returns how many.
    pub fn remove_worker(&self, worker: u32) -> Result<usize, RoomError> {
        let mut removed = 0;
        for id in 1..=self.count() {
            let room = &self.rooms[id as usize];
            let _g = self.lock(id)?;
            for m in self.members_of(id) {
                if m.user.load(Ordering::Relaxed) != 0 && m.worker.load(Ordering::Relaxed) == worker
                {
                    m.user.store(0, Ordering::Release);
                    let n = room.member_count.load(Ordering::Relaxed).saturating_sub(1);
                    room.member_count.store(n, Ordering::Relaxed);
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// Removes `user` from every room; returns the ids of the rooms it left.
    pub fn leave_all(&self, user: u32) -> Result<Vec<u32>, RoomError> {
        let mut left = Vec::new();
        for id in 1..=self.count() {
            if self.is_member(id, user) && self.leave(id, user).is_ok() {
                left.push(id);
            }
        }
        Ok(left)
    }

    /// The members of room `id`.
    pub fn members(&self, id: u32) -> Result<Vec<MemberInfo>, RoomError> {
        self.room(id)?;
        Ok(self
            .members_of(id)
            .iter()
            .filter_map(|m| {
                let user = m.user.load(Ordering::Acquire);
                (user != 0).then(|| MemberInfo {
                    user,
                    worker: m.worker.load(Ordering::Relaxed),
                    conn: m.conn.load(Ordering::Relaxed),
                })
            })
            .collect())
    }

    /// Appends a message to room `id` from `sender`; returns its sequence number. The caller
    /// checks membership and then wakes the workers ([`crate::wake::notify`]).
    pub fn publish(
        &self,
        id: u32,
        sender: u32,
        sender_name: &str,
        text: &str,
        time_ms: u64,
    ) -> Result<u64, RoomError> {
        let ring = self.room_ring(id)?;
        let _g = self.lock(id)?;
        ring.append(NewEvent::local(sender, 0, sender_name, text, time_ms))
    }

    /// Room `id`'s latest sequence number.
    pub fn last_seq(&self, id: u32) -> Result<u64, RoomError> {
        Ok(self.room(id)?.last_seq.load(Ordering::Acquire))
    }

    /// Copies event `seq` of room `id` out of its ring, without locking.
    pub fn read(&self, id: u32, seq: u64) -> Result<Read, RoomError> {
        Ok(self.room_ring(id)?.read(seq))
    }

    /// Appends a direct message for user `target` to worker `worker`'s inbox; returns its
    /// sequence number there. The caller then wakes the workers.
    pub fn inbox_publish(
        &self,
        worker: u32,
        sender: u32,
        target: u32,
        sender_name: &str,
        text: &str,
        time_ms: u64,
    ) -> Result<u64, RoomError> {
        let ring = self.inbox_ring(worker)?;
        // An inbox has no members to recount; an append cut short is overwritten.
        let _g = lock_head(ring.head, || {})?;
        ring.append(NewEvent::local(sender, target, sender_name, text, time_ms))
    }

    /// Appends a notice of money received by `target` (from `sender`) to worker `worker`'s
    /// inbox; returns its sequence number there. The worker delivers it once the journal is
    /// durable up to `credit.lsn`, in inbox order. The caller then wakes the workers.
    pub fn inbox_credit(
        &self,
        worker: u32,
        sender: u32,
        target: u32,
        sender_name: &str,
        credit: Credit,
        time_ms: u64,
    ) -> Result<u64, RoomError> {
        let ring = self.inbox_ring(worker)?;
        let _g = lock_head(ring.head, || {})?;
        ring.append(NewEvent {
            credit: Some(credit),
            ..NewEvent::local(sender, target, sender_name, "", time_ms)
        })
    }

    /// Worker `worker`'s inbox's latest sequence number.
    pub fn inbox_last_seq(&self, worker: u32) -> Result<u64, RoomError> {
        Ok(self
            .inbox_ring(worker)?
            .head
            .last_seq
            .load(Ordering::Acquire))
    }

    /// Copies event `seq` of worker `worker`'s inbox out of its ring, without locking.
    pub fn inbox_read(&self, worker: u32, seq: u64) -> Result<Read, RoomError> {
        Ok(self.inbox_ring(worker)?.read(seq))
    }

    /// Hands a message for room `id` (by this node's id; the bridge publishes it by name) from
    /// `sender` to the bridge; returns its sequence number in the outbox. Refused with
    /// [`RoomError::Full`] when the bridge is a whole ring behind: nothing it has not yet had
    /// acknowledged by the stream is ever overwritten. The caller wakes the bridge.
    pub fn outbox_publish(
        &self,
        id: u32,
        sender: u32,
        sender_name: &str,
        text: &str,
        time_ms: u64,
        origin: u64,
    ) -> Result<u64, RoomError> {
        self.room(id)?;
        let ring = self.outbox_ring();
        let _g = lock_head(ring.head, || {})?;
        let next = ring.head.last_seq.load(Ordering::Relaxed) + 1;
        if next - self.outbox_acked.load(Ordering::Acquire) > ring.events.len() as u64 {
            return Err(RoomError::Full);
        }
        ring.append(NewEvent {
            origin,
            ..NewEvent::local(sender, id, sender_name, text, time_ms)
        })
    }

    /// The outbox's latest sequence number.
    pub fn outbox_last_seq(&self) -> u64 {
        self.outbox.last_seq.load(Ordering::Acquire)
    }

    /// Copies outbox entry `seq` out (its `target` is the room's id here), without locking.
    pub fn outbox_read(&self, seq: u64) -> Read {
        self.outbox_ring().read(seq)
    }

    fn outbox_ring(&self) -> Ring<'s> {
        Ring {
            head: self.outbox,
            events: self.outbox_events,
        }
    }

    /// The name of room `id`.
    pub fn name(&self, id: u32) -> Result<String, RoomError> {
        let r = self.room(id)?;
        let mut name = [0u8; NAME_LEN_MAX];
        let len = load_bytes(
            &r.name,
            r.name_len.load(Ordering::Relaxed) as usize,
            &mut name,
        );
        Ok(String::from_utf8_lossy(&name[..len]).into_owned())
    }

    /// Appends a message the cluster's stream delivered to its room (created if new here),
    /// unless the room already holds it: a message is applied once however often the bridge
    /// is handed it, since every node applies the stream in its one order and the room's last
    /// event says how far it got. The caller wakes the workers.
    pub fn apply_remote(&self, m: &Remote<'_>) -> Result<RemoteApplied, RoomError> {
        if m.stream_seq == 0 {
            return Err(RoomError::Invalid("stream sequence"));
        }
        let id = self.lookup_or_create(m.room)?;
        let ring = self.room_ring(id)?;
        let _g = self.lock(id)?;
        let last = ring.head.last_seq.load(Ordering::Relaxed);
        if last > 0 && ring.event(last).stream_seq.load(Ordering::Relaxed) >= m.stream_seq {
            return Ok(RemoteApplied::Already);
        }
        let seq = ring.append(NewEvent {
            origin: m.origin,
            stream_seq: m.stream_seq,
            ..NewEvent::local(m.sender, 0, m.sender_name, m.text, m.time_ms)
        })?;
        Ok(RemoteApplied::New { room_id: id, seq })
    }

    /// Rooms with ids above `after_id`, ascending, at most `limit`.
    pub fn list(&self, after_id: u32, limit: usize) -> Vec<RoomInfo> {
        let mut out = Vec::new();
        for id in after_id.saturating_add(1)..=self.count() {
            if out.len() >= limit {
                break;
            }
            let r = &self.rooms[id as usize];
            let mut name = [0u8; NAME_LEN_MAX];
            let len = load_bytes(
                &r.name,
                r.name_len.load(Ordering::Relaxed) as usize,
                &mut name,
            );
            out.push(RoomInfo {
                room_id: id,
                name: String::from_utf8_lossy(&name[..len]).into_owned(),
                members: r.member_count.load(Ordering::Relaxed),
                last_seq: r.last_seq.load(Ordering::Acquire),
            });
        }
        out
    }
}

/// Takes the lock of a ring's head (a room's or an inbox's); when its last holder died, runs
/// `repair` before marking it consistent.
fn lock_head<'s>(head: &'s Room, repair: impl FnOnce()) -> Result<RoomGuard<'s>, RoomError> {
    if head.lock.lock()? == Locked::OwnerDied {
        repair();
        head.lock.mark_consistent()?;
    }
    Ok(RoomGuard(&head.lock))
}

/// What an append writes into a ring slot.
#[derive(Clone, Copy)]
struct NewEvent<'a> {
    sender: u32,
    target: u32,
    sender_name: &'a str,
    text: &'a str,
    time_ms: u64,
    origin: u64,
    stream_seq: u64,
    credit: Option<Credit>,
}

impl<'a> NewEvent<'a> {
    fn local(sender: u32, target: u32, sender_name: &'a str, text: &'a str, time_ms: u64) -> Self {
        NewEvent {
            sender,
            target,
            sender_name,
            text,
            time_ms,
            origin: 0,
            stream_seq: 0,
            credit: None,
        }
    }
}

impl Ring<'_> {
    fn event(&self, seq: u64) -> &RoomEvent {
        &self.events[seq as usize & (self.events.len() - 1)]
    }

    /// Appends an event; the caller holds the ring's lock.
    fn append(&self, n: NewEvent<'_>) -> Result<u64, RoomError> {
        let NewEvent {
            sender,
            target,
            sender_name,
            text,
            time_ms,
            origin,
            stream_seq,
            credit,
        } = n;
        if credit.is_none() && (text.is_empty() || text.len() > TEXT_LEN_MAX) {
            return Err(RoomError::Invalid("text"));
        }
        if sender_name.len() > NAME_LEN_MAX {
            return Err(RoomError::Invalid("sender name"));
        }
        let seq = self.head.last_seq.load(Ordering::Relaxed) + 1;
        let e = self.event(seq);
        e.seq.store(0, Ordering::Relaxed);
        core::sync::atomic::fence(Ordering::Release);
        e.sender.store(sender, Ordering::Relaxed);
        e.target.store(target, Ordering::Relaxed);
        e.time_ms.store(time_ms, Ordering::Relaxed);
        e.origin.store(origin, Ordering::Relaxed);
        e.stream_seq.store(stream_seq, Ordering::Relaxed);
        store_bytes(&e.sender_name, sender_name.as_bytes());
        e.sender_len
            .store(sender_name.len() as u32, Ordering::Relaxed);
        match credit {
            Some(c) => {
                e.text[0].store(c.amount, Ordering::Relaxed);
                e.text[1].store(c.txn_id, Ordering::Relaxed);
                e.text[2].store(c.lsn, Ordering::Relaxed);
                e.kind.store(KIND_CREDIT, Ordering::Relaxed);
                e.text_len.store(0, Ordering::Relaxed);
            }
            None => {
                store_bytes(&e.text, text.as_bytes());
                e.kind.store(KIND_MESSAGE, Ordering::Relaxed);
                e.text_len.store(text.len() as u32, Ordering::Relaxed);
            }
        }
        e.seq.store(seq, Ordering::Release);
        self.head.last_seq.store(seq, Ordering::Release);
        Ok(seq)
    }

    /// Copies event `seq` out, without locking.
    fn read(&self, seq: u64) -> Read {
        let ring = self.events.len() as u64;
        let last = self.head.last_seq.load(Ordering::Acquire);
        if seq == 0 || seq > last {
            return Read::NotYet;
        }
        let oldest = (last + 1).saturating_sub(ring).max(1);
        if seq < oldest {
            return Read::Missed { oldest };
        }
        let lapped = || Read::Missed {
            oldest: (self.head.last_seq.load(Ordering::Acquire) + 1)
                .saturating_sub(ring)
                .max(seq + 1),
        };
        let e = self.event(seq);
        if e.seq.load(Ordering::Acquire) != seq {
            return lapped();
        }
        let mut name = [0u8; NAME_LEN_MAX];
        let name_len = load_bytes(
            &e.sender_name,
            e.sender_len.load(Ordering::Relaxed) as usize,
            &mut name,
        );
        let mut text = vec![0u8; TEXT_LEN_MAX];
        let text_len = load_bytes(
            &e.text,
            e.text_len.load(Ordering::Relaxed) as usize,
            &mut text,
        );
        text.truncate(text_len);
        let sender = e.sender.load(Ordering::Relaxed);
        let target = e.target.load(Ordering::Relaxed);
        let time_ms = e.time_ms.load(Ordering::Relaxed);
        let origin = e.origin.load(Ordering::Relaxed);
        let stream_seq = e.stream_seq.load(Ordering::Relaxed);
        let credit = (e.kind.load(Ordering::Relaxed) == KIND_CREDIT).then(|| Credit {
            amount: e.text[0].load(Ordering::Relaxed),
            txn_id: e.text[1].load(Ordering::Relaxed),
            lsn: e.text[2].load(Ordering::Relaxed),
        });
        core::sync::atomic::fence(Ordering::Acquire);
        if e.seq.load(Ordering::Relaxed) != seq {
            // Overwritten while we copied: the ring lapped this reader.
            return lapped();
        }
        // The writer stored valid UTF-8 and the copy was validated whole, so these hold.
        let sender_name = String::from_utf8_lossy(&name[..name_len]).into_owned();
        let text = String::from_utf8(text)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        Read::Event(Event {
            seq,
            sender,
            target,
            time_ms,
            sender_name,
            text,
            origin,
            stream_seq,
            credit,
        })
    }
}

/// Fails unless `seg` is writable; joins, leaves and messages write.
pub fn writable_rooms(seg: &Segment) -> Result<Rooms<'_>, ShmError> {
    seg.require_writable()?;
    Ok(Rooms::of(seg))
}
