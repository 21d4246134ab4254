//! The ledger under real concurrency: several helper processes (spawned, never forked from the
//! threaded harness), random operations on hot accounts, and `kill -9` at random instants.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{create, instance, register_users, Helper};
use shm::ledger::{self, TxnRecord};
use shm::{Capacities, Ledger, LockMode, Segment};

const ACCOUNTS: u32 = 64;
const HOT: u32 = 8;
const FUNDS: u64 = 1_000_000;

fn caps(txn_log: u32) -> Capacities {
    Capacities {
        users: 128,
        rooms: 4,
        members_per_room: 4,
        room_ring: 4,
        txn_log,
        results_per_user: 8,
        workers: 8,
    }
}

/// A segment with ACCOUNTS funded accounts; the funding runs in slot 7.
fn funded(tag: &str, txn_log: u32, mode: LockMode) -> Segment {
    let seg = create(tag, caps(txn_log), mode);
    let ids = register_users(&seg, ACCOUNTS);
    let mut l = Ledger::attach(&seg, 7).expect("attach");
    for id in ids {
        l.deposit(id, u64::from(id), FUNDS).expect("fund");
    }
    seg
}

fn ledger_args(seg: &Segment, slot: u32, seed: u64, ops: u64, pace_ns: u64) -> Vec<String> {
    [
        "ledger".to_string(),
        instance(seg),
        slot.to_string(),
        seed.to_string(),
        ops.to_string(),
        ACCOUNTS.to_string(),
        HOT.to_string(),
        pace_ns.to_string(),
    ]
    .to_vec()
}

/// An acknowledged operation, as a helper printed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ack {
    kind: shm::ledger::TxnKind,
    from: u32,
    to: u32,
    amount: u64,
    txn_id: u64,
}

