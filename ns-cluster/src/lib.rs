//! The bridge between one node's shared memory and the cluster's NATS JetStream: the only code
//! of the server that runs an async runtime, in its own process, forked by the master and
//! restarted like a worker. The workers never see NATS.
//!
//! One JetStream stream (`NS_CHAT`) holds every room's messages, one subject per room
//! (`ns.chat.room.<hex of the name>`): one Raft group for all rooms (a stream per room would be
//! a group per room), and the stream's sequence is the one order every node applies.
//!
//! - **Out**: workers append to the outbox (`shm::rooms`); the bridge publishes each entry with
//!   `Nats-Msg-Id` = node, incarnation, outbox sequence (a publish retried after a lost ack or a
//!   bridge restart is de-duplicated by the stream), keeps up to [`IN_FLIGHT`] acks pending,
//!   and moves `outbox_acked` as acks come back in order.
//! - **In**: an ordered consumer from the first stream sequence not yet applied here; each
//!   message is applied to its room (`Rooms::apply_remote`, which skips what the room already
//!   holds), `applied` moves, and the workers are woken once per batch.
//! - **State**: `Starting` until connected and caught up with the stream's last sequence at
//!   connect; the master forks workers only then. `Disconnected` while publishes fail.
//!
//! Payload of a stream message (big-endian): version 1 (u8), origin (u64), sender id (u32),
//! time_ms (u64), room name (u8 length + UTF-8), sender name (u8 length + UTF-8), text (the
//! rest, UTF-8).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::stream::FuturesOrdered;
use futures_util::StreamExt;
use shm::cluster::{Cluster, State};
use shm::rooms::{Read, Remote};
use shm::wake::WakeFds;
use shm::{Rooms, Segment};

/// The stream every node's rooms ride on.
pub const STREAM: &str = "NS_CHAT";
/// Its subjects: one per room.
pub const SUBJECTS: &str = "ns.chat.room.>";
/// Publishes awaiting their ack at most.
pub const IN_FLIGHT: usize = 512;
/// How long the stream remembers a `Nats-Msg-Id` (a retry within it is not stored twice).
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// How the bridge joins the cluster.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// NATS server URLs.
    pub servers: Vec<String>,
    /// Replicas of the stream, when this bridge creates it.
    pub replicas: usize,
}

/// The subject of room `name`: its bytes in hex (a room name may hold any UTF-8, a subject
/// token may not).
pub fn subject_of(room: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(13 + room.len() * 2);
    s.push_str("ns.chat.room.");
    for b in room.bytes() {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 15)]));
    }
    s
}

/// A room message as it crosses the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message<'a> {
    /// [`shm::rooms::Origin::pack`].
    pub origin: u64,
    /// The sender's id on its node.
    pub sender: u32,
    /// When its node accepted it.
    pub time_ms: u64,
    /// The room's name.
    pub room: &'a str,
    /// The sender's name.
    pub sender_name: &'a str,
    /// The text.
    pub text: &'a str,
}

impl Message<'_> {
    /// The payload.
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(
            23 + self.room.len() + self.sender_name.len() + self.text.len(),
        );
        b.put_u8(1);
        b.put_u64(self.origin);
        b.put_u32(self.sender);
        b.put_u64(self.time_ms);
        b.put_u8(self.room.len() as u8);
        b.put_slice(self.room.as_bytes());
        b.put_u8(self.sender_name.len() as u8);
        b.put_slice(self.sender_name.as_bytes());
        b.put_slice(self.text.as_bytes());
        b.freeze()
    }

    /// Parses a payload; `None` if it is not one of ours.
    pub fn decode(p: &[u8]) -> Option<Message<'_>> {
        let (&version, p) = p.split_first()?;
        if version != 1 || p.len() < 20 {
            return None;
        }
        let origin = u64::from_be_bytes(p[0..8].try_into().ok()?);
        let sender = u32::from_be_bytes(p[8..12].try_into().ok()?);
        let time_ms = u64::from_be_bytes(p[12..20].try_into().ok()?);
        let p = &p[20..];
        let (room, p) = take_str(p)?;
        let (sender_name, p) = take_str(p)?;
        let text = std::str::from_utf8(p).ok()?;
        Some(Message {
            origin,
            sender,
            time_ms,
            room,
            sender_name,
            text,
        })
    }
}

