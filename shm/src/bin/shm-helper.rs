//! A helper process for the multi-process tests (they spawn it; they never fork the threaded
//! test harness). It attaches to a segment, claims a slot, and runs ledger operations, printing
//! one line per operation it completed, so the test knows what was acknowledged.
//!
//! ```text
//! shm-helper ledger <instance> <slot> <seed> <ops> <accounts> <hot> [pace_ns]
//!     random operations: transfers (mostly to the <hot> first accounts), deposits,
//!     withdrawals; writes one 32-byte record per applied operation to stdout: kind (u8, 3
//!     bytes of padding), from (u32), to (u32), amount (u64), txn_id (u64), marker 0xACC057ED
//!     (u32), little-endian. Binary, because text cost more than the ledger it reports on.
//!     The callers are the accounts `a` with `(a - 1) % 4 == slot % 4`: as in a server, where a
//!     user's requests come from its one session, each user's req_ids rise in one process
//!     (req_ids are `seed << 32` plus a counter). Recipients are any account.
//! shm-helper create <instance>
//!     creates a segment with small capacities, prints `ready`, and waits to be killed (a
//!     master that dies without cleaning up)
//! shm-helper transfers <instance> <slot> <ops> <a> <b>
//!     <ops> transfers of 1 from a to b (even slots) or from b to a (odd slots), so two helpers
//!     contend for the same two locks; prints `<ops> <elapsed_ns>` (the contended benchmark)
//! shm-helper once <instance> <slot> <op> <user> <to> <req_id> <amount> [go_file]
//!     one deposit|withdraw|transfer with a given req_id; prints `ok <balance> <txn_id>
//!     <replayed>`. With go_file: attaches, prints `ready`, and spins until the file exists,
//!     so that two helpers start the operation together.
//! ```

use std::io::Write;

use shm::{Ledger, Segment};

/// Processes that may run `ledger` at once, each with its own callers.
const LANES: u32 = 4;

/// Closes every acknowledgement record, so a record cut short by a kill is recognisable.
const ACK_MARKER: u32 = 0xACC0_57ED;

/// xorshift64*: a tiny, seeded generator, so a run is replayable from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> T {
    args.get(i).and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        eprintln!("shm-helper: argument {i} ({what}) missing or invalid");
        std::process::exit(2)
    })
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("");
    let instance: String = arg(&args, 1, "instance");
    if mode == "create" {
        let caps = shm::Capacities {
            users: 16,
            rooms: 2,
            members_per_room: 2,
            room_ring: 2,
            txn_log: 16,
            results_per_user: 2,
            workers: 2,
        };
        let _seg = Segment::create(&instance, caps, shm::LockMode::Account).unwrap_or_else(|e| {
            eprintln!("shm-helper: {e}");
            std::process::exit(1)
        });
        println!("ready");
        let _ = std::io::stdout().flush();
        loop {
            std::thread::sleep(std::time::Duration::from_secs(60));
        }
    }
    let slot: u32 = arg(&args, 2, "slot");
    let seg = Segment::attach(&instance, true).unwrap_or_else(|e| {
        eprintln!("shm-helper: {e}");
        std::process::exit(1)
    });
    let mut ledger = Ledger::attach(&seg, slot).unwrap_or_else(|e| {
        eprintln!("shm-helper: {e}");
        std::process::exit(1)
    });
    match mode {
        "ledger" => run_random(&mut ledger, &args),
        "once" => run_once(&mut ledger, &args),
        "transfers" => run_transfers(&mut ledger, &args),
        _ => {
            eprintln!("shm-helper: unknown mode {mode:?}");
            std::process::exit(2)
        }
    }
}

