//! A node's side of the cluster, in shared memory: what the bridge process (which speaks NATS
//! JetStream, `ns-cluster`) and the workers (which never do) tell each other.
//!
//! - Workers hand chat messages to the bridge through the **outbox** (a ring like a room's, in
//!   `rooms`); the bridge publishes each to the stream and moves `outbox_acked` once the stream
//!   acknowledged it, which is what lets the ring's slot be reused.
//! - The bridge applies what the stream delivers, in the stream's order, to the rooms here
//!   (`Rooms::apply_remote`) and moves `applied`; workers then push it as they push any room
//!   message, and a worker that finds its own message (by [`crate::rooms::Origin`]) answers the
//!   sender's held CHAT_SEND with the message's sequence number in the room.
//! - `state` says whether the bridge is connected and caught up; the master forks the workers of
//!   a cluster node only once it first is.
//!
//! Wake-ups: workers bump `wake` (a futex word the bridge sleeps on) once per loop turn that
//! handed anything over; the bridge bumps the chat epoch (`wake::notify_all`) once per batch it
//! applied.

#![forbid(unsafe_code)]

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::segment::Segment;

/// The control block. Zeroed (state [`State::Off`]) on a node that is not in a cluster.
#[repr(C, align(128))]
pub(crate) struct ClusterCtl {
    state: AtomicU32,
    node_id: AtomicU32,
    /// Futex word: workers bump it after handing messages over; the bridge sleeps on it.
    wake: AtomicU32,
    _pad0: u32,
    /// This node's life: a publish is de-duplicated by (node, incarnation, outbox seq).
    incarnation: AtomicU64,
    /// The last outbox sequence number the stream acknowledged.
    pub(crate) outbox_acked: AtomicU64,
    /// The last stream sequence number applied to the rooms here.
    applied: AtomicU64,
    /// The stream's last sequence number as the bridge last saw it.
    stream_last: AtomicU64,
    published: AtomicU64,
    publish_errors: AtomicU64,
    applied_msgs: AtomicU64,
    connects: AtomicU64,
    bridge_pid: AtomicU64,
    _pad1: [u8; 40],
}
crate::layout!(ClusterCtl, 128, 128);

/// The bridge's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not a cluster node.
    Off,
    /// Connecting to NATS, or catching up with the stream.
    Starting,
    /// Connected and caught up: messages flow.
    Ready,
    /// The connection to NATS is lost; the bridge reconnects.
    Disconnected,
}

impl State {
    fn to_u32(self) -> u32 {
        match self {
            State::Off => 0,
            State::Starting => 1,
            State::Ready => 2,
            State::Disconnected => 3,
        }
    }

    fn from_u32(v: u32) -> State {
        match v {
            1 => State::Starting,
            2 => State::Ready,
            3 => State::Disconnected,
            _ => State::Off,
        }
    }

    /// Its name in `stats`.
    pub fn name(self) -> &'static str {
        match self {
            State::Off => "off",
            State::Starting => "starting",
            State::Ready => "ready",
            State::Disconnected => "disconnected",
        }
    }
}

/// A snapshot for `stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    /// The bridge's state.
    pub state: State,
    /// This node's id.
    pub node_id: u32,
    /// The bridge's pid, 0 when none runs.
    pub bridge_pid: u64,
    /// Outbox entries handed over by the workers.
    pub outbox_last: u64,
    /// Of which the stream acknowledged.
    pub outbox_acked: u64,
    /// The last stream sequence applied here.
    pub applied: u64,
    /// The stream's last sequence as last seen.
    pub stream_last: u64,
    /// Publishes acknowledged.
    pub published: u64,
    /// Publishes that failed (and were retried).
    pub publish_errors: u64,
    /// Messages applied to rooms here.
    pub applied_msgs: u64,
    /// Connections made to NATS.
    pub connects: u64,
}

impl Snapshot {
    /// How far this node's rooms are behind the stream, in messages.
    pub fn lag(&self) -> u64 {
        self.stream_last.saturating_sub(self.applied)
    }
}

/// The cluster view of a segment.
#[derive(Clone, Copy)]
pub struct Cluster<'s> {
    ctl: &'s ClusterCtl,
    seg: &'s Segment,
}

impl core::fmt::Debug for Cluster<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Cluster")
            .field("state", &self.state())
            .field("node_id", &self.node_id())
            .finish()
    }
}