fn take_str(p: &[u8]) -> Option<(&str, &[u8])> {
    let (&len, p) = p.split_first()?;
    let len = usize::from(len);
    if p.len() < len {
        return None;
    }
    Some((std::str::from_utf8(&p[..len]).ok()?, &p[len..]))
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_term(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// The bridge process's body: runs until SIGTERM or the master's death, then exits.
pub fn run(seg: &Segment, cfg: BridgeConfig, wake_fds: Option<&WakeFds>, master: u32) -> ! {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGTERM, on_term as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
    let cluster = Cluster::of(seg);
    cluster.set_bridge_pid(u64::from(std::process::id()));
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "bridge: no tokio runtime");
            std::process::exit(1);
        }
    };
    let done = Arc::new(AtomicBool::new(false));
    let outbox_wake = Arc::new(tokio::sync::Notify::new());
    std::thread::scope(|s| {
        // The outbox's futex word cannot be awaited: a thread sleeps on it and wakes the loop.
        let (done2, wake2) = (done.clone(), outbox_wake.clone());
        s.spawn(move || {
            let mut seen = cluster.wake_seen();
            while !done2.load(Ordering::Relaxed) {
                cluster.wait_for_work(seen, Duration::from_millis(100));
                let now = cluster.wake_seen();
                if now != seen {
                    seen = now;
                    wake2.notify_one();
                }
            }
        });
        rt.block_on(bridge(seg, &cfg, wake_fds, master, &outbox_wake));
        done.store(true, Ordering::Relaxed);
    });
    cluster.set_bridge_pid(0);
    tracing::info!("bridge stopped");
    std::process::exit(0)
}

fn should_stop(master: u32) -> bool {
    // SAFETY: getppid has no preconditions.
    STOP.load(Ordering::Relaxed) || unsafe { libc::getppid() } as u32 != master
}

