//! Chat on a worker: which of its connections are in which room, how far it has delivered each
//! room's ring, and the flood limit.
//!
//! Rooms and their messages live in shared memory (`shm::rooms`); every worker reads every room
//! it has members in, from its own cursor, and copies each new message, encoded once, into the
//! output queue of each local member. A worker learns of new messages through the chat epoch (a
//! futex word its io_uring waits on, or an eventfd for epoll), never by polling.

use std::collections::HashMap;

/// A local member of a room: a connection, and the last sequence number it must not receive
/// (the room's last message when it joined).
#[derive(Debug, Clone, Copy)]
pub struct LocalMember {
    /// The connection's slab key.
    pub key: usize,
    /// The connection's id (key and generation), to tell a reused key apart.
    pub conn_id: u64,
    /// Messages up to this sequence number predate the join.
    pub after_seq: u64,
}

/// This worker's view of the rooms it has members in.
#[derive(Debug, Default)]
pub struct ChatLocal {
    /// Members by room id.
    pub members: HashMap<u32, Vec<LocalMember>>,
    /// The last sequence number delivered per room.
    pub cursors: HashMap<u32, u64>,
    /// The chat epoch when this worker last delivered.
    pub epoch_seen: u32,
    /// How far this worker's inbox ring (direct messages for the users it serves) is read.
    pub inbox_seq: u64,
    /// Logged-in users on this worker: user id → (connection key, connection id).
    pub users: HashMap<u32, (usize, u64)>,
    /// On a cluster node: rooms with messages handed to the bridge whose answers are still
    /// held, and how many. Their rings are read even with no local member left, so that a
    /// sender who left the room still gets its answer.
    pub sending: HashMap<u32, u32>,
}

impl ChatLocal {
    /// Adds a member; a room new to this worker starts delivering after `last_seq`.
    pub fn join(&mut self, room: u32, member: LocalMember, last_seq: u64) {
        let list = self.members.entry(room).or_default();
        if !list.iter().any(|m| m.conn_id == member.conn_id) {
            list.push(member);
        }
        self.cursors.entry(room).or_insert(last_seq);
    }

    /// Removes a member; a room with no local member left is forgotten.
    pub fn leave(&mut self, room: u32, conn_id: u64) {
        if let Some(list) = self.members.get_mut(&room) {
            list.retain(|m| m.conn_id != conn_id);
            if list.is_empty() {
                self.members.remove(&room);
                if !self.sending.contains_key(&room) {
                    self.cursors.remove(&room);
                }
            }
        }
    }

    /// A message for `room` went to the bridge; its answer is held.
    pub fn send_started(&mut self, room: u32) {
        *self.sending.entry(room).or_default() += 1;
    }

    /// A held answer for `room` went out (or timed out).
    pub fn send_done(&mut self, room: u32) {
        if let Some(n) = self.sending.get_mut(&room) {
            *n -= 1;
            if *n == 0 {
                self.sending.remove(&room);
                if !self.members.contains_key(&room) {
                    self.cursors.remove(&room);
                }
            }
        }
    }

    /// Every room this worker reads: those with local members and those with held answers.
    pub fn rooms_to_read(&self) -> Vec<u32> {
        let mut rooms: Vec<u32> = self.members.keys().copied().collect();
        rooms.extend(
            self.sending
                .keys()
                .filter(|r| !self.members.contains_key(r))
                .copied(),
        );
        rooms
    }
}

/// A token bucket: `burst` messages at once, refilled at `per_sec`.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f64,
    last_ms: u64,
}

impl Bucket {
    /// A full bucket.
    pub fn new(burst: u32, now_ms: u64) -> Bucket {
        Bucket {
            tokens: f64::from(burst),
            last_ms: now_ms,
        }
    }

    /// Takes a token, or says how many ms until one is there.
    pub fn take(&mut self, burst: u32, per_sec: u32, now_ms: u64) -> Result<(), u64> {
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64 / 1000.0;
        self.last_ms = now_ms;
        self.tokens = (self.tokens + elapsed * f64::from(per_sec)).min(f64::from(burst));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else if per_sec == 0 {
            Err(u64::MAX)
        } else {
            Err(((1.0 - self.tokens) / f64::from(per_sec) * 1000.0).ceil() as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let mut b = Bucket::new(3, 0);
        for _ in 0..3 {
            assert_eq!(b.take(3, 10, 0), Ok(()));
        }
        assert_eq!(b.take(3, 10, 0), Err(100));
        assert_eq!(b.take(3, 10, 100), Ok(()));
        assert!(b.take(3, 10, 150).is_err());
    }

    #[test]
    fn local_rooms_forget_their_last_member() {
        let mut c = ChatLocal::default();
        let m = |k: usize| LocalMember {
            key: k,
            conn_id: k as u64,
            after_seq: 0,
        };
        c.join(1, m(1), 5);
        c.join(1, m(2), 9);
        c.join(1, m(2), 9);
        assert_eq!(c.members[&1].len(), 2);
        assert_eq!(c.cursors[&1], 5, "the first join sets the cursor");
        c.leave(1, 1);
        c.leave(1, 2);
        assert!(c.members.is_empty() && c.cursors.is_empty());
    }
}