fn run_random(ledger: &mut Ledger<'_>, args: &[String]) {
    let seed: u64 = arg(args, 3, "seed");
    let ops: u64 = arg(args, 4, "ops");
    let accounts: u64 = arg(args, 5, "accounts");
    let hot: u64 = arg(args, 6, "hot");
    // Optional: spin so that each operation takes at least this long (bounds the rate, so a
    // test's transactions fit its log; the spin is outside any lock).
    let pace = std::time::Duration::from_nanos(if args.len() > 7 {
        arg(args, 7, "pace_ns")
    } else {
        0
    });
    let mut rng = Rng(seed | 1);
    let stdout = std::io::stdout();
    // Buffered: a line is the acknowledgement, and one lost in a kill was simply never
    // acknowledged. Flushed every few hundred lines so acknowledgements keep flowing.
    let mut out = std::io::BufWriter::with_capacity(1 << 14, stdout.lock());
    let req_base = seed << 32;
    let my_lane = ledger.slot_index() % LANES;
    for i in 0..ops {
        let started = std::time::Instant::now();
        let req_id = req_base + i;
        let roll = rng.below(100);
        let pick = |rng: &mut Rng| {
            if rng.below(10) < 8 {
                1 + rng.below(hot) as u32
            } else {
                1 + rng.below(accounts) as u32
            }
        };
        // This process's lane of callers (see the module doc).
        let lane = |a: u32| a - (a - 1) % LANES + my_lane;
        let amount = 1 + rng.below(1000);
        let (kind, from, to, result): (u8, u32, u32, _) = if roll < 70 {
            let from = lane(pick(&mut rng));
            let mut to = pick(&mut rng);
            if to == from {
                to = 1 + (to % accounts as u32);
            }
            (3, from, to, ledger.transfer(from, to, req_id, amount))
        } else if roll < 85 {
            let user = lane(pick(&mut rng));
            (1, 0, user, ledger.deposit(user, req_id, amount))
        } else {
            let user = lane(pick(&mut rng));
            (2, user, 0, ledger.withdraw(user, req_id, amount))
        };
        if let Ok(done) = result {
            let mut rec = [0u8; 32];
            rec[0] = kind;
            rec[4..8].copy_from_slice(&from.to_le_bytes());
            rec[8..12].copy_from_slice(&to.to_le_bytes());
            rec[12..20].copy_from_slice(&amount.to_le_bytes());
            rec[20..28].copy_from_slice(&done.txn_id.to_le_bytes());
            rec[28..32].copy_from_slice(&ACK_MARKER.to_le_bytes());
            let _ = out.write_all(&rec);
        }
        if i % 256 == 255 {
            let _ = out.flush();
        }
        while started.elapsed() < pace {
            std::hint::spin_loop();
        }
    }
    let _ = out.flush();
}

fn run_once(ledger: &mut Ledger<'_>, args: &[String]) {
    let op: String = arg(args, 3, "op");
    let user: u32 = arg(args, 4, "user");
    let to: u32 = arg(args, 5, "to");
    let req_id: u64 = arg(args, 6, "req_id");
    let amount: u64 = arg(args, 7, "amount");
    if let Some(go) = args.get(8) {
        println!("ready");
        let _ = std::io::stdout().flush();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !std::path::Path::new(go).exists() {
            if std::time::Instant::now() > deadline {
                eprintln!("shm-helper: {go} never appeared");
                std::process::exit(1);
            }
            std::hint::spin_loop();
        }
    }
    let result = match op.as_str() {
        "deposit" => ledger.deposit(user, req_id, amount),
        "withdraw" => ledger.withdraw(user, req_id, amount),
        "transfer" => ledger.transfer(user, to, req_id, amount),
        _ => {
            eprintln!("shm-helper: unknown op {op:?}");
            std::process::exit(2)
        }
    };
    match result {
        Ok(done) => println!("ok {} {} {}", done.balance, done.txn_id, done.replayed),
        Err(e) => println!("err {e}"),
    }
}

fn run_transfers(ledger: &mut Ledger<'_>, args: &[String]) {
    let ops: u64 = arg(args, 3, "ops");
    let a: u32 = arg(args, 4, "a");
    let b: u32 = arg(args, 5, "b");
    let (from, to) = if ledger.slot_index() % 2 == 0 {
        (a, b)
    } else {
        (b, a)
    };
    // Each caller's req_ids rise across runs: start from the clock.
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    let start = std::time::Instant::now();
    for i in 0..ops {
        if let Err(e) = ledger.transfer(from, to, base + i, 1) {
            eprintln!("shm-helper: transfer failed: {e}");
            std::process::exit(1);
        }
    }
    println!("{ops} {}", start.elapsed().as_nanos());
}