/// Connects, catches up and moves messages both ways; on any loss of NATS, starts again.
async fn bridge(
    seg: &Segment,
    cfg: &BridgeConfig,
    wake_fds: Option<&WakeFds>,
    master: u32,
    outbox_wake: &tokio::sync::Notify,
) {
    let cluster = Cluster::of(seg);
    let mut backoff = Duration::from_millis(100);
    let mut attempts = 0u64;
    while !should_stop(master) {
        match session(seg, cfg, wake_fds, master, outbox_wake).await {
            Ok(()) => return,
            Err(e) => {
                attempts += 1;
                if cluster.state() == State::Ready {
                    cluster.set_state(State::Disconnected);
                }
                if attempts == 1 || attempts.is_power_of_two() {
                    tracing::warn!(servers = ?cfg.servers, error = %e, attempts,
                        "bridge: NATS unavailable, retrying");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One connection's life: returns Ok on a stop, Err when NATS is lost.
async fn session(
    seg: &Segment,
    cfg: &BridgeConfig,
    wake_fds: Option<&WakeFds>,
    master: u32,
    outbox_wake: &tokio::sync::Notify,
) -> Result<(), BoxError> {
    let cluster = Cluster::of(seg);
    let rooms = Rooms::of(seg);
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .connect(cfg.servers.clone())
        .await?;
    cluster.count_connect();
    let js = jetstream::new(client);
    let stream = js
        .get_or_create_stream(stream::Config {
            name: STREAM.to_string(),
            subjects: vec![SUBJECTS.to_string()],
            storage: stream::StorageType::File,
            num_replicas: cfg.replicas.max(1),
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        })
        .await?;
    let last_at_connect = stream.get_info().await?.state.last_sequence;
    cluster.set_stream_last(last_at_connect);
    let start = cluster.applied() + 1;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            filter_subject: SUBJECTS.to_string(),
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    tracing::info!(
        servers = ?cfg.servers,
        stream = STREAM,
        stream_last = last_at_connect,
        from = start,
        "bridge: connected to NATS"
    );
    if cluster.applied() >= last_at_connect {
        cluster.set_state(State::Ready);
    }
    // Entries after `acked` are re-published: the stream drops what it already has by id.
    let mut sent = cluster.outbox_acked();
    let mut acks = FuturesOrdered::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        if should_stop(master) {
            // What is in flight is acked or re-published by the next bridge.
            while let Some((seq, r)) = acks.next().await {
                let r: Result<_, async_nats::jetstream::context::PublishError> = r;
                if r.is_err() {
                    break;
                }
                cluster.ack_outbox(seq);
            }
            return Ok(());
        }
        // Hand over whatever the workers queued, up to the window.
        let last = rooms.outbox_last_seq();
        while sent < last && acks.len() < IN_FLIGHT {
            let seq = sent + 1;
            let Read::Event(e) = rooms.outbox_read(seq) else {
                break;
            };
            let room = rooms.name(e.target).unwrap_or_default();
            let msg = Message {
                origin: e.origin,
                sender: e.sender,
                time_ms: e.time_ms,
                room: &room,
                sender_name: &e.sender_name,
                text: &e.text,
            };
            let id = format!("{}.{}.{seq}", cluster.node_id(), cluster.incarnation());
            let publish = jetstream::message::PublishMessage::build()
                .payload(msg.encode())
                .message_id(id);
            let ack = js.send_publish(subject_of(&room), publish).await?;
            acks.push_back(async move { (seq, ack.await) });
            sent = seq;
        }
        tokio::select! {
            m = messages.next() => {
                let Some(m) = m else { return Err("the stream's consumer ended".into()) };
                let mut batch = vec![m?];
                // Apply what has arrived, then wake the workers once.
                while batch.len() < 256 {
                    match futures_util::FutureExt::now_or_never(messages.next()) {
                        Some(Some(m)) => batch.push(m?),
                        _ => break,
                    }
                }
                let mut applied = 0;
                for m in &batch {
                    let info = m.info()?;
                    let seq = info.stream_sequence;
                    cluster.set_stream_last(seq + info.pending);
                    match Message::decode(&m.payload) {
                        Some(msg) => {
                            let r = rooms.apply_remote(&Remote {
                                room: msg.room,
                                sender: msg.sender,
                                sender_name: msg.sender_name,
                                text: msg.text,
                                time_ms: msg.time_ms,
                                origin: msg.origin,
                                stream_seq: seq,
                            });
                            match r {
                                Ok(_) => applied += 1,
                                Err(e) => tracing::warn!(seq, error = %e, "bridge: a stream message could not be applied; skipped"),
                            }
                        }
                        None => tracing::warn!(seq, subject = %m.subject, "bridge: not a room message; skipped"),
                    }
                    cluster.set_applied(seq);
                }
                cluster.count_applied(applied);
                shm::wake::notify_all(seg, wake_fds);
                if cluster.state() != State::Ready && cluster.applied() >= last_at_connect {
                    cluster.set_state(State::Ready);
                    tracing::info!(applied = cluster.applied(), "bridge: caught up with the stream");
                }
            }
            Some((seq, r)) = acks.next(), if !acks.is_empty() => {
                match r {
                    Ok(_) => {
                        cluster.ack_outbox(seq);
                        cluster.count_published(1);
                        if cluster.state() == State::Disconnected {
                            cluster.set_state(State::Ready);
                        }
                    }
                    Err(e) => {
                        cluster.count_publish_error();
                        return Err(e.into());
                    }
                }
            }
            _ = outbox_wake.notified() => {}
            _ = tick.tick() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_survives_its_encoding_and_junk_is_refused() {
        let m = Message {
            origin: 0x0001_0002_0000_0003,
            sender: 7,
            time_ms: 1_700_000_000_000,
            room: "lobby",
            sender_name: "alice",
            text: "héllo",
        };
        let p = m.encode();
        assert_eq!(Message::decode(&p), Some(m));
        assert_eq!(Message::decode(&p[..10]), None);
        assert_eq!(Message::decode(b"\x02rest"), None);
        let mut bad = p.to_vec();
        bad[21] = 200; // the room's length runs past the end
        assert_eq!(Message::decode(&bad), None);
    }

    #[test]
    fn a_room_subject_is_one_token_whatever_the_name() {
        assert_eq!(subject_of("a.b c"), "ns.chat.room.612e622063");
        assert_eq!(subject_of("é"), "ns.chat.room.c3a9");
    }
}
