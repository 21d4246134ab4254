//! Push throughput and latency, until `bench-client` lands: starts `uring-server -w 2`, puts 100
//! members in one room (spread over the two workers by SO_REUSEPORT), lets 10 of them send
//! flat out (at most 8 messages in flight each), and measures on the receiving side the pushes
//! delivered per second and the latency from send to delivery at every member.
//!
//! `cargo run --release -p uring-server --example chat_load [-- SECONDS [uring|epoll [WINDOW]]]`
//! (WINDOW: messages in flight per sender, default 8; 1 shows latency without queueing)
//!
//! Server and client share the machine's cores. The client is one sender thread and one
//! receiver thread that polls all 100 sockets and decodes every frame in place.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bench_client::server::SpawnedServer;
use bench_client::Client;
use hdrhistogram::Histogram;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use proto::body::*;
use proto::scram::ClientSecret;
use proto::{write_request, FrameDecoder, Push, Request, BODY_LEN_LIMIT};

const MEMBERS: usize = 100;
const SENDERS: usize = 10;

/// A member: registered, logged in and in room "bench" through the client library; its socket.
fn member(addr: SocketAddr, i: usize, secret: &ClientSecret, salt: &[u8]) -> (TcpStream, u32) {
    let mut c = Client::connect(addr, Duration::from_secs(10)).expect("connect");
    let user = format!("m{i}");
    c.register_secret(&user, salt, secret).expect("register");
    c.login_secret(&user, secret.clone()).expect("login");
    let (room, _) = c.join("bench").expect("join");
    let s = c.into_stream();
    s.set_read_timeout(None).expect("blocking reads");
    (s, room)
}

fn main() {
    let secs: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let backend = std::env::args().nth(2).unwrap_or_else(|| "uring".into());
    let window: u64 = std::env::args()
        .nth(3)
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let name = format!("chat-load-{}", std::process::id());
    let exe = bench_client::server::locate().expect("the server binary (cargo build --release)");
    let server = SpawnedServer::start(
        &exe,
        &name,
        &[
            "-w",
            "2",
            "--io",
            &backend,
            "--flood-burst",
            "1000000",
            "--flood-per-sec",
            "1000000",
            "--out-max-bytes",
            "33554432",
        ],
    )
    .expect("start the server");
    let addr = server.addr;
    let salt = [3u8; 16];
    let secret = ClientSecret::derive(b"pw", &salt, proto::scram::ITERATIONS_MIN);
    let members: Vec<(TcpStream, u32)> = (0..MEMBERS)
        .map(|i| member(addr, i, &secret, &salt))
        .collect();
    let room = members[0].1;
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let inflight: Arc<Vec<AtomicU64>> = Arc::new((0..SENDERS).map(|_| AtomicU64::new(0)).collect());
    let sent = Arc::new(AtomicU64::new(0));
    let mut writers: Vec<TcpStream> = members
        .iter()
        .take(SENDERS)
        .map(|m| m.0.try_clone().expect("clone"))
        .collect();
    let sender = {
        let (stop, inflight, sent) = (stop.clone(), inflight.clone(), sent.clone());
        std::thread::spawn(move || {
            let mut out = Vec::with_capacity(128);
            let mut id = 100u64;
            while !stop.load(Ordering::Relaxed) {
                let mut idle = true;
                for (i, w) in writers.iter_mut().enumerate() {
                    if inflight[i].load(Ordering::Relaxed) >= window {
                        continue;
                    }
                    idle = false;
                    id += 1;
                    let text = format!("t={:020}", start.elapsed().as_nanos());
                    out.clear();
                    write_request(
                        &mut out,
                        id,
                        &Request::ChatSend(ChatSendRequest {
                            room_id: room,
                            text: Text::new(&text).expect("text"),
                        }),
                        BODY_LEN_LIMIT,
                    )
                    .expect("encode");
                    inflight[i].fetch_add(1, Ordering::Relaxed);
                    w.write_all(&out).expect("send");
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                if idle {
                    std::thread::yield_now();
                }
            }
        })
    };
    let receiver = {
        let (stop, measuring, inflight) = (stop.clone(), measuring.clone(), inflight.clone());
        let mut socks: Vec<TcpStream> = members.into_iter().map(|m| m.0).collect();
        std::thread::spawn(move || {
            for s in &socks {
                s.set_nonblocking(true).expect("nonblocking");
            }
            let mut decs: Vec<FrameDecoder> = (0..socks.len())
                .map(|_| FrameDecoder::new(BODY_LEN_LIMIT))
                .collect();
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
            let mut pushes = 0u64;
            let mut buf = vec![0u8; 1 << 16];
            while !stop.load(Ordering::Relaxed) {
                let ready: Vec<usize> = {
                    let mut fds: Vec<PollFd> = socks
                        .iter()
                        .map(|s| PollFd::new(s.as_fd(), PollFlags::POLLIN))
                        .collect();
                    let _ = poll(&mut fds, PollTimeout::from(100u16));
                    fds.iter()
                        .enumerate()
                        .filter(|(_, f)| f.revents().is_some_and(|r| !r.is_empty()))
                        .map(|(i, _)| i)
                        .collect()
                };
                for i in ready {
                    loop {
                        let n = match socks[i].read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => n,
                            Err(_) => break,
                        };
                        let now = start.elapsed().as_nanos() as u64;
                        let mut input = &buf[..n];
                        while !input.is_empty() {
                            let (used, res) = decs[i].decode(input);
                            input = &input[used..];
                            let Some(f) = res.expect("frame") else {
                                continue;
                            };
                            if f.header.flags.is_response() {
                                if i < SENDERS {
                                    inflight[i].fetch_sub(1, Ordering::Relaxed);
                                }
                                continue;
                            }
                            if let Ok(Push::ChatBroadcast(b)) = f.push() {
                                if measuring.load(Ordering::Relaxed) {
                                    pushes += 1;
                                    let t: u64 =
                                        b.message.text.as_str()[2..].parse().unwrap_or(now);
                                    hist.saturating_record((now.saturating_sub(t) / 1000).max(1));
                                }
                            }
                        }
                        if n < buf.len() {
                            break;
                        }
                    }
                }
            }
            (pushes, hist)
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    let seg = shm::Segment::attach(&name, false).expect("attach");
    let server_pushes = |seg: &shm::Segment| -> u64 {
        shm::Metrics::of(seg)
            .workers()
            .iter()
            .map(|w| w.pushes_delivered.get())
            .sum()
    };
    let s0 = server_pushes(&seg);
    let sent0 = sent.load(Ordering::Relaxed);
    measuring.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    measuring.store(false, Ordering::Relaxed);
    let elapsed = t0.elapsed().as_secs_f64();
    let s1 = server_pushes(&seg);
    let sent1 = sent.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let _ = sender.join();
    let (pushes, hist) = receiver.join().expect("receiver");
    drop(server);
    println!(
        "{backend}: -w 2, {MEMBERS} members in one room, {SENDERS} senders ({window} in flight each), {secs} s, {} cores shared with the client",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "  messages sent {:.0}/s; pushes received {:.0}/s (server counted {:.0}/s delivered to queues)",
        (sent1 - sent0) as f64 / elapsed,
        pushes as f64 / elapsed,
        (s1 - s0) as f64 / elapsed
    );
    println!(
        "  push latency send→delivery: p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs",
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
        hist.value_at_quantile(0.999),
        hist.max()
    );
}