/// The acknowledgements in a helper's output: 32-byte records (see shm-helper). Only the last
/// can be cut short, by a kill; it was never acknowledged.
fn parse_acks(out: &[u8]) -> Vec<Ack> {
    let whole = out.len() / 32;
    let mut acks = Vec::with_capacity(whole);
    for (i, r) in out.chunks(32).enumerate() {
        if r.len() < 32 {
            assert_eq!(i, whole, "only the last record can be short");
            break;
        }
        let u32_at = |o: usize| u32::from_le_bytes(r[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(r[o..o + 8].try_into().expect("8 bytes"));
        assert_eq!(u32_at(28), 0xACC0_57ED, "record {i} is garbled");
        let kind = match r[0] {
            1 => shm::ledger::TxnKind::Deposit,
            2 => shm::ledger::TxnKind::Withdraw,
            3 => shm::ledger::TxnKind::Transfer,
            other => panic!("unknown kind {other}"),
        };
        acks.push(Ack {
            kind,
            from: u32_at(4),
            to: u32_at(8),
            amount: u64_at(12),
            txn_id: u64_at(20),
        });
    }
    acks
}

/// Every acknowledged operation is in the log, exactly as acknowledged.
fn check_acks_in_log(seg: &Segment, acks: &[Ack]) {
    let mut log: HashMap<u64, TxnRecord> = HashMap::new();
    for id in 1..=ACCOUNTS {
        for t in ledger::history(seg, id, 0, usize::MAX).expect("history") {
            log.insert(t.txn_id, t);
        }
    }
    for a in acks {
        let t = log
            .get(&a.txn_id)
            .unwrap_or_else(|| panic!("acknowledged {a:?} is not in the log"));
        assert_eq!(
            (t.kind, t.from, t.to, t.amount),
            (a.kind, a.from, a.to, a.amount),
            "txn {} differs from its acknowledgement",
            a.txn_id
        );
    }
}

fn audit_ok(seg: &Segment) -> ledger::AuditReport {
    let report = ledger::audit(seg, Duration::from_secs(5)).expect("audit");
    assert!(report.ok(), "audit: {:#?}", report.violations);
    report
}

#[test]
fn four_processes_times_100k_operations_conserve_money_exactly() {
    for mode in [LockMode::Account, LockMode::Global] {
        let seg = funded("4x100k", 1 << 19, mode);
        let helpers: Vec<Helper> = (0..4)
            .map(|slot| Helper::spawn(&ledger_args(&seg, slot, 1000 + u64::from(slot), 100_000, 0)))
            .collect();
        let mut acks = Vec::new();
        for h in helpers {
            let (lines, ok) = h.finish();
            assert!(ok, "a helper failed");
            acks.extend(parse_acks(&lines));
        }
        let report = audit_ok(&seg);
        assert!(
            report.full_replay,
            "the log must hold every transaction here"
        );
        assert_eq!(report.log_holes, 0);
        assert_eq!(
            report.txn_seq,
            u64::from(ACCOUNTS) + acks.len() as u64,
            "every id handed out was acknowledged"
        );
        assert!(
            acks.len() > 300_000,
            "most operations apply: {}",
            acks.len()
        );
        check_acks_in_log(&seg, &acks);
        let st = ledger::stats(&seg);
        eprintln!(
            "{mode:?}: {} ops acknowledged, {} lock waits ({} ms waiting)",
            acks.len(),
            st.lock_waits,
            st.lock_wait_ns / 1_000_000
        );
    }
}

/// Least time per operation in the kill test.
const PACE_NS: u64 = 4000;

#[test]
fn kill_9_at_random_instants_loses_nothing_acknowledged() {
    use std::os::unix::process::ExitStatusExt;

    for mode in [LockMode::Account, LockMode::Global] {
        // Helpers run until killed, each at most one operation per PACE_NS, so the whole test
        // stays below the 2 Mi transactions the log holds and every acknowledged one is in it.
        let seg = funded("kill9", 1 << 21, mode);
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let mut seed = 1u64;
        let mut spawn = |slot: usize| {
            seed += 1;
            Helper::spawn(&ledger_args(&seg, slot as u32, seed, u64::MAX, PACE_NS))
        };
        let mut helpers: Vec<Helper> = (0..4).map(&mut spawn).collect();
        let mut acks = Vec::new();
        let (mut kills, mut finished) = (0, 0);
        let deadline = Instant::now() + Duration::from_secs(120);
        // At least 200 kills, and on until at least 5 of them landed while a lock was held and
        // at least one between a prepared intent and the end of its apply (rolled forward).
        let landed = |seg: &Segment| {
            let st = ledger::stats(seg);
            st.locks_recovered >= 5 && st.intents_recovered >= 1
        };
        while kills < 200 || !landed(&seg) {
            assert!(
                Instant::now() < deadline,
                "took too long: {kills} kills, {} while holding a lock, {} mid-intent",
                ledger::stats(&seg).locks_recovered,
                ledger::stats(&seg).intents_recovered
            );
            std::thread::sleep(Duration::from_micros(200 + next(1000)));
            let slot = next(4) as usize;
            let victim = helpers.remove(slot);
            let (lines, status) = victim.kill9();
            // Count only kills that found the helper running (killed by our SIGKILL).
            if status.signal() == Some(libc::SIGKILL) {
                kills += 1;
            } else {
                assert!(status.success(), "helper failed: {status:?}");
                finished += 1;
            }
            acks.extend(parse_acks(&lines));
            // The replacement claims the same slot, finishing whatever its predecessor left.
            helpers.insert(slot, spawn(slot));
        }
        for h in helpers {
            acks.extend(parse_acks(&h.kill9().0));
        }
        // Finish the last victims' slots as the master would, then audit.
        for slot in 0..4 {
            ledger::recover_slot(&seg, slot).expect("recover");
        }
        let report = audit_ok(&seg);
        let st = ledger::stats(&seg);
        assert!(st.locks_recovered >= 5, "kills landed holding a lock");
        assert!(
            st.intents_recovered >= 1,
            "a kill landed between an intent and its apply"
        );
        eprintln!(
            "{mode:?}: {kills} kills ({finished} helpers finished first), {} ops acknowledged, \
             {} locks taken over from dead owners, {} half-done operations rolled forward, \
             {} unused ids",
            acks.len(),
            st.locks_recovered,
            st.intents_recovered,
            report.log_holes
        );
        assert!(report.full_replay, "the log wrapped: raise its capacity");
        check_acks_in_log(&seg, &acks);
        // No lock is stuck: every account can be locked again at once.
        let mut l = Ledger::attach(&seg, 5).expect("attach");
        for id in 1..=ACCOUNTS {
            l.deposit(id, u64::MAX - u64::from(id), 1)
                .expect("every account is usable");
        }
        audit_ok(&seg);
    }
}

#[test]
fn one_req_id_from_two_processes_applies_once() {
    let seg = funded("idem2", 1 << 12, LockMode::Account);
    let dir = std::env::temp_dir();
    for round in 0..20u64 {
        let req_id = 7_000 + round;
        // Both helpers attach, say `ready`, and spin until this file appears: they start the
        // transfer within microseconds of each other.
        let go = dir.join(format!("{}-go-{round}", instance(&seg)));
        let _ = std::fs::remove_file(&go);
        let args = |slot: u32| {
            vec![
                "once".to_string(),
                instance(&seg),
                slot.to_string(),
                "transfer".to_string(),
                "1".to_string(),
                "2".to_string(),
                req_id.to_string(),
                "10".to_string(),
                go.display().to_string(),
            ]
        };
        let before = ledger::balance(&seg, 1).expect("balance");
        let a = Helper::spawn(&args(0));
        let b = Helper::spawn(&args(1));
        let deadline = Instant::now() + Duration::from_secs(10);
        while a.output_len() < 6 || b.output_len() < 6 {
            assert!(Instant::now() < deadline, "helpers never got ready");
            std::thread::sleep(Duration::from_millis(1));
        }
        std::fs::write(&go, b"go").expect("barrier file");
        let (la, oka) = a.finish();
        let (lb, okb) = b.finish();
        let _ = std::fs::remove_file(&go);
        assert!(oka && okb);
        let (la, lb) = (String::from_utf8_lossy(&la), String::from_utf8_lossy(&lb));
        let ra: Vec<&str> = la.split_whitespace().skip(1).collect();
        let rb: Vec<&str> = lb.split_whitespace().skip(1).collect();
        assert_eq!(ra[0], "ok", "{la:?}");
        assert_eq!(rb[0], "ok", "{lb:?}");
        assert_eq!(ra[1..3], rb[1..3], "same balance and txn id for both");
        assert_ne!(ra[3], rb[3], "exactly one of them was a replay");
        assert_eq!(ledger::balance(&seg, 1), Ok(before - 10), "applied once");
    }
    audit_ok(&seg);
}

/// The journal under the same random kills: a drain thread plays the writer (copies the ring's
/// records and marks them durable) while helpers are killed at random instants, also inside the
/// journal lock and between an intent's commit point and its record. Replaying every record
/// drained, in LSN order, into a fresh segment must give exactly the live ledger: no record
/// lost, none twice, no hole (a hole would be an undecodable ring entry).
#[test]
fn the_journal_replays_to_the_live_ledger_after_kill_9_at_random_instants() {
    use shm::journal;
    use std::sync::atomic::{AtomicBool, Ordering};
    let mode = LockMode::Account;
    let seg = create("journal9", caps(1 << 21), mode);
    journal::set_mode(&seg, journal::Mode::Sync);
    journal::start_at(&seg, 0);
    let ids = register_users(&seg, ACCOUNTS);
    {
        let mut l = Ledger::attach(&seg, 7).expect("attach");
        for &id in &ids {
            l.deposit(id, u64::from(id), FUNDS).expect("fund");
        }
    }
    let stop = AtomicBool::new(false);
    let drain = |seg: &Segment, records: &mut Vec<(u64, journal::Record)>| {
        let from = records.last().map_or(0, |r| r.0 + 1);
        let end = journal::read_pending(seg, from, 4096, records);
        journal::set_durable(seg, end);
    };
    let records = std::thread::scope(|s| {
        let drainer = s.spawn(|| {
            let mut records = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                drain(&seg, &mut records);
                std::thread::sleep(Duration::from_micros(200));
            }
            records
        });
        let mut seed = 100u64;
        let mut spawn = |slot: usize| {
            seed += 1;
            Helper::spawn(&ledger_args(&seg, slot as u32, seed, u64::MAX, PACE_NS))
        };
        let mut helpers: Vec<Helper> = (0..4).map(&mut spawn).collect();
        let mut rng = 0x2545_F491_4F6C_DD1Du64;
        let mut kills = 0;
        let deadline = Instant::now() + Duration::from_secs(120);
        let landed = |seg: &Segment| {
            journal::stats(seg).repairs >= 1 && ledger::stats(seg).intents_recovered >= 1
        };
        while kills < 100 || !landed(&seg) {
            assert!(
                Instant::now() < deadline,
                "took too long: {kills} kills, {} inside the journal lock",
                journal::stats(&seg).repairs
            );
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            std::thread::sleep(Duration::from_micros(100 + rng % 700));
            let slot = (rng >> 20) as usize % 4;
            let victim = helpers.remove(slot);
            victim.kill9();
            kills += 1;
            helpers.insert(slot, spawn(slot));
        }
        for h in helpers {
            h.kill9();
        }
        for slot in 0..4 {
            ledger::recover_slot(&seg, slot).expect("recover");
        }
        // The next journal lock owes a repair if the last kill landed inside it.
        Ledger::attach(&seg, 6)
            .expect("attach")
            .deposit(ids[0], 1 << 40, 1)
            .expect("a deposit after the kills");
        stop.store(true, Ordering::Relaxed);
        let mut records = drainer.join().expect("drain thread");
        drain(&seg, &mut records);
        eprintln!(
            "{kills} kills, {} records, journal lock taken over {} times, {} intents rolled forward",
            records.len(),
            journal::stats(&seg).repairs,
            ledger::stats(&seg).intents_recovered
        );
        records
    });
    assert_eq!(
        records.len() as u64,
        journal::head(&seg),
        "every LSN drained once"
    );
    for (i, (lsn, _)) in records.iter().enumerate() {
        assert_eq!(*lsn, i as u64, "LSNs without a hole");
    }
    let copy = Segment::private(caps(1 << 21), mode).expect("private segment");
    for (lsn, r) in &records {
        ledger::replay(&copy, r).unwrap_or_else(|e| panic!("record {lsn}: {e}"));
    }
    audit_ok(&seg);
    audit_ok(&copy);
    for id in 1..=ACCOUNTS {
        assert_eq!(
            ledger::balance(&copy, id),
            ledger::balance(&seg, id),
            "account {id}: the journal's replay differs from the live ledger"
        );
    }
    assert_eq!(ledger::stats(&copy).txn_seq, ledger::stats(&seg).txn_seq);
}
