//! The protocol logic of a worker, shared by both I/O backends: connections, their decoders and
//! bounded output queues, the session state machine, login, and the handlers that turn requests
//! into shared-memory operations and responses. The backends only move bytes: they hand received
//! bytes to [`Core::on_bytes`] and send what [`Core::take_output`] hands them, owning each
//! buffer until the kernel is done with it ([`Core::recycle`] gives it back).

mod cluster;
mod directory;
mod dispatch;
mod error;
mod ledger_ops;
mod output;
mod pushes;
mod rooms;
mod session;
mod timers;
mod tls;

pub use error::{Handled, HandlerError};
pub use output::OutQueue;

use proto::body::*;
use proto::codes::notice;
use proto::{write_error, FrameDecoder, Status};
use shm::ledger::Caller;
use shm::wake::WakeFds;
use shm::{Ledger, Rooms, Segment, SessionId, Users, WorkerMetrics};

use crate::chat::{Bucket, ChatLocal};
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
    /// io_uring's batching wait after a fan-out turn, µs (0: off).
    pub batch_wait_us: u32,
    /// How many workers the server runs (the modulus of CPU steering).
    pub workers: u16,
    /// Steer connections to listener `CPU % workers` (`--steer cpu`), not by hash.
    pub steer_by_cpu: bool,
    /// The CPU this worker is pinned to, if any (`--cpu-affinity`).
    pub cpu: Option<usize>,
    /// TLS on every connection (`--tls-cert`), or plaintext.
    pub tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    /// Longest time a TLS handshake may take before the connection is closed.
    pub tls_handshake_timeout_ms: u64,
    /// On a cluster node: how long a CHAT_SEND waits for the stream to order its message before
    /// it is answered ERR_TIMEOUT.
    pub cluster_timeout_ms: u64,
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

/// One client connection, as the protocol sees it: no socket. The event loop owns the socket
/// under the same key and moves bytes between it and the core.
#[derive(Debug)]
pub struct Conn {
    decoder: FrameDecoder,
    /// The record layer, on a TLS listener.
    tls: Option<Box<tls::Tls>>,
    /// The rest.
    pub st: ConnState,
}