impl<'s> Cluster<'s> {
    /// The segment's cluster block.
    pub fn of(seg: &'s Segment) -> Cluster<'s> {
        Cluster {
            ctl: seg.cluster_ctl(),
            seg,
        }
    }

    /// Marks this segment as node `node_id` of a cluster (the master, before any fork).
    pub fn enable(&self, node_id: u16) {
        self.ctl
            .node_id
            .store(u32::from(node_id), Ordering::Relaxed);
        self.ctl
            .incarnation
            .store(self.seg.created_ms(), Ordering::Relaxed);
        self.set_state(State::Starting);
    }

    /// True on a cluster node.
    pub fn enabled(&self) -> bool {
        self.state() != State::Off
    }

    /// The bridge's state.
    pub fn state(&self) -> State {
        State::from_u32(self.ctl.state.load(Ordering::Acquire))
    }

    /// Sets the bridge's state.
    pub fn set_state(&self, s: State) {
        self.ctl.state.store(s.to_u32(), Ordering::Release);
    }

    /// This node's id.
    pub fn node_id(&self) -> u16 {
        self.ctl.node_id.load(Ordering::Relaxed) as u16
    }

    /// This node's life (the segment's creation time, ms).
    pub fn incarnation(&self) -> u64 {
        self.ctl.incarnation.load(Ordering::Relaxed)
    }

    /// Records the bridge's pid (0: none).
    pub fn set_bridge_pid(&self, pid: u64) {
        self.ctl.bridge_pid.store(pid, Ordering::Relaxed);
    }

    /// The last outbox sequence number the stream acknowledged.
    pub fn outbox_acked(&self) -> u64 {
        self.ctl.outbox_acked.load(Ordering::Acquire)
    }

    /// The stream acknowledged outbox entries up to `seq` (rising only).
    pub fn ack_outbox(&self, seq: u64) {
        self.ctl.outbox_acked.fetch_max(seq, Ordering::AcqRel);
    }

    /// The last stream sequence number applied here.
    pub fn applied(&self) -> u64 {
        self.ctl.applied.load(Ordering::Acquire)
    }

    /// Stream messages up to `seq` are applied here (rising only).
    pub fn set_applied(&self, seq: u64) {
        self.ctl.applied.fetch_max(seq, Ordering::AcqRel);
    }

    /// The stream's last sequence number as the bridge saw it.
    pub fn set_stream_last(&self, seq: u64) {
        self.ctl.stream_last.fetch_max(seq, Ordering::AcqRel);
    }

    /// Counts `n` acknowledged publishes.
    pub fn count_published(&self, n: u64) {
        self.ctl.published.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts a failed publish.
    pub fn count_publish_error(&self) {
        self.ctl.publish_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `n` messages applied to rooms.
    pub fn count_applied(&self, n: u64) {
        self.ctl.applied_msgs.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts a connection to NATS.
    pub fn count_connect(&self) {
        self.ctl.connects.fetch_add(1, Ordering::Relaxed);
    }

    /// The bridge's futex word's value now.
    pub fn wake_seen(&self) -> u32 {
        self.ctl.wake.load(Ordering::Acquire)
    }

    /// Wakes the bridge (a worker handed messages over).
    pub fn wake_bridge(&self) {
        self.ctl.wake.fetch_add(1, Ordering::Release);
        crate::wake::wake_word(&self.ctl.wake);
    }

    /// The bridge sleeps while its word holds `seen`, at most `timeout`.
    pub fn wait_for_work(&self, seen: u32, timeout: Duration) {
        crate::wake::wait_word(&self.ctl.wake, seen, timeout);
    }

    /// Everything `stats` shows.
    pub fn snapshot(&self) -> Snapshot {
        let c = self.ctl;
        Snapshot {
            state: self.state(),
            node_id: c.node_id.load(Ordering::Relaxed),
            bridge_pid: c.bridge_pid.load(Ordering::Relaxed),
            outbox_last: crate::Rooms::of(self.seg).outbox_last_seq(),
            outbox_acked: c.outbox_acked.load(Ordering::Relaxed),
            applied: c.applied.load(Ordering::Relaxed),
            stream_last: c.stream_last.load(Ordering::Relaxed),
            published: c.published.load(Ordering::Relaxed),
            publish_errors: c.publish_errors.load(Ordering::Relaxed),
            applied_msgs: c.applied_msgs.load(Ordering::Relaxed),
            connects: c.connects.load(Ordering::Relaxed),
        }
    }
}
