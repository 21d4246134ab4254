//! Rooms: JOIN_ROOM, LEAVE_ROOM, CHAT_SEND (with the per-user flood limit), LIST_ROOMS and
//! ROOM_HISTORY. Pushes to members are `pushes.rs`.

use proto::body::*;
use proto::codec::{List, Name};
use proto::{Response, Status};
use shm::rooms::{MemberInfo, Read};

use super::error::{Handled, HandlerError};
use super::{ConnState, Ctx};
use crate::chat::LocalMember;

impl Ctx<'_> {
    pub(super) fn join_room(
        &mut self,
        st: &mut ConnState,
        user: u32,
        id: u64,
        j: &JoinRoomRequest<'_>,
    ) -> Handled {
        let who = MemberInfo {
            user,
            worker: u32::from(self.cfg.worker),
            conn: st.id,
        };
        let joined = self.rooms.join(j.room.as_str(), who)?;
        if !st.rooms.contains(&joined.room_id) {
            st.rooms.push(joined.room_id);
        }
        let member = LocalMember {
            key: st.key,
            conn_id: st.id,
            after_seq: joined.last_seq,
        };
        self.chat.join(joined.room_id, member, joined.last_seq);
        let resp = Response::JoinRoom(JoinRoomResponse {
            room_id: joined.room_id,
            last_seq: joined.last_seq,
            members: joined.members,
        });
        self.respond(st, id, &resp);
        Ok(())
    }

    pub(super) fn leave_room(
        &mut self,
        st: &mut ConnState,
        user: u32,
        id: u64,
        room_id: u32,
    ) -> Handled {
        self.rooms.leave(room_id, user)?;
        st.rooms.retain(|&r| r != room_id);
        self.chat.leave(room_id, st.id);
        self.respond(st, id, &Response::LeaveRoom(Empty {}));
        Ok(())
    }

    pub(super) fn chat_send(
        &mut self,
        st: &mut ConnState,
        user: u32,
        id: u64,
        c: &ChatSendRequest<'_>,
    ) -> Handled {
        if !st.rooms.contains(&c.room_id) {
            let status = if self.rooms.last_seq(c.room_id).is_ok() {
                Status::ErrNotMember
            } else {
                Status::ErrNotFound
            };
            return Err(HandlerError::new(
                status,
                format!("not in room {}", c.room_id),
            ));
        }
        self.flood_check(st)?;
        if self.cluster.is_some() {
            return self.cluster_send(st, user, id, c);
        }
        let seq = self
            .rooms
            .publish(c.room_id, user, &st.name, c.text.as_str(), self.wall_ms)?;
        self.wake_pending = true;
        self.respond(st, id, &Response::ChatSend(ChatSendResponse { seq }));
        Ok(())
    }

    /// Takes a token from the sender's flood-limit bucket, or says when to retry.
    pub(super) fn flood_check(&self, st: &mut ConnState) -> Handled {
        let (burst, rate) = (self.cfg.flood_burst, self.cfg.flood_per_sec);
        st.bucket.take(burst, rate, self.now_ms).map_err(|wait_ms| {
            HandlerError::new(
                Status::ErrRateLimited,
                format!("flood limit: retry in {wait_ms} ms"),
            )
        })
    }

    pub(super) fn list_rooms(&mut self, st: &mut ConnState, id: u64, q: &PageRequest) -> Handled {
        let limit = usize::from(q.limit).min(self.list_limit(4 + 4 + 8 + 2 + 32));
        let infos = self.rooms.list(q.after_id, limit);
        let rooms = infos
            .iter()
            .filter_map(|r| {
                Name::new(&r.name).ok().map(|name| RoomEntry {
                    room_id: r.room_id,
                    members: r.members,
                    last_seq: r.last_seq,
                    name,
                })
            })
            .collect();
        let resp = Response::ListRooms(ListRoomsResponse {
            rooms: List::new(rooms)?,
        });
        self.respond(st, id, &resp);
        Ok(())
    }

    /// ROOM_HISTORY: messages after `after_seq` still in the ring, within the body limit.
    pub(super) fn room_history(
        &mut self,
        st: &mut ConnState,
        id: u64,
        q: &RoomHistoryRequest,
    ) -> Handled {
        let last_seq = self.rooms.last_seq(q.room_id)?;
        let budget = (self.cfg.body_len_max as usize).saturating_sub(64);
        let mut events = Vec::new();
        let mut missed = 0u64;
        let mut bytes = 0usize;
        let mut seq = q.after_seq + 1;
        while seq <= last_seq && events.len() < usize::from(q.limit).min(LIST_LEN_MAX) {
            match self.rooms.read(q.room_id, seq) {
                Ok(Read::Event(e)) => {
                    let len = 8 + 4 + 8 + 2 + e.sender_name.len() + 2 + e.text.len();
                    if bytes + len > budget {
                        break;
                    }
                    bytes += len;
                    events.push(e);
                    seq += 1;
                }
                Ok(Read::Missed { oldest }) => {
                    missed += oldest.saturating_sub(seq);
                    seq = oldest;
                }
                Ok(Read::NotYet) | Err(_) => break,
            }
        }
        let messages = events
            .iter()
            .filter_map(|e| {
                let sender = Name::new(&e.sender_name).ok()?;
                let text = Text::new(&e.text).ok()?;
                Some(RoomMessage {
                    seq: e.seq,
                    sender_id: e.sender,
                    time_ms: e.time_ms,
                    sender,
                    text,
                })
            })
            .collect();
        let resp = Response::RoomHistory(RoomHistoryResponse {
            last_seq,
            missed,
            messages: List::new(messages)?,
        });
        self.respond(st, id, &resp);
        Ok(())
    }
}