/// What the event loop must do for a connection next (see `event_loop::settle`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Output is waiting to be sent.
    pub has_output: bool,
    /// Read nothing more; close once the output is flushed.
    pub closing: bool,
    /// Close now without flushing, resetting the connection (a slow consumer).
    pub abort: bool,
    /// Answers wait for the journal: not closed until they went out.
    pub holding: bool,
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
    /// Something was published to a room ring or an inbox this turn: the workers are woken
    /// once, when the turn's frames are all handled ([`Core::wake_workers`]), not per message.
    wake_pending: bool,
    /// Durable mode: ledger answers wait for the journal.
    journal_on: bool,
    /// Set by a handler whose answer rests on journal records: the `durable` its answer waits
    /// for (see `dispatch`).
    hold_until: Option<u64>,
    /// Connections with answers waiting for the journal.
    holding: Vec<usize>,
    /// On a cluster node: chat goes through the bridge (`cluster.rs`).
    cluster: Option<cluster::ClusterChat>,
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
    conns: Slab<Conn>,
    /// The rest.
    ctx: Ctx<'s>,
    generation: u64,
    /// Set once a graceful stop began: when draining must end (monotonic ms).
    drain_deadline_ms: Option<u64>,
    /// Where TLS connections' plaintext is read out of rustls (empty without TLS).
    tls_scratch: Vec<u8>,
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
                wake_pending: false,
                journal_on: shm::journal::mode(seg) == shm::journal::Mode::Sync,
                hold_until: None,
                holding: Vec::new(),
                cluster: cluster::ClusterChat::of(seg),
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
            tls_scratch: Vec::new(),
        })
    }

    /// Takes a new connection: its key, or, over the limit, the refusal (ERR_SERVER_BUSY) the
    /// event loop writes before closing the socket.
    pub fn open(&mut self) -> Result<usize, Vec<u8>> {
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
            m.conns_refused.add(1);
            m.statuses[Status::ErrServerBusy.as_u16() as usize].add(1);
            return Err(frame);
        }
        let tls = match &self.ctx.cfg.tls {
            None => None,
            Some(config) => match tls::Tls::new(config, self.ctx.now_ms) {
                Ok(t) => Some(Box::new(t)),
                Err(e) => {
                    tracing::warn!(error = %e, "TLS connection refused");
                    m.tls_errors.add(1);
                    return Err(Vec::new());
                }
            },
        };
        if tls.is_some() && self.tls_scratch.is_empty() {
            self.tls_scratch = vec![0; tls::PLAINTEXT_CHUNK];
        }
        self.generation += 1;
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        let id = (self.generation << 24 | key as u64) & ((1 << 48) - 1);
        entry.insert(Conn {
            decoder: FrameDecoder::new(self.ctx.cfg.body_len_max),
            tls,
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
        });
        m.conns_accepted.add(1);
        m.conns_active.set(self.conns.len() as u64);
        Ok(key)
    }

    /// This worker's counters (in shared memory).
    pub fn metrics(&self) -> &'s WorkerMetrics {
        self.ctx.metrics
    }

    /// The settings it runs with.
    pub fn config(&self) -> &Config {
        &self.ctx.cfg
    }

    /// Connections open now.
    pub fn open_count(&self) -> usize {
        self.conns.len()
    }

    /// What the event loop must do for `key` next; `None` for a key not open.
    pub fn step(&self, key: usize) -> Option<Step> {
        self.conns.get(key).map(|c| Step {
            has_output: c.st.out.ready() > 0 || c.tls.as_ref().is_some_and(|t| t.has_output()),
            closing: c.st.closing,
            abort: c.st.abort,
            holding: c.st.out.holding(),
        })
    }

    /// Takes everything `key` may send now, for one send: the backend owns the buffer while
    /// the kernel may read it, reports progress with [`Core::sent`] and gives it back with
    /// [`Core::recycle`]. `None` when nothing waits (or `key` is not open).
    ///
    /// On a TLS connection, what may go is encrypted now and the buffer holds its records.
    pub fn take_output(&mut self, key: usize) -> Option<Vec<u8>> {
        let c = self.conns.get_mut(key)?;
        match &mut c.tls {
            None => c.st.out.take(),
            Some(tls) => tls.take(&mut c.st),
        }
    }

    /// `n` bytes of the taken output reached the kernel.
    pub fn sent(&mut self, key: usize, n: usize) {
        if let Some(c) = self.conns.get_mut(key) {
            match &mut c.tls {
                None => c.st.out.advance(n),
                Some(tls) => tls.sent(n),
            }
        }
    }

    /// A send finished with its whole buffer: it goes back to `key`'s queue for reuse.
    pub fn recycle(&mut self, key: usize, buf: Vec<u8>) {
        if let Some(c) = self.conns.get_mut(key) {
            match &mut c.tls {
                None => c.st.out.recycle(buf),
                Some(tls) => tls.recycle(buf),
            }
        }
    }

    /// A send failed: the peer is gone. What it will never read is dropped; the connection
    /// closes.
    pub fn send_failed(&mut self, key: usize) {
        if let Some(c) = self.conns.get_mut(key) {
            c.st.out.clear();
            if let Some(tls) = &mut c.tls {
                tls.clear();
            }
            c.st.closing = true;
        }
    }

    /// The peer closed its side, or reading failed: nothing more will arrive.
    pub fn peer_closed(&mut self, key: usize) {
        if let Some(c) = self.conns.get_mut(key) {
            c.st.closing = true;
        }
    }

    /// Wakes every worker (this one included, so that its own members get the push) if this
    /// turn published anything: one futex wake (and one eventfd write per epoll worker) per turn,
    /// however many messages the turn carried.
    fn wake_workers(&mut self) {
        if std::mem::take(&mut self.ctx.wake_pending) {
            shm::wake::notify_all(self.ctx.seg, self.ctx.wake_fds);
            self.ctx.metrics.chat_wakes.add(1);
        }
    }

    /// Releases answers the journal has made durable since the last call; returns the
    /// connections that have output to send now.
    pub fn release_durable(&mut self) -> Vec<usize> {
        if self.ctx.holding.is_empty() {
            return Vec::new();
        }
        let durable = shm::journal::durable(self.ctx.seg);
        let mut ready = Vec::new();
        let conns = &mut self.conns;
        self.ctx.holding.retain(|&key| {
            let Some(c) = conns.get_mut(key) else {
                return false;
            };
            if c.st.out.release(durable) {
                ready.push(key);
            }
            c.st.out.holding()
        });
        ready
    }

    /// The keys of every open connection.
    pub fn keys(&self) -> Vec<usize> {
        self.conns.iter().map(|(k, _)| k).collect()
    }

    /// Monotonic milliseconds at the current loop turn.
    pub fn now_ms(&self) -> u64 {
        self.ctx.now_ms
    }

    /// Handles bytes received on connection `key` (ciphertext on a TLS connection): every
    /// whole frame in them is answered into its output queue. Afterwards the connection may be
    /// marked closing.
    pub fn on_bytes(&mut self, key: usize, data: &[u8]) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let ctx = &mut self.ctx;
        ctx.metrics.bytes_in.add(data.len() as u64);
        conn.st.last_active_ms = ctx.now_ms;
        if conn.tls.is_some() {
            tls::on_ciphertext(ctx, conn, &mut self.tls_scratch, data, on_plaintext);
        } else {
            on_plaintext(ctx, conn, data);
        }
    }

    /// Reads the clock: every timeout and timestamp of this loop turn uses this time.
    pub fn tick_clock(&mut self) {
        self.ctx.now_ms = self.ctx.clock.mono_ms();
        self.ctx.wall_ms = self.ctx.clock.wall_ms();
    }

    /// Removes connection `key`, ending its session (the event loop closes its socket). False
    /// when it was not open.
    pub fn remove(&mut self, key: usize) -> bool {
        let Some(mut conn) = self.conns.try_remove(key) else {
            return false;
        };
        self.ctx.end_session(&mut conn.st);
        let m = self.ctx.metrics;
        m.conns_closed.add(1);
        m.conns_active.set(self.conns.len() as u64);
        true
    }

    /// The chat epoch word in shared memory (a futex the loop can wait on) and the value this
    /// worker last delivered at.
    pub fn chat_epoch(&self) -> (&'s std::sync::atomic::AtomicU32, u32) {
        (shm::wake::epoch(self.ctx.seg), self.ctx.chat.epoch_seen)
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

    /// Removes every connection left; returns their keys, for the event loop to close their
    /// sockets.
    pub fn close_all(&mut self) -> Vec<usize> {
        let keys = self.keys();
        for &k in &keys {
            self.remove(k);
        }
        keys
    }
}

/// Plaintext bytes of `conn`'s stream: every whole frame in them is handled.
fn on_plaintext(ctx: &mut Ctx<'_>, conn: &mut Conn, data: &[u8]) {
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

    /// Most list entries of `entry_len` bytes that fit the body limit.
    fn list_limit(&self, entry_len: usize) -> usize {
        ((self.cfg.body_len_max as usize).saturating_sub(64) / entry_len).min(LIST_LEN_MAX)
    }
}
