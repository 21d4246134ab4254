//! A small closed-loop load for the server's own cost per request, until `bench-client` lands:
//! starts `uring-server -w 2` on each backend, opens 100 connections (2 client threads, 50 each,
//! one BALANCE in flight per connection), runs for a fixed time, and reports requests/s and the
//! server's CPU time per request from `/proc/<pid>/schedstat` of the master and every worker.
//!
//! `cargo run --release -p uring-server --example balance_load [-- SECONDS]`
//!
//! Client and server share this machine's cores; the client is cheap (blocking I/O, one
//! syscall pair per request per connection, no allocation per request) but not free.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bench_client::load::server_cpu_seconds;
use bench_client::server::SpawnedServer;
use bench_client::Client;
use proto::body::*;
use proto::scram::ClientSecret;
use proto::{write_request, FrameDecoder, Request, Status, BODY_LEN_LIMIT};

const CONNS: usize = 100;
const THREADS: usize = 2;

struct Conn {
    s: TcpStream,
    dec: FrameDecoder,
}

impl Conn {
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

/// Registers and logs in through the client library, then keeps only the socket.
fn login(addr: SocketAddr, user: &str, secret: &ClientSecret, salt: &[u8]) -> Conn {
    let mut c = Client::connect(addr, Duration::from_secs(10)).expect("connect");
    c.register_secret(user, salt, secret).expect("register");
    c.login_secret(user, secret.clone()).expect("login");
    Conn {
        s: c.into_stream(),
        dec: FrameDecoder::new(BODY_LEN_LIMIT),
    }
}

fn run(backend: &str, secs: u64) {
    let name = format!("balance-load-{}", std::process::id());
    let exe = bench_client::server::locate().expect("the server binary (cargo build --release)");
    let server = SpawnedServer::start(&exe, &name, &["-w", "2", "--io", backend]).expect("start");
    let addr = server.addr;
    let pids = server.pids();

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
    let cpu0 = (server_cpu_seconds(&pids) * 1e9) as u64;
    let t0 = Instant::now();
    measuring.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(secs));
    measuring.store(false, Ordering::Relaxed);
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu1 = (server_cpu_seconds(&pids) * 1e9) as u64;
    let n = total.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    drop(server);
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
