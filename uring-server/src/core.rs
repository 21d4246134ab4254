//! The protocol logic of a worker, shared by both I/O backends: connections, their decoders and
//! bounded output queues, the session state machine, login, and the handlers that turn requests
//! into shared-memory operations and responses. The backends only move bytes: they hand received
//! bytes to [`Core::on_bytes`] and send what [`Conn::out`] holds.

use std::os::fd::OwnedFd;

use crate::status::{opcode_index, txn_kind, HasStatus};
use proto::body::*;
use proto::codec::{List, Name};
use proto::codes::notice;
use proto::{
    write_error, write_push, write_response, DecodeError, Frame, FrameDecoder, FrameKind, Push,
    Request, Response, Status,
};
use shm::ledger::{self, Applied, Caller, LedgerError};
use shm::rooms::{MemberInfo, Read};
use shm::wake::WakeFds;
use shm::{Ledger, Rooms, Segment, SessionId, Users, WorkerMetrics};

use crate::chat::{Bucket, ChatLocal, LocalMember};
use crate::clock::Clock;
use slab::Slab;

/// What a worker needs to know from the command line.
#[derive(Debug, Clone)]
pub struct Config {
    /// This worker's index.
    pub worker: u16,
    /// Most connections.
    pub max_conns: usize,
    /// Idle timeout.
    pub idle_timeout_ms: u64,
    /// Largest body accepted.
    pub body_len_max: u32,
    /// Most bytes queued per connection.
    pub out_max_bytes: usize,
    /// Longest time a frame may take to arrive whole once its first byte came (slowloris).
    pub frame_timeout_ms: u64,
    /// Whether REGISTER is served.
    pub registration_open: bool,
    /// Flood limit: chat messages a user may send at once.
    pub flood_burst: u32,
    /// Flood limit: chat messages per second after the burst.
    pub flood_per_sec: u32,
}

/// How long a LOGIN challenge stays valid.
const CHALLENGE_TTL_MS: u64 = 10_000;
/// Consecutive failed proofs allowed before a user's logins are refused for a while.
const LOGIN_FAILURES_FREE: u32 = 3;
/// Longest lock-out after failed logins.
const LOGIN_LOCKOUT_MAX_MS: u64 = 60_000;
/// The server's name in HELLO.
const SERVER_LABEL: &str = concat!("uring-server/", env!("CARGO_PKG_VERSION"));

/// Bytes waiting to be sent on one connection. Appends go to `pending`; a send in flight reads
/// `sending`, which does not move or grow until the send completes (io_uring holds a pointer).
#[derive(Debug, Default)]
pub struct OutQueue {
    pending: Vec<u8>,
    sending: Vec<u8>,
    sent: usize,
}

impl OutQueue {
    /// Bytes not yet sent.
    pub fn len(&self) -> usize {
        self.pending.len() + self.sending.len() - self.sent
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The next bytes to send: the rest of `sending`, refilled from `pending` when empty.
    pub fn chunk(&mut self) -> &[u8] {
        if self.sent == self.sending.len() {
            self.sending.clear();
            self.sent = 0;
            std::mem::swap(&mut self.sending, &mut self.pending);
        }
        &self.sending[self.sent..]
    }

    /// Drops what is not yet being sent (a send in flight keeps its buffer until it completes).
    pub fn discard_pending(&mut self) {
        self.pending = Vec::new();
    }

    /// Records that `n` bytes of the last chunk were sent.
    pub fn advance(&mut self, n: usize) {
        debug_assert!(self.sent + n <= self.sending.len());
        self.sent = (self.sent + n).min(self.sending.len());
    }
}

/// Where a connection's session stands.
#[derive(Debug)]
enum Session {
    Connected,
    Challenged {
        user_id: u32,
        auth_message: Vec<u8>,
        expires_ms: u64,
    },
    LoggedIn {
        user_id: u32,
    },
}

/// Per-connection state the handlers change.
#[derive(Debug)]
pub struct ConnState {
    /// Worker-unique id (slab key and generation), as sessions record it.
    pub id: u64,
    /// Output waiting to be sent.
    pub out: OutQueue,
    session: Session,
    /// Last time a byte arrived.
    pub last_active_ms: u64,
    /// Close once the output is flushed; read nothing more.
    pub closing: bool,
    /// Close now, without flushing: the peer is not reading (slow consumer).
    pub abort: bool,
    /// When the frame now arriving in pieces began, if one is.
    partial_since_ms: Option<u64>,
    /// The slab key.
    key: usize,
    /// Rooms joined on this connection.
    rooms: Vec<u32>,
    /// The user's name once logged in (the sender name of its messages).
    name: String,
    /// Chat flood limit.
    bucket: Bucket,
}

/// What a backend tracks about a connection's operations in flight.
#[derive(Debug, Default, Clone, Copy)]
pub struct IoFlags {
    /// A (multishot) receive is armed.
    pub recv_armed: bool,
    /// A send is in flight (io_uring) or EPOLLOUT is registered (epoll).
    pub send_busy: bool,
    /// `shutdown(2)` was called to end the armed receive.
    pub shut: bool,
}

/// One client connection.
#[derive(Debug)]
pub struct Conn {
    /// The socket.
    pub fd: OwnedFd,
    decoder: FrameDecoder,
    /// The rest.
    pub st: ConnState,
    /// The backend's bookkeeping.
    pub io: IoFlags,
}

/// Everything a handler may touch besides the connection.
pub struct Ctx<'s> {
    /// Settings.
    pub cfg: Config,
    seg: &'s Segment,
    ledger: Ledger<'s>,
    users: Users<'s>,
    rooms: Rooms<'s>,
    chat: ChatLocal,
    wake_fds: Option<&'s WakeFds>,
    /// This worker's counters.
    pub metrics: &'s WorkerMetrics,
    /// Monotonic milliseconds at the current loop turn: for every timeout.
    pub now_ms: u64,
    /// Wall-clock milliseconds at the current loop turn: for timestamps people read.
    pub wall_ms: u64,
    clock: Box<dyn Clock>,
}

