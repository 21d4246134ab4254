//! Pushes: every room message and direct message this worker has not yet delivered, read from
//! the shared rings after the chat epoch moved, encoded once and copied into each local
//! member's output queue.

use proto::body::*;
use proto::codec::Name;
use proto::{write_push, Push};
use shm::rooms::Read;

use super::Core;
use crate::chat::LocalMember;

impl Core<'_> {
    /// Delivers every room message this worker has not yet pushed to its local members, if the
    /// chat epoch moved. Each message is encoded once and copied into each member's queue.
    /// Returns the connections that got output.
    ///
    /// Called once per loop turn, after every frame of the turn was handled: it first wakes
    /// the workers if the turn published anything (one wake for the whole turn), so this
    /// worker's own members see the turn's messages in this same pass.
    pub fn deliver(&mut self) -> Vec<usize> {
        self.wake_workers();
        self.wake_bridge();
        let epoch = shm::wake::epoch(self.ctx.seg).load(std::sync::atomic::Ordering::Acquire);
        if epoch == self.ctx.chat.epoch_seen {
            return Vec::new();
        }
        self.ctx.chat.epoch_seen = epoch;
        let mut touched = Vec::new();
        let mut frame = Vec::with_capacity(256);
        self.deliver_inbox(&mut touched, &mut frame);
        for room in self.ctx.chat.rooms_to_read() {
            // Taken out of the map for the room's whole batch (the queues need the context
            // mutably), and put back once: not once per message. A room read only for a held
            // answer (its sender left) has no members.
            let members = self.ctx.chat.members.remove(&room);
            let list = members.as_deref().unwrap_or(&[]);
            let delivered = self.deliver_room(room, list, &mut frame, &mut touched);
            if delivered {
                // Every member that got anything is settled once for the batch.
                touched.extend(list.iter().map(|m| m.key));
            }
            if let Some(m) = members {
                self.ctx.chat.members.insert(room, m);
            }
        }
        touched
    }

    /// Copies every message of `room` this worker has not yet pushed into its members' queues;
    /// true if there was any.
    fn deliver_room(
        &mut self,
        room: u32,
        members: &[LocalMember],
        frame: &mut Vec<u8>,
        touched: &mut Vec<usize>,
    ) -> bool {
        let Ok(last) = self.ctx.rooms.last_seq(room) else {
            return false;
        };
        let first = self.ctx.chat.cursors.get(&room).copied().unwrap_or(last);
        let mut seq = first;
        while seq < last {
            seq += 1;
            frame.clear();
            let event = match self.ctx.rooms.read(room, seq) {
                Ok(Read::Event(e)) => e,
                Ok(Read::Missed { oldest }) => {
                    // This worker fell a whole ring behind: tell members what they lost.
                    let gap = Push::ChatGap(ChatGap {
                        room_id: room,
                        first_seq: seq,
                        missed: oldest - seq,
                    });
                    let _ = write_push(frame, &gap, proto::BODY_LEN_LIMIT);
                    self.fan_out(members, seq, frame);
                    seq = oldest - 1;
                    continue;
                }
                Ok(Read::NotYet) | Err(_) => {
                    seq -= 1;
                    break;
                }
            };
            if event.origin != 0 {
                // A cluster message: if it is one this worker sent, its sender's answer goes
                // now, before the push (it holds everything queued after it anyway).
                touched.extend(self.resolve_sent(event.origin, room, seq));
            }
            let (Ok(sender), Ok(text)) = (Name::new(&event.sender_name), Text::new(&event.text))
            else {
                continue;
            };
            let push = Push::ChatBroadcast(ChatBroadcast {
                room_id: room,
                message: RoomMessage {
                    seq,
                    sender_id: event.sender,
                    time_ms: event.time_ms,
                    sender,
                    text,
                },
            });
            let _ = write_push(frame, &push, proto::BODY_LEN_LIMIT);
            self.fan_out(members, seq, frame);
        }
        if seq != first {
            self.ctx.chat.cursors.insert(room, seq);
        }
        seq != first
    }

    /// Delivers the direct messages and credits in this worker's inbox to their recipients
    /// here, in inbox order. A credit whose transfer is not yet durable stops the pass: it and
    /// everything after it go on a later pass (the journal writer bumps the chat epoch each
    /// time it makes more durable).
    fn deliver_inbox(&mut self, touched: &mut Vec<usize>, frame: &mut Vec<u8>) {
        let inbox = u32::from(self.ctx.cfg.worker);
        let mut seq = self.ctx.chat.inbox_seq;
        let last = self.ctx.rooms.inbox_last_seq(inbox).unwrap_or(seq);
        let mut durable = None;
        while seq < last {
            let event = match self.ctx.rooms.inbox_read(inbox, seq + 1) {
                Ok(Read::Event(e)) => e,
                Ok(Read::Missed { oldest }) => {
                    // The inbox ring lapped this worker: those messages are lost, and counted.
                    self.ctx.metrics.pushes_dropped.add(oldest - seq - 1);
                    seq = oldest - 1;
                    continue;
                }
                Ok(Read::NotYet) | Err(_) => break,
            };
            if let Some(c) = event.credit {
                let durable = *durable.get_or_insert_with(|| shm::journal::durable(self.ctx.seg));
                if c.lsn > durable {
                    break;
                }
            }
            seq += 1;
            let Some(&(key, conn_id)) = self.ctx.chat.users.get(&event.target) else {
                self.ctx.metrics.pushes_dropped.add(1);
                continue;
            };
            let Ok(from) = Name::new(&event.sender_name) else {
                continue;
            };
            frame.clear();
            let push = match event.credit {
                Some(c) => Push::MoneyReceived(MoneyReceived {
                    txn_id: c.txn_id,
                    from_id: event.sender,
                    amount: c.amount,
                    time_ms: event.time_ms,
                    from,
                }),
                None => {
                    let Ok(text) = Text::new(&event.text) else {
                        continue;
                    };
                    Push::DirectMessage(DirectMessage {
                        from_id: event.sender,
                        time_ms: event.time_ms,
                        from,
                        text,
                    })
                }
            };
            let _ = write_push(frame, &push, proto::BODY_LEN_LIMIT);
            if let Some(conn) = self.conns.get_mut(key) {
                if conn.st.id == conn_id {
                    self.ctx.queue(&mut conn.st, frame.len(), |out| {
                        out.extend_from_slice(frame)
                    });
                    self.ctx.metrics.pushes_delivered.add(1);
                    touched.push(key);
                }
            }
        }
        self.ctx.chat.inbox_seq = seq;
    }

    /// Copies one encoded push into the queue of every local member of a room that joined
    /// before message `seq`.
    fn fan_out(&mut self, members: &[LocalMember], seq: u64, frame: &[u8]) {
        for m in members {
            if seq <= m.after_seq {
                continue;
            }
            let Some(conn) = self.conns.get_mut(m.key) else {
                continue;
            };
            if conn.st.id != m.conn_id {
                continue;
            }
            let ctx = &mut self.ctx;
            let before = conn.st.closing;
            ctx.queue(&mut conn.st, frame.len(), |out| {
                out.extend_from_slice(frame)
            });
            if conn.st.closing && !before {
                ctx.metrics.pushes_dropped.add(1);
            } else {
                ctx.metrics.pushes_delivered.add(1);
            }
        }
    }
}
