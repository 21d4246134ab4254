//! Ledger throughput: uncontended TRANSFER on one core, in-process; and contended, two
//! processes hammering the same two accounts. Both lock modes.
//!
//! `cargo bench -p shm`. Run with the machine otherwise idle; on 2 cores the contended figure
//! includes the two processes competing for both cores.

use std::process::Command;
use std::time::Instant;

use shm::users::Credentials;
use shm::{Capacities, Ledger, LockMode, Segment, Users};

const UNCONTENDED_OPS: u64 = 3_000_000;
const CONTENDED_OPS: u64 = 1_000_000;
const ROUNDS: usize = 5;

fn caps() -> Capacities {
    Capacities {
        users: 16,
        rooms: 1,
        members_per_room: 1,
        room_ring: 1,
        txn_log: 1 << 16,
        results_per_user: 16,
        workers: 4,
    }
}

fn setup(mode: LockMode, tag: &str) -> Segment {
    let name = format!("bench-{tag}-{}", std::process::id());
    let (seg, _) = Segment::create(&name, caps(), mode).expect("create");
    let users = Users::of(&seg);
    let creds = Credentials {
        salt: vec![1; 16],
        iterations: shm::limits::ITERATIONS_MIN,
        stored_key: [0; 32],
        server_key: [0; 32],
    };
    for u in ["a", "b"] {
        users.register(u, &creds).expect("register");
    }
    let mut l = Ledger::attach(&seg, 3).expect("attach");
    l.deposit(1, 1, 1 << 40).expect("fund");
    l.deposit(2, 2, 1 << 40).expect("fund");
    seg
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn uncontended(mode: LockMode) -> f64 {
    let seg = setup(mode, "un");
    let mut l = Ledger::attach(&seg, 0).expect("attach");
    let mut req = 1_000u64;
    let mut rates = Vec::new();
    for _ in 0..ROUNDS {
        let start = Instant::now();
        for i in 0..UNCONTENDED_OPS {
            req += 1;
            let (f, t) = if i % 2 == 0 { (1, 2) } else { (2, 1) };
            std::hint::black_box(l.transfer(f, t, req, 1).expect("transfer"));
        }
        rates.push(UNCONTENDED_OPS as f64 / start.elapsed().as_secs_f64());
    }
    median(rates)
}

fn main() {
    println!(
        "shm ledger TRANSFER throughput ({} cores on this machine)",
        num_cores()
    );
    println!(
        "{:<10} {:>22} {:>26} {:>12}",
        "lock_mode", "uncontended_ops_per_s", "contended_2proc_ops_per_s", "lock_waits"
    );
    for mode in [LockMode::Account, LockMode::Global] {
        let u = uncontended(mode);
        let (c, waits) = contended(mode);
        println!(
            "{:<10} {:>22.0} {:>26.0} {:>12}",
            format!("{mode:?}"),
            u,
            c,
            waits
        );
    }
}

fn num_cores() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

/// Two helper processes transferring between the same two accounts at the same time.
fn contended(mode: LockMode) -> (f64, u64) {
    let seg = setup(mode, "con");
    let instance = seg.name().trim_start_matches("/ns-").to_string();
    let mut rates = Vec::new();
    for _ in 0..ROUNDS {
        let children: Vec<_> = (0..2)
            .map(|slot| {
                Command::new(env!("CARGO_BIN_EXE_shm-helper"))
                    .args([
                        "transfers",
                        &instance,
                        &slot.to_string(),
                        &CONTENDED_OPS.to_string(),
                        "1",
                        "2",
                    ])
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .expect("spawn helper")
            })
            .collect();
        let mut longest_ns = 0u128;
        for c in children {
            let out = c.wait_with_output().expect("helper ran");
            assert!(out.status.success(), "helper failed");
            let text = String::from_utf8_lossy(&out.stdout);
            let ns: u128 = text
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .expect("elapsed");
            longest_ns = longest_ns.max(ns);
        }
        rates.push(2.0 * CONTENDED_OPS as f64 / (longest_ns as f64 / 1e9));
    }
    (median(rates), shm::ledger::stats(&seg).lock_waits)
}