impl std::fmt::Debug for Ctx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// A worker's connections and context.
#[derive(Debug)]
pub struct Core<'s> {
    /// Open connections by key.
    pub conns: Slab<Conn>,
    /// The rest.
    pub ctx: Ctx<'s>,
    generation: u64,
    /// Set once a graceful stop began: when draining must end (monotonic ms).
    drain_deadline_ms: Option<u64>,
}

impl<'s> Core<'s> {
    /// A worker core on `seg`, using ledger slot `cfg.worker`, reading time from `clock`.
    pub fn new(
        cfg: Config,
        seg: &'s Segment,
        wake_fds: Option<&'s WakeFds>,
        clock: Box<dyn Clock>,
    ) -> anyhow::Result<Core<'s>> {
        let ledger = Ledger::attach(seg, u32::from(cfg.worker))?;
        let rooms = Rooms::of(seg);
        // A restarted worker's users are new connections: what its predecessor's inbox held
        // was for sessions that ended with it.
        let inbox_seq = rooms
            .inbox_last_seq(u32::from(cfg.worker))
            .map_err(|e| anyhow::anyhow!("worker {} has no inbox: {e}", cfg.worker))?;
        let metrics = shm::Metrics::of(seg)
            .worker(usize::from(cfg.worker))
            .ok_or_else(|| anyhow::anyhow!("no metrics block for worker {}", cfg.worker))?;
        Ok(Core {
            conns: Slab::with_capacity(cfg.max_conns.min(1 << 16)),
            ctx: Ctx {
                users: Users::of(seg),
                rooms,
                chat: ChatLocal {
                    inbox_seq,
                    ..ChatLocal::default()
                },
                wake_fds,
                seg,
                ledger,
                metrics,
                now_ms: clock.mono_ms(),
                wall_ms: clock.wall_ms(),
                clock,
                cfg,
            },
            generation: 0,
            drain_deadline_ms: None,
        })
    }

    /// Takes a new connection, or refuses it over the limit (ERR_SERVER_BUSY, then close).
    pub fn accept(&mut self, fd: OwnedFd) -> Option<usize> {
        let m = self.ctx.metrics;
        if self.conns.len() >= self.ctx.cfg.max_conns {
            let mut frame = Vec::new();
            write_error(
                &mut frame,
                0,
                0,
                Status::ErrServerBusy,
                "too many connections",
            );
            // Best effort: the socket is new, so its buffer has room for one small frame.
            let _ = nix::unistd::write(&fd, &frame);
            m.conns_refused.add(1);
            m.statuses[Status::ErrServerBusy.as_u16() as usize].add(1);
            return None;
        }
        self.generation += 1;
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        let id = (self.generation << 24 | key as u64) & ((1 << 48) - 1);
        entry.insert(Conn {
            fd,
            decoder: FrameDecoder::new(self.ctx.cfg.body_len_max),
            st: ConnState {
                id,
                out: OutQueue::default(),
                session: Session::Connected,
                last_active_ms: self.ctx.now_ms,
                closing: false,
                abort: false,
                partial_since_ms: None,
                key,
                rooms: Vec::new(),
                name: String::new(),
                bucket: Bucket::new(self.ctx.cfg.flood_burst, self.ctx.now_ms),
            },
            io: IoFlags::default(),
        });
        m.conns_accepted.add(1);
        m.conns_active.set(self.conns.len() as u64);
        Some(key)
    }

    /// Handles bytes received on connection `key`: every whole frame in them is answered into
    /// its output queue. Afterwards the connection may be marked closing.
    pub fn on_bytes(&mut self, key: usize, data: &[u8]) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let ctx = &mut self.ctx;
        ctx.metrics.bytes_in.add(data.len() as u64);
        conn.st.last_active_ms = ctx.now_ms;
        let Conn { decoder, st, .. } = conn;
        let mut input = data;
        while !st.closing {
            let (used, result) = decoder.decode(input);
            input = &input[used..];
            match result {
                Ok(Some(frame)) => ctx.handle(st, &frame),
                Ok(None) => break,
                Err(e) => ctx.bad_frame(st, &e),
            }
        }
        // A frame left cut starts (or keeps) its clock; a whole one stops it.
        st.partial_since_ms = if decoder.is_idle() {
            None
        } else {
            st.partial_since_ms.or(Some(ctx.now_ms))
        };
    }

    /// Reads the clock: every timeout and timestamp of this loop turn uses this time.
    pub fn tick_clock(&mut self) {
        self.ctx.now_ms = self.ctx.clock.mono_ms();
        self.ctx.wall_ms = self.ctx.clock.wall_ms();
    }

    /// Removes connection `key`, ending its session. Returns it so the backend closes the fd.
    pub fn remove(&mut self, key: usize) -> Option<Conn> {
        let mut conn = self.conns.try_remove(key)?;
        self.ctx.end_session(&mut conn.st);
        let m = self.ctx.metrics;
        m.conns_closed.add(1);
        m.conns_active.set(self.conns.len() as u64);
        Some(conn)
    }

    /// Once a second: closes idle connections and ones whose session was taken over by a newer
    /// login on another worker. Returns the keys it marked closing.
    pub fn sweep(&mut self) -> Vec<usize> {
        let mut marked = Vec::new();
        for (key, conn) in self.conns.iter_mut() {
            if conn.st.closing {
                continue;
            }
            let slow_frame = conn
                .st
                .partial_since_ms
                .is_some_and(|t| self.ctx.now_ms.saturating_sub(t) > self.ctx.cfg.frame_timeout_ms);
            if slow_frame {
                // Slowloris: bytes keep coming, a frame never completes.
                self.ctx.metrics.idle_timeouts.add(1);
                self.ctx.error(
                    &mut conn.st,
                    0,
                    0,
                    Status::ErrTimeout,
                    "a frame took too long to arrive: closing",
                );
                conn.st.closing = true;
                marked.push(key);
            } else if self.ctx.now_ms.saturating_sub(conn.st.last_active_ms)
                > self.ctx.cfg.idle_timeout_ms
            {
                self.ctx.metrics.idle_timeouts.add(1);
                self.ctx
                    .notice(&mut conn.st, notice::IDLE_TIMEOUT, "idle timeout: closing");
                conn.st.closing = true;
                marked.push(key);
            } else if self.ctx.superseded(&conn.st) {
                self.ctx.kick_superseded(&mut conn.st);
                marked.push(key);
            }
        }
        marked
    }

    /// The chat epoch word in shared memory (a futex the loop can wait on) and the value this
    /// worker last delivered at.
    pub fn chat_epoch(&self) -> (&'s std::sync::atomic::AtomicU32, u32) {
        (shm::wake::epoch(self.ctx.seg), self.ctx.chat.epoch_seen)
    }

    /// Delivers every room message this worker has not yet pushed to its local members, if the
    /// chat epoch moved. Each message is encoded once and copied into each member's queue.
    /// Returns the connections that got output.
    pub fn deliver(&mut self) -> Vec<usize> {
        let epoch = shm::wake::epoch(self.ctx.seg).load(std::sync::atomic::Ordering::Acquire);
        if epoch == self.ctx.chat.epoch_seen {
            return Vec::new();
        }
        self.ctx.chat.epoch_seen = epoch;
        let mut touched = Vec::new();
        let mut frame = Vec::with_capacity(256);
        self.deliver_inbox(&mut touched, &mut frame);
        let rooms: Vec<u32> = self.ctx.chat.members.keys().copied().collect();
        for room in rooms {
            let Ok(last) = self.ctx.rooms.last_seq(room) else {
                continue;
            };
            let mut seq = self.ctx.chat.cursors.get(&room).copied().unwrap_or(last);
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
                        let _ = write_push(&mut frame, &gap, proto::BODY_LEN_LIMIT);
                        self.fan_out(room, seq, &frame, &mut touched);
                        seq = oldest - 1;
                        continue;
                    }
                    Ok(Read::NotYet) | Err(_) => break,
                };
                let (Ok(sender), Ok(text)) =
                    (Name::new(&event.sender_name), Text::new(&event.text))
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
                let _ = write_push(&mut frame, &push, proto::BODY_LEN_LIMIT);
                self.fan_out(room, seq, &frame, &mut touched);
            }
            self.ctx.chat.cursors.insert(room, seq);
        }
        touched
    }

    /// Delivers the direct messages in this worker's inbox to their recipients here.
    fn deliver_inbox(&mut self, touched: &mut Vec<usize>, frame: &mut Vec<u8>) {
        let inbox = u32::from(self.ctx.cfg.worker);
        let mut seq = self.ctx.chat.inbox_seq;
        let last = self.ctx.rooms.inbox_last_seq(inbox).unwrap_or(seq);
        while seq < last {
            seq += 1;
            let event = match self.ctx.rooms.inbox_read(inbox, seq) {
                Ok(Read::Event(e)) => e,
                Ok(Read::Missed { oldest }) => {
                    // The inbox ring lapped this worker: those messages are lost, and counted.
                    self.ctx.metrics.pushes_dropped.add(oldest - seq);
                    seq = oldest - 1;
                    continue;
                }
                Ok(Read::NotYet) | Err(_) => break,
            };
            let Some(&(key, conn_id)) = self.ctx.chat.users.get(&event.target) else {
                self.ctx.metrics.pushes_dropped.add(1);
                continue;
            };
            let (Ok(from), Ok(text)) = (Name::new(&event.sender_name), Text::new(&event.text))
            else {
                continue;
            };
            frame.clear();
            let push = Push::DirectMessage(DirectMessage {
                from_id: event.sender,
                time_ms: event.time_ms,
                from,
                text,
            });
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

    /// Copies one encoded push into the queue of every local member of `room` that joined
    /// before message `seq`.
    fn fan_out(&mut self, room: u32, seq: u64, frame: &[u8], touched: &mut Vec<usize>) {
        // Taken out of the map while the queues are filled (which needs the context mutably).
        let Some(members) = self.ctx.chat.members.remove(&room) else {
            return;
        };
        for m in &members {
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
            touched.push(m.key);
        }
        self.ctx.chat.members.insert(room, members);
    }

    /// Shutdown: tells every client, and closes after their output is flushed.
    /// The backend stops accepting first. Returns every connection, for the backend to flush.
    pub fn begin_shutdown(&mut self, grace: std::time::Duration) -> Vec<usize> {
        tracing::info!(
            conns = self.conns.len(),
            "shutting down: draining connections"
        );
        self.drain_deadline_ms = Some(self.ctx.now_ms + grace.as_millis() as u64);
        for (_, conn) in self.conns.iter_mut() {
            if !conn.st.closing {
                self.ctx
                    .notice(&mut conn.st, notice::SHUTTING_DOWN, "server shutting down");
                conn.st.closing = true;
            }
        }
        self.conns.iter().map(|(k, _)| k).collect()
    }

    /// True once a graceful stop began.
    pub fn shutting_down(&self) -> bool {
        self.drain_deadline_ms.is_some()
    }

    /// True when a graceful stop began and every connection is gone or the grace ran out.
    pub fn drained(&self) -> bool {
        self.drain_deadline_ms
            .is_some_and(|d| self.conns.is_empty() || self.ctx.now_ms >= d)
    }

    /// Removes every connection left (their fds close as they drop).
    pub fn close_all(&mut self) {
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for k in keys {
            self.remove(k);
        }
    }
}

impl Ctx<'_> {
    fn session_id(&self, st: &ConnState) -> SessionId {
        SessionId {
            worker: self.cfg.worker,
            conn: st.id,
        }
    }

    /// True when the connection is logged in but a newer login of its user took the session.
    fn superseded(&self, st: &ConnState) -> bool {
        match st.session {
            Session::LoggedIn { user_id } => {
                self.users.session(user_id) != Some(self.session_id(st))
            }
            _ => false,
        }
    }

    /// Ends a connection whose session a newer login took: it is told, reads nothing more, and
    /// closes once that is flushed. Its rooms and online state now belong to the newer session.
    fn kick_superseded(&mut self, st: &mut ConnState) {
        self.notice(
            st,
            notice::LOGGED_IN_ELSEWHERE,
            "logged in on another connection",
        );
        st.session = Session::Connected;
        st.closing = true;
    }

    /// The ledger caller for a request of `user` on this connection: fenced by its session.
    fn caller(&self, st: &ConnState, user: u32) -> Caller {
        Caller {
            user,
            session: Some(self.session_id(st)),
        }
    }

    /// Ends a session: leaves its rooms and marks the user offline (if still this session).
    fn end_session(&mut self, st: &mut ConnState) {
        if let Session::LoggedIn { user_id } = st.session {
            for room in std::mem::take(&mut st.rooms) {
                let _ = self.rooms.leave(room, user_id);
                self.chat.leave(room, st.id);
            }
            self.users.set_offline(user_id, self.session_id(st));
            if self
                .chat
                .users
                .get(&user_id)
                .is_some_and(|&(_, id)| id == st.id)
            {
                self.chat.users.remove(&user_id);
            }
        }
    }

    /// Queues bytes written by `write` unless that would pass the connection's bound, in which
    /// case the connection is closed as a slow consumer.
    fn queue(&mut self, st: &mut ConnState, frame_len: usize, write: impl FnOnce(&mut Vec<u8>)) {
        if st.closing {
            return;
        }
        if st.out.len() + frame_len > self.cfg.out_max_bytes {
            // The peer does not read: waiting to flush could take forever, so its queued output
            // is dropped and the connection closed at once (Redis's and NATS's policy).
            tracing::info!(
                conn = st.id,
                queued = st.out.len(),
                "slow consumer: disconnecting"
            );
            self.metrics.slow_consumer_disconnects.add(1);
            st.closing = true;
            st.abort = true;
            st.out.discard_pending();
            return;
        }
        let before = st.out.pending.len();
        write(&mut st.out.pending);
        self.metrics
            .bytes_out
            .add((st.out.pending.len() - before) as u64);
    }

    fn respond(&mut self, st: &mut ConnState, req_id: u64, resp: &Response<'_>) {
        self.metrics.statuses[0].add(1);
        let body_len_max = proto::BODY_LEN_LIMIT;
        self.queue(st, proto::HEADER_LEN + resp.encoded_len(), |out| {
            // Bodies the handlers build are bounded well below the limit.
            let _ = write_response(out, req_id, resp, body_len_max);
        });
    }

    fn error(&mut self, st: &mut ConnState, req_id: u64, opcode: u16, status: Status, msg: &str) {
        self.metrics.statuses[status.as_u16() as usize].add(1);
        tracing::debug!(
            conn = st.id,
            req_id,
            opcode,
            status = status.name(),
            msg,
            "error response"
        );
        self.queue(st, proto::HEADER_LEN + 2 + msg.len().min(256), |out| {
            write_error(out, req_id, opcode, status, msg)
        });
    }

    fn notice(&mut self, st: &mut ConnState, code: u16, text: &str) {
        let Ok(text) = Message::new(text) else {
            return;
        };
        let push = Push::Notice(NoticePush { code, text });
        self.queue(st, proto::HEADER_LEN + push.encoded_len(), |out| {
            let _ = write_push(out, &push, proto::BODY_LEN_LIMIT);
        });
    }

    /// A frame the decoder refused: answer it, and close if the stream is lost.
    fn bad_frame(&mut self, st: &mut ConnState, e: &DecodeError) {
        self.metrics.bad_frames.add(1);
        let (req_id, opcode) = e.header().map_or((0, 0), |h| (h.req_id, h.opcode));
        tracing::debug!(conn = st.id, error = %e, "bad frame");
        self.error(st, req_id, opcode, e.status(), &e.to_string());
        if e.is_fatal() {
            st.closing = true;
        }
    }

    /// Answers one verified frame.
    fn handle(&mut self, st: &mut ConnState, frame: &Frame<'_>) {
        let h = frame.header;
        let op = h.opcode;
        self.metrics.requests[opcode_index(op)].add(1);
        if h.kind() != FrameKind::Request {
            return self.error(
                st,
                h.req_id,
                op.as_u16(),
                Status::ErrBadPacket,
                "only requests may be sent to the server",
            );
        }
        if h.flags.is_encrypted() || h.flags.is_compressed() {
            return self.error(
                st,
                h.req_id,
                op.as_u16(),
                Status::ErrUnsupported,
                "encrypted and compressed bodies are not supported",
            );
        }
        let req = match frame.request() {
            Ok(r) => r,
            Err(e) => {
                return self.error(
                    st,
                    h.req_id,
                    op.as_u16(),
                    Status::ErrBadPacket,
                    &e.to_string(),
                )
            }
        };
        let logged_in = match st.session {
            Session::LoggedIn { user_id } => Some(user_id),
            _ => None,
        };
        if logged_in.is_some() && self.superseded(st) {
            // A newer login took the session: nothing this connection sends is executed any
            // more, even if its bytes were read before the newer login's worker told us.
            self.error(
                st,
                h.req_id,
                op.as_u16(),
                Status::ErrSessionSuperseded,
                &LedgerError::SessionSuperseded.to_string(),
            );
            return self.kick_superseded(st);
        }
        if logged_in.is_none() && !op.allowed_before_login() {
            return self.error(
                st,
                h.req_id,
                op.as_u16(),
                Status::ErrUnauthorized,
                "log in first",
            );
        }
        tracing::trace!(
            conn = st.id,
            req_id = h.req_id,
            opcode = op.name(),
            "request"
        );
        let id = h.req_id;
        let result = match (req, logged_in) {
            (Request::Hello(_), _) => {
                let resp = self.hello();
                self.respond(st, id, &resp);
                Ok(())
            }
            (Request::Heartbeat(hb), _) => {
                let resp = Response::Heartbeat(HeartbeatResponse {
                    client_time_ms: hb.client_time_ms,
                    server_time_ms: self.wall_ms,
                });
                self.respond(st, id, &resp);
                Ok(())
            }
            (Request::Register(r), None) => self.register(st, id, &r),
            (Request::Login(l), None) => self.login(st, id, &l),
            (Request::LoginProof(p), None) => self.login_proof(st, id, &p),
            (Request::Register(_) | Request::Login(_) | Request::LoginProof(_), Some(_)) => {
                Err((Status::ErrBadState, "already logged in".to_string()))
            }
            (Request::Logout(_), Some(_)) => {
                self.end_session(st);
                st.session = Session::Connected;
                self.respond(st, id, &Response::Logout(Empty {}));
                Ok(())
            }
            (req, Some(user)) => self.operation(st, user, id, req),
            (_, None) => Err((Status::ErrUnauthorized, "log in first".to_string())),
        };
        if let Err((status, msg)) = result {
            self.error(st, id, op.as_u16(), status, &msg);
            if status == Status::ErrSessionSuperseded {
                self.kick_superseded(st);
            }
        }
    }

    fn hello(&self) -> Response<'static> {
        let server = Label::new(SERVER_LABEL)
            .or_else(|_| Label::new("uring-server"))
            .unwrap_or_else(|_| unreachable!("both labels are under 64 bytes"));
        Response::Hello(HelloResponse {
            server,
            worker_id: self.cfg.worker,
            body_len_max: self.cfg.body_len_max,
            heartbeat_interval_ms: (self.cfg.idle_timeout_ms / 3).min(u64::from(u32::MAX)) as u32,
            idle_timeout_ms: self.cfg.idle_timeout_ms.min(u64::from(u32::MAX)) as u32,
            server_time_ms: self.wall_ms,
        })
    }

    fn register(&mut self, st: &mut ConnState, id: u64, r: &RegisterRequest<'_>) -> Handled {
        if !self.cfg.registration_open {
            return Err((
                Status::ErrRegistrationClosed,
                "registration is closed: ask the operator (uring-server adduser)".into(),
            ));
        }
        let creds = shm::Credentials {
            salt: r.salt.as_bytes().to_vec(),
            iterations: r.iterations,
            stored_key: r.stored_key,
            server_key: r.server_key,
        };
        let user_id = self
            .users
            .register(r.username.as_str(), &creds)
            .map_err(|e| (e.status(), e.to_string()))?;
        tracing::info!(user = r.username.as_str(), user_id, "registered");
        self.respond(st, id, &Response::Register(RegisterResponse { user_id }));
        Ok(())
    }

    fn login(&mut self, st: &mut ConnState, id: u64, l: &LoginRequest<'_>) -> Handled {
        let name = l.username.as_str();
        let user_id = self.users.lookup(name).ok_or_else(|| {
            (
                Status::ErrNotFound,
                format!("no user {name}: REGISTER first"),
            )
        })?;
        let (failures, last_failure_ms) = self.users.login_failures(user_id);
        if failures >= LOGIN_FAILURES_FREE {
            let lockout =
                (1000u64 << (failures - LOGIN_FAILURES_FREE).min(16)).min(LOGIN_LOCKOUT_MAX_MS);
            let until = last_failure_ms + lockout;
            if self.wall_ms < until {
                return Err((
                    Status::ErrRateLimited,
                    format!(
                        "{failures} failed logins: retry in {} ms",
                        until - self.wall_ms
                    ),
                ));
            }
        }
        let creds = self
            .users
            .credentials(user_id)
            .ok_or_else(|| (Status::ErrNotFound, format!("no user {name}")))?;
        let mut server_nonce = [0u8; 24];
        getrandom::fill(&mut server_nonce)
            .map_err(|_| (Status::ErrInternal, "no randomness".to_string()))?;
        let (Ok(salt), Ok(nonce)) = (Salt::new(&creds.salt), Nonce::new(&server_nonce)) else {
            return Err((Status::ErrInternal, "stored salt out of bounds".into()));
        };
        let resp = Response::Login(LoginResponse {
            salt,
            iterations: creds.iterations,
            server_nonce: nonce,
        });
        let auth_message = proto::scram::auth_message(
            name,
            l.client_nonce.as_bytes(),
            &server_nonce,
            &creds.salt,
            creds.iterations,
        );
        self.respond(st, id, &resp);
        st.session = Session::Challenged {
            user_id,
            auth_message,
            expires_ms: self.now_ms + CHALLENGE_TTL_MS,
        };
        Ok(())
    }

    fn login_proof(&mut self, st: &mut ConnState, id: u64, p: &LoginProofRequest) -> Handled {
        let Session::Challenged {
            user_id,
            auth_message,
            expires_ms,
        } = std::mem::replace(&mut st.session, Session::Connected)
        else {
            return Err((Status::ErrBadState, "send LOGIN first".into()));
        };
        if self.now_ms > expires_ms {
            return Err((
                Status::ErrTimeout,
                "login challenge expired: LOGIN again".into(),
            ));
        }
        let creds = self
            .users
            .credentials(user_id)
            .ok_or_else(|| (Status::ErrNotFound, "user vanished".to_string()))?;
        if !proto::scram::verify_client_proof(&creds.stored_key, &auth_message, &p.client_proof) {
            let failures = self.users.note_login_failure(user_id, self.wall_ms);
            tracing::info!(user_id, failures, "failed login");
            return Err((Status::ErrUnauthorized, "wrong password".into()));
        }
        self.users.note_login_success(user_id);
        let sid = self.session_id(st);
        if let Ok(Some(previous)) = self.users.set_online(user_id, sid) {
            // The newer session wins; the older one's worker notices on its next sweep.
            tracing::info!(user_id, ?previous, "login replaces an older session");
        }
        st.session = Session::LoggedIn { user_id };
        st.name = self.users.name(user_id).unwrap_or_default();
        self.chat.users.insert(user_id, (st.key, st.id));
        let server_signature = proto::scram::server_signature_of(&creds.server_key, &auth_message);
        self.respond(
            st,
            id,
            &Response::LoginProof(LoginProofResponse {
                server_signature,
                user_id,
                req_id_hw: ledger::req_id_hw(self.seg, user_id).unwrap_or(0),
                req_id_window: ledger::results_per_user(self.seg),
            }),
        );
        Ok(())
    }

    /// Requests of a logged-in user.
    fn operation(&mut self, st: &mut ConnState, user: u32, id: u64, req: Request<'_>) -> Handled {
        let applied = |r: Result<Applied, LedgerError>| {
            r.map(|a| LedgerResponse {
                balance: a.balance,
                txn_id: a.txn_id,
            })
            .map_err(|e| (e.status(), e.to_string()))
        };
        let resp = match req {
            Request::Deposit(a) => {
                let caller = self.caller(st, user);
                Response::Deposit(applied(self.ledger.deposit(caller, id, a.amount))?)
            }
            Request::Withdraw(a) => {
                let caller = self.caller(st, user);
                Response::Withdraw(applied(self.ledger.withdraw(caller, id, a.amount))?)
            }
            Request::Transfer(t) => {
                let to = match t.to {
                    Target::Id(to) => to,
                    Target::Name(n) => self
                        .users
                        .lookup(n.as_str())
                        .ok_or_else(|| (Status::ErrNotFound, format!("no user {}", n.as_str())))?,
                };
                let caller = self.caller(st, user);
                Response::Transfer(applied(self.ledger.transfer(caller, to, id, t.amount))?)
            }
            Request::Balance(_) => Response::Balance(BalanceResponse {
                balance: ledger::balance(self.seg, user)
                    .map_err(|e| (e.status(), e.to_string()))?,
            }),
            Request::TxnHistory(q) => {
                let limit = usize::from(q.limit).min(self.list_limit(TXN_ENTRY_LEN));
                let txns = ledger::history(self.seg, user, q.before_txn_id, limit)
                    .map_err(|e| (e.status(), e.to_string()))?
                    .into_iter()
                    .map(|t| TxnEntry {
                        txn_id: t.txn_id,
                        kind: txn_kind(t.kind),
                        from_id: t.from,
                        to_id: t.to,
                        amount: t.amount,
                        balance_after: if t.from == user {
                            t.from_balance
                        } else {
                            t.to_balance
                        },
                        time_ms: t.time_ms,
                    })
                    .collect();
                Response::TxnHistory(TxnHistoryResponse {
                    txns: List::new(txns).map_err(|e| (Status::ErrInternal, e.to_string()))?,
                })
            }
            Request::ListUsers(q) => {
                let limit = usize::from(q.limit).min(self.list_limit(4 + 2 + 32));
                let ids = self.users.online_after(q.after_id, limit);
                let names: Vec<(u32, String)> = ids
                    .into_iter()
                    .filter_map(|id| self.users.name(id).map(|n| (id, n)))
                    .collect();
                let users = names
                    .iter()
                    .filter_map(|(id, n)| {
                        Name::new(n)
                            .ok()
                            .map(|name| UserEntry { user_id: *id, name })
                    })
                    .collect();
                let resp = Response::ListUsers(ListUsersResponse {
                    users: List::new(users).map_err(|e| (Status::ErrInternal, e.to_string()))?,
                });
                self.respond(st, id, &resp);
                return Ok(());
            }
            Request::JoinRoom(j) => {
                let joined = self
                    .rooms
                    .join(
                        j.room.as_str(),
                        MemberInfo {
                            user,
                            worker: u32::from(self.cfg.worker),
                            conn: st.id,
                        },
                    )
                    .map_err(|e| (e.status(), e.to_string()))?;
                if !st.rooms.contains(&joined.room_id) {
                    st.rooms.push(joined.room_id);
                }
                self.chat.join(
                    joined.room_id,
                    LocalMember {
                        key: st.key,
                        conn_id: st.id,
                        after_seq: joined.last_seq,
                    },
                    joined.last_seq,
                );
                Response::JoinRoom(JoinRoomResponse {
                    room_id: joined.room_id,
                    last_seq: joined.last_seq,
                    members: joined.members,
                })
            }
            Request::LeaveRoom(l) => {
                self.rooms
                    .leave(l.room_id, user)
                    .map_err(|e| (e.status(), e.to_string()))?;
                st.rooms.retain(|&r| r != l.room_id);
                self.chat.leave(l.room_id, st.id);
                Response::LeaveRoom(Empty {})
            }
            Request::ChatSend(c) => {
                if !st.rooms.contains(&c.room_id) {
                    let status = if self.rooms.last_seq(c.room_id).is_ok() {
                        Status::ErrNotMember
                    } else {
                        Status::ErrNotFound
                    };
                    return Err((status, format!("not in room {}", c.room_id)));
                }
                self.flood_check(st)?;
                let seq = self
                    .rooms
                    .publish(c.room_id, user, &st.name, c.text.as_str(), self.wall_ms)
                    .map_err(|e| (e.status(), e.to_string()))?;
                shm::wake::notify_all(self.seg, self.wake_fds);
                Response::ChatSend(ChatSendResponse { seq })
            }
            Request::ListRooms(q) => {
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
                    rooms: List::new(rooms).map_err(|e| (Status::ErrInternal, e.to_string()))?,
                });
                self.respond(st, id, &resp);
                return Ok(());
            }
            Request::RoomHistory(q) => return self.history(st, id, &q),
            Request::DirectSend(d) => {
                let to = self
                    .users
                    .lookup(d.to.as_str())
                    .ok_or_else(|| (Status::ErrNotFound, format!("no user {}", d.to.as_str())))?;
                if to == user {
                    return Err((Status::ErrInvalidArgument, "a message to oneself".into()));
                }
                let session = self.users.session(to).ok_or_else(|| {
                    (
                        Status::ErrUserOffline,
                        format!("{} is offline", d.to.as_str()),
                    )
                })?;
                self.flood_check(st)?;
                self.rooms
                    .inbox_publish(
                        u32::from(session.worker),
                        user,
                        to,
                        &st.name,
                        d.text.as_str(),
                        self.wall_ms,
                    )
                    .map_err(|e| (e.status(), e.to_string()))?;
                shm::wake::notify_all(self.seg, self.wake_fds);
                Response::DirectSend(DirectSendResponse { to_user_id: to })
            }
            _ => return Err((Status::ErrBadPacket, "not an operation".into())),
        };
        self.respond(st, id, &resp);
        Ok(())
    }

    /// Takes a token from the sender's flood-limit bucket, or says when to retry.
    fn flood_check(&self, st: &mut ConnState) -> Handled {
        let (burst, rate) = (self.cfg.flood_burst, self.cfg.flood_per_sec);
        st.bucket.take(burst, rate, self.now_ms).map_err(|wait_ms| {
            (
                Status::ErrRateLimited,
                format!("flood limit: retry in {wait_ms} ms"),
            )
        })
    }

    /// ROOM_HISTORY: messages after `after_seq` still in the ring, within the body limit.
    fn history(&mut self, st: &mut ConnState, id: u64, q: &RoomHistoryRequest) -> Handled {
        let last_seq = self
            .rooms
            .last_seq(q.room_id)
            .map_err(|e| (e.status(), e.to_string()))?;
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
            messages: List::new(messages).map_err(|e| (Status::ErrInternal, e.to_string()))?,
        });
        self.respond(st, id, &resp);
        Ok(())
    }

    /// Most list entries of `entry_len` bytes that fit the body limit.
    fn list_limit(&self, entry_len: usize) -> usize {
        ((self.cfg.body_len_max as usize).saturating_sub(64) / entry_len).min(LIST_LEN_MAX)
    }
}

/// Bytes one TXN_HISTORY entry takes.
const TXN_ENTRY_LEN: usize = 8 + 1 + 4 + 4 + 8 + 8 + 8;

/// Handlers respond themselves, or return the error status and message.
type Handled = Result<(), (Status, String)>;
