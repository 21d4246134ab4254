//! A helper process for the multi-process tests (they spawn it; they never fork the threaded
//! test harness). It attaches to a segment, claims a slot, and runs ledger operations, printing
//! one line per operation it completed, so the test knows what was acknowledged.
//!
//! ```text
//! shm-helper ledger <instance> <slot> <seed> <ops> <accounts> <hot>
//!     random operations: transfers (mostly between the <hot> first accounts), deposits,
//!     withdrawals; prints `ok <kind> <from> <to> <amount> <txn_id>` per applied operation
//! shm-helper once <instance> <slot> <op> <user> <to> <req_id> <amount>
//!     one deposit|withdraw|transfer with a given req_id; prints `ok <balance> <txn_id> <replayed>`
//! ```

use std::io::Write;

use shm::{Ledger, Segment};

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
    let mut rng = Rng(seed | 1);
    let stdout = std::io::stdout();
    // Buffered: a line is the acknowledgement, and one lost in a kill was simply never
    // acknowledged. Flushed every few hundred lines so acknowledgements keep flowing.
    let mut out = std::io::BufWriter::with_capacity(1 << 14, stdout.lock());
    let req_base = seed << 32;
    for i in 0..ops {
        let req_id = req_base + i;
        let roll = rng.below(100);
        let pick = |rng: &mut Rng| {
            if rng.below(10) < 8 {
                1 + rng.below(hot) as u32
            } else {
                1 + rng.below(accounts) as u32
            }
        };
        let amount = 1 + rng.below(1000);
        let (kind, from, to, result) = if roll < 70 {
            let from = pick(&mut rng);
            let mut to = pick(&mut rng);
            if to == from {
                to = 1 + (to % accounts as u32);
            }
            (
                "transfer",
                from,
                to,
                ledger.transfer(from, to, req_id, amount),
            )
        } else if roll < 85 {
            let user = pick(&mut rng);
            ("deposit", 0, user, ledger.deposit(user, req_id, amount))
        } else {
            let user = pick(&mut rng);
            ("withdraw", user, 0, ledger.withdraw(user, req_id, amount))
        };
        if let Ok(done) = result {
            let _ = writeln!(out, "ok {kind} {from} {to} {amount} {}", done.txn_id);
        }
        if i % 256 == 255 {
            let _ = out.flush();
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
