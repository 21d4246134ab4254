//! A small closed-loop load for the server's own cost per request, until `bench-client` lands:
//! starts `uring-server -w 2` on each backend, opens 100 connections (2 client threads, 50 each,
//! one BALANCE in flight per connection), runs for a fixed time, and reports requests/s and the
//! server's CPU time per request from `/proc/<pid>/schedstat` of the master and every worker.
//!
//! `cargo run --release -p uring-server --example balance_load [-- SECONDS]`
//!
//! Client and server share this machine's cores; the client is cheap (blocking I/O, one
//! syscall pair per request per connection, no allocation per request) but not free.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::body::*;
use proto::codec::Name;
use proto::scram::{auth_message, ClientSecret};
use proto::{write_request, FrameDecoder, Reply, Request, Response, Status, BODY_LEN_LIMIT};

const CONNS: usize = 100;
const THREADS: usize = 2;

struct Conn {
    s: TcpStream,
    dec: FrameDecoder,
}

impl Conn {
    fn call(&mut self, id: u64, req: &Request<'_>, out: &mut Vec<u8>) -> (Status, Vec<u8>, u16) {
        out.clear();
        write_request(out, id, req, BODY_LEN_LIMIT).expect("encode");
        self.s.write_all(out).expect("send");
        self.read_one()
    }

    fn read_one(&mut self) -> (Status, Vec<u8>, u16) {
        let mut buf = [0u8; 4096];
        loop {
            let n = self.s.read(&mut buf).expect("read");
            assert!(n > 0, "server closed");
            let (used, res) = self.dec.decode(&buf[..n]);
            assert_eq!(used, n, "one response at a time");
            if let Some(f) = res.expect("valid frame") {
                return (f.header.status, f.body.to_vec(), f.header.opcode.as_u16());
            }
        }
    }
}

fn login(addr: SocketAddr, user: &str, secret: &ClientSecret, salt: &[u8]) -> Conn {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let mut c = Conn {
        s,
        dec: FrameDecoder::new(BODY_LEN_LIMIT),
    };
    let mut out = Vec::new();
    let stored = secret.stored();
    let name = Name::new(user).expect("name");
    c.call(
        1,
        &Request::Register(RegisterRequest {
            username: name,
            salt: Salt::new(salt).expect("salt"),
            iterations: proto::scram::ITERATIONS_MIN,
            stored_key: stored.stored_key,
            server_key: stored.server_key,
        }),
        &mut out,
    );
    let cn = [7u8; 16];
    let (st, body, op) = c.call(
        2,
        &Request::Login(LoginRequest {
            username: name,
            client_nonce: Nonce::new(&cn).expect("nonce"),
        }),
        &mut out,
    );
    assert_eq!(st, Status::Ok);
    let op = proto::Opcode::from_u16(op).expect("opcode");
    let Ok(Reply::Ok(Response::Login(l))) = Reply::decode(op, st, &body) else {
        panic!("login failed")
    };
    let am = auth_message(user, &cn, l.server_nonce.as_bytes(), salt, l.iterations);
    let (st, _, _) = c.call(
        3,
        &Request::LoginProof(LoginProofRequest {
            client_proof: secret.proof(&am),
        }),
        &mut out,
    );
    assert_eq!(st, Status::Ok, "login proof");
    c
}

fn cpu_ns(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/schedstat")).ok())
        .filter_map(|s| {
            s.split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum()
}

fn run(backend: &str, secs: u64) {
    let name = format!("balance-load-{}", std::process::id());
    let exe = std::env::current_exe()
        .expect("exe")
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("uring-server"))
        .expect("target dir");
    let mut server = Command::new(&exe)
        .args(["-w", "2", "--port", "0", "--io", backend, "--name", &name])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "start {}: {e} (build it: cargo build --release)",
                exe.display()
            )
        });
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
    let seg = shm::Segment::attach(&name, false).expect("attach");
    let mut pids: Vec<u32> = shm::Metrics::of(&seg)
        .workers()
        .iter()
        .map(|w| w.pid.get() as u32)
        .filter(|&p| p != 0)
        .collect();
    pids.push(server.id());

    let salt = [9u8; 16];
    let secret = ClientSecret::derive(b"pw", &salt, proto::scram::ITERATIONS_MIN);
    let mut conns: Vec<Conn> = (0..CONNS)
        .map(|i| login(addr, &format!("load{i}"), &secret, &salt))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let measuring = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    for _ in 0..THREADS {
        let mine: Vec<Conn> = conns.drain(..CONNS / THREADS).collect();
        let (stop, total, measuring) = (stop.clone(), total.clone(), measuring.clone());
        handles.push(std::thread::spawn(move || {
            let mut mine = mine;
            let mut out = Vec::with_capacity(64);
            let mut id = 10u64;
            while !stop.load(Ordering::Relaxed) {
                // One BALANCE in flight on every connection, then collect the answers.
                for c in mine.iter_mut() {
                    id += 1;
                    out.clear();
                    write_request(&mut out, id, &Request::Balance(Empty {}), BODY_LEN_LIMIT)
                        .expect("encode");
                    c.s.write_all(&out).expect("send");
                }
                for c in mine.iter_mut() {
                    let (st, _, _) = c.read_one();
                    assert_eq!(st, Status::Ok);
                }
                if measuring.load(Ordering::Relaxed) {
                    total.fetch_add(mine.len() as u64, Ordering::Relaxed);
                }
            }
        }));
    }
    // Warm-up, then measure.
    std::thread::sleep(Duration::from_secs(1));
    let cpu0 = cpu_ns(&pids);
    let t0 = Instant::now();
    measuring.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(secs));
    measuring.store(false, Ordering::Relaxed);
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu1 = cpu_ns(&pids);
    let n = total.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = server.wait();
    let rate = n as f64 / elapsed;
    let cpu_us = (cpu1 - cpu0) as f64 / 1e3 / n as f64;
    println!(
        "{backend:<6} -w 2, {CONNS} conns, 1 in flight each: {rate:>9.0} BALANCE/s, server CPU {cpu_us:.2} µs/request ({n} requests in {elapsed:.1} s)"
    );
}

fn main() {
    let secs: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    println!(
        "balance_load: {} cores shared by server and client ({THREADS} client threads)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for backend in ["uring", "epoll"] {
        run(backend, secs);
    }
}
