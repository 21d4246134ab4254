//! CHAT_SEND on a cluster node. A room is one by name across the cluster, and its one order is
//! the order of the cluster's stream (NATS JetStream), which only the bridge process speaks.
//! So a worker does not append a message to its room here: it hands it to the bridge through
//! the outbox (`shm::rooms`), reserves the answer's place in the sender's output queue (a slot:
//! what the connection is sent after it waits, so answers keep their order), and writes the
//! answer, with the message's sequence number in the room, when the message comes back from the
//! stream into the room's ring and this worker finds it there by its origin (`pushes.rs`). A
//! message the stream has not ordered within `cluster_timeout_ms` gets ERR_TIMEOUT: its
//! outcome is unknown (it may still be delivered), as for any answer that never came.

use std::collections::HashMap;

use proto::body::*;
use proto::{write_error, write_response, Response, Status};
use shm::rooms::{Origin, RoomError};

use super::error::{Handled, HandlerError};
use super::{ConnState, Core, Ctx};

/// A worker's side of the cluster: its node, and the answers it holds.
#[derive(Debug)]
pub(super) struct ClusterChat {
    node: u16,
    next_token: u32,
    pending: HashMap<u32, PendingSend>,
    /// Something was handed to the bridge this turn: it is woken once, at the turn's end.
    wake_pending: bool,
}

/// A CHAT_SEND whose answer waits for the stream.
#[derive(Debug, Clone, Copy)]
struct PendingSend {
    key: usize,
    conn_id: u64,
    req_id: u64,
    room: u32,
    deadline_ms: u64,
}

impl ClusterChat {
    /// On a segment marked as a cluster node; `None` on a single node.
    pub(super) fn of(seg: &shm::Segment) -> Option<ClusterChat> {
        let c = shm::cluster::Cluster::of(seg);
        c.enabled().then(|| ClusterChat {
            node: c.node_id(),
            next_token: 1,
            pending: HashMap::new(),
            wake_pending: false,
        })
    }
}

impl Ctx<'_> {
    /// Hands a member's message to the bridge and holds its answer's place.
    pub(super) fn cluster_send(
        &mut self,
        st: &mut ConnState,
        user: u32,
        req_id: u64,
        c: &ChatSendRequest<'_>,
    ) -> Handled {
        let worker = self.cfg.worker;
        let deadline_ms = self.now_ms + self.cfg.cluster_timeout_ms;
        let Some(cl) = self.cluster.as_mut() else {
            return Err(HandlerError::new(Status::ErrInternal, "not a cluster node"));
        };
        let mut token = cl.next_token;
        while token == 0 || cl.pending.contains_key(&token) {
            token = token.wrapping_add(1);
        }
        cl.next_token = token.wrapping_add(1);
        let origin = Origin {
            node: cl.node,
            worker,
            token,
        }
        .pack();
        self.rooms
            .outbox_publish(
                c.room_id,
                user,
                &st.name,
                c.text.as_str(),
                self.wall_ms,
                origin,
            )
            .map_err(|e| match e {
                RoomError::Full => HandlerError::new(
                    Status::ErrServerBusy,
                    "the cluster bridge is behind: nothing was sent, retry later",
                ),
                e => e.into(),
            })?;
        st.out.hold_slot(token);
        cl.pending.insert(
            token,
            PendingSend {
                key: st.key,
                conn_id: st.id,
                req_id,
                room: c.room_id,
                deadline_ms,
            },
        );
        cl.wake_pending = true;
        self.chat.send_started(c.room_id);
        Ok(())
    }
}

impl Core<'_> {
    /// Wakes the bridge once if this turn handed it anything.
    pub(super) fn wake_bridge(&mut self) {
        if let Some(cl) = self.ctx.cluster.as_mut() {
            if std::mem::take(&mut cl.wake_pending) {
                shm::cluster::Cluster::of(self.ctx.seg).wake_bridge();
            }
        }
    }

    /// A room event of `room` with sequence number `seq` came from `origin`: if it is one of
    /// this worker's held messages, its answer is written in its slot. Returns the connection
    /// that got output.
    pub(super) fn resolve_sent(&mut self, origin: u64, room: u32, seq: u64) -> Option<usize> {
        let cl = self.ctx.cluster.as_mut()?;
        let o = Origin::unpack(origin);
        if o.node != cl.node || o.worker != self.ctx.cfg.worker {
            return None;
        }
        let p = cl.pending.remove(&o.token)?;
        debug_assert_eq!(p.room, room);
        self.ctx.chat.send_done(p.room);
        let mut frame = Vec::with_capacity(proto::HEADER_LEN + 8);
        let resp = Response::ChatSend(ChatSendResponse { seq });
        let _ = write_response(&mut frame, p.req_id, &resp, proto::BODY_LEN_LIMIT);
        self.ctx.metrics.statuses[0].add(1);
        self.fill_slot(p, o.token, &frame)
    }

    /// Answers every held message whose deadline passed with ERR_TIMEOUT (outcome unknown).
    /// Returns the connections that got output.
    pub(super) fn expire_sends(&mut self) -> Vec<usize> {
        let now = self.ctx.now_ms;
        let Some(cl) = self.ctx.cluster.as_mut() else {
            return Vec::new();
        };
        let expired: Vec<(u32, PendingSend)> = cl
            .pending
            .iter()
            .filter(|(_, p)| p.deadline_ms <= now)
            .map(|(&t, &p)| (t, p))
            .collect();
        for (token, _) in &expired {
            cl.pending.remove(token);
        }
        let mut touched = Vec::new();
        for (token, p) in expired {
            self.ctx.chat.send_done(p.room);
            let status = Status::ErrTimeout;
            self.ctx.metrics.statuses[status.as_u16() as usize].add(1);
            self.ctx.metrics.cluster_send_timeouts.add(1);
            let mut frame = Vec::new();
            write_error(
                &mut frame,
                p.req_id,
                proto::Opcode::ChatSend.as_u16(),
                status,
                "the cluster did not order the message in time: it may still be delivered",
            );
            touched.extend(self.fill_slot(p, token, &frame));
        }
        touched
    }

    fn fill_slot(&mut self, p: PendingSend, token: u32, frame: &[u8]) -> Option<usize> {
        let durable = shm::journal::durable(self.ctx.seg);
        let conn = self.conns.get_mut(p.key)?;
        if conn.st.id != p.conn_id || !conn.st.out.fill(token, frame) {
            return None;
        }
        self.ctx.metrics.bytes_out.add(frame.len() as u64);
        conn.st.out.release(durable);
        Some(p.key)
    }
}
