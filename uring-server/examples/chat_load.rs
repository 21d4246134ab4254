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

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use proto::body::*;
use proto::codec::Name;
use proto::scram::{auth_message, ClientSecret};
use proto::{write_request, FrameDecoder, Push, Reply, Request, Response, Status, BODY_LEN_LIMIT};

const MEMBERS: usize = 100;
const SENDERS: usize = 10;

fn call(
    s: &mut TcpStream,
    dec: &mut FrameDecoder,
    id: u64,
    req: &Request<'_>,
) -> (Status, Vec<u8>, u16) {
    let mut out = Vec::new();
    write_request(&mut out, id, req, BODY_LEN_LIMIT).expect("encode");
    s.write_all(&out).expect("send");
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).expect("read");
        assert!(n > 0, "server closed");
        let mut input = &buf[..n];
        while !input.is_empty() {
            let (used, res) = dec.decode(input);
            input = &input[used..];
            if let Some(f) = res.expect("frame") {
                if f.header.flags.is_response() && f.header.req_id == id {
                    return (f.header.status, f.body.to_vec(), f.header.opcode.as_u16());
                }
            }
        }
    }
}

fn member(addr: SocketAddr, i: usize, secret: &ClientSecret, salt: &[u8]) -> (TcpStream, u32) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let mut dec = FrameDecoder::new(BODY_LEN_LIMIT);
    let user = format!("m{i}");
    let name = Name::new(&user).expect("name");
    let stored = secret.stored();
    call(
        &mut s,
        &mut dec,
        1,
        &Request::Register(RegisterRequest {
            username: name,
            salt: Salt::new(salt).expect("salt"),
            iterations: proto::scram::ITERATIONS_MIN,
            stored_key: stored.stored_key,
            server_key: stored.server_key,
        }),
    );
    let cn = [5u8; 16];
    let (st, body, op) = call(
        &mut s,
        &mut dec,
        2,
        &Request::Login(LoginRequest {
            username: name,
            client_nonce: Nonce::new(&cn).expect("nonce"),
        }),
    );
    let op = proto::Opcode::from_u16(op).expect("op");
    let Ok(Reply::Ok(Response::Login(l))) = Reply::decode(op, st, &body) else {
        panic!("login")
    };
    let am = auth_message(&user, &cn, l.server_nonce.as_bytes(), salt, l.iterations);
    let (st, _, _) = call(
        &mut s,
        &mut dec,
        3,
        &Request::LoginProof(LoginProofRequest {
            client_proof: secret.proof(&am),
        }),
    );
    assert_eq!(st, Status::Ok);
    let (st, body, op) = call(
        &mut s,
        &mut dec,
        4,
        &Request::JoinRoom(JoinRoomRequest {
            room: Name::new("bench").expect("room"),
        }),
    );
    let op = proto::Opcode::from_u16(op).expect("op");
    let Ok(Reply::Ok(Response::JoinRoom(j))) = Reply::decode(op, st, &body) else {
        panic!("join")
    };
    (s, j.room_id)
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
    let exe = std::env::current_exe()
        .expect("exe")
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("uring-server"))
        .expect("target dir");
    let mut server = Command::new(&exe)
        .args(["-w", "2", "--port", "0", "--io", &backend, "--name", &name])
        .args(["--flood-burst", "1000000", "--flood-per-sec", "1000000"])
        .args(["--out-max-bytes", "33554432"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e} (cargo build --release first)", exe.display()));
    let mut line = String::new();
    BufReader::new(server.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("listening line");
    let addr: SocketAddr = line
        .split_whitespace()
        .nth(2)
        .expect("addr")
        .parse()
        .expect("addr");
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
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = server.wait();
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
