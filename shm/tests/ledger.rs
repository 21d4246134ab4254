//! The ledger in one process: every refusal, idempotency, history, and the audit, in both lock
//! modes.

mod common;

use std::time::Duration;

use common::{create, register_users, small_caps};
use shm::ledger::Caller;
use shm::ledger::{self, recover_slot};
use shm::{Ledger, LedgerError, LockMode, SessionId, Users};

fn both_modes(test: impl Fn(LockMode)) {
    test(LockMode::Account);
    test(LockMode::Global);
}

#[test]
fn deposit_withdraw_transfer_move_money_and_conserve_it() {
    both_modes(|mode| {
        let seg = create("basic", small_caps(), mode);
        let ids = register_users(&seg, 3);
        let mut l = Ledger::attach(&seg, 0).expect("attach");
        let d = l.deposit(ids[0], 1, 1000).expect("deposit");
        assert_eq!((d.balance, d.txn_id, d.replayed), (1000, 1, false));
        let w = l.withdraw(ids[0], 2, 300).expect("withdraw");
        assert_eq!((w.balance, w.txn_id), (700, 2));
        let t = l.transfer(ids[0], ids[1], 3, 200).expect("transfer");
        assert_eq!((t.balance, t.txn_id), (500, 3));
        assert_eq!(ledger::balance(&seg, ids[0]), Ok(500));
        assert_eq!(ledger::balance(&seg, ids[1]), Ok(200));
        assert_eq!(ledger::balance(&seg, ids[2]), Ok(0));
        let report = ledger::audit(&seg, Duration::from_secs(1)).expect("audit");
        assert!(report.ok(), "{:?}", report.violations);
        assert_eq!(report.balance_sum, 700);
        assert_eq!((report.deposits, report.withdrawals), (1000, 300));
        assert!(report.full_replay);
        assert_eq!(report.log_entries_checked, 3);
    });
}

#[test]
fn every_refusal_changes_nothing() {
    both_modes(|mode| {
        let seg = create("refuse", small_caps(), mode);
        let ids = register_users(&seg, 2);
        let (a, b) = (ids[0], ids[1]);
        let mut l = Ledger::attach(&seg, 0).expect("attach");
        l.deposit(a, 1, 100).expect("deposit");
        assert_eq!(l.deposit(a, 2, 0), Err(LedgerError::InvalidAmount));
        assert_eq!(l.withdraw(a, 3, 0), Err(LedgerError::InvalidAmount));
        assert_eq!(l.transfer(a, b, 4, 0), Err(LedgerError::InvalidAmount));
        assert_eq!(
            l.withdraw(a, 5, 101),
            Err(LedgerError::InsufficientFunds { balance: 100 })
        );
        assert_eq!(
            l.transfer(a, b, 6, 101),
            Err(LedgerError::InsufficientFunds { balance: 100 })
        );
        assert_eq!(l.transfer(a, a, 7, 1), Err(LedgerError::SelfTransfer));
        assert_eq!(
            l.transfer(a, 999, 8, 1),
            Err(LedgerError::UnknownAccount(999))
        );
        assert_eq!(l.transfer(a, 0, 9, 1), Err(LedgerError::UnknownAccount(0)));
        assert_eq!(l.deposit(77, 9, 1), Err(LedgerError::UnknownAccount(77)));
        assert_eq!(l.deposit(a, 9, 0), Err(LedgerError::InvalidAmount));
        assert_eq!(l.deposit(a, 10, u64::MAX), Err(LedgerError::Overflow));
        l.deposit(b, 11, u64::MAX).expect("b to the brim");
        assert_eq!(l.transfer(a, b, 12, 1), Err(LedgerError::Overflow));
        assert_eq!(ledger::balance(&seg, a), Ok(100));
        assert_eq!(ledger::balance(&seg, b), Ok(u64::MAX));
        let report = ledger::audit(&seg, Duration::from_secs(1)).expect("audit");
        assert!(report.ok(), "{:?}", report.violations);
        assert_eq!(report.txn_seq, 2, "refusals take no transaction id");
        assert_eq!(report.balance_sum, 100 + u128::from(u64::MAX));
    });
}

#[test]
fn a_retried_req_id_returns_the_first_result_and_applies_once() {
    both_modes(|mode| {
        let seg = create("idem", small_caps(), mode);
        let ids = register_users(&seg, 2);
        let mut l = Ledger::attach(&seg, 0).expect("attach");
        l.deposit(ids[0], 1, 500).expect("deposit");
        let first = l.transfer(ids[0], ids[1], 42, 100).expect("transfer");
        let again = l.transfer(ids[0], ids[1], 42, 100).expect("retry");
        assert!(again.replayed);
        assert_eq!((again.balance, again.txn_id), (first.balance, first.txn_id));
        assert_eq!(ledger::balance(&seg, ids[0]), Ok(400));
        // The same req_id for another operation is refused, not applied.
        assert_eq!(
            l.transfer(ids[0], ids[1], 42, 101),
            Err(LedgerError::ReqIdReused)
        );
        assert_eq!(l.withdraw(ids[0], 42, 100), Err(LedgerError::ReqIdReused));
        // Another user's req_id 42 is theirs.
        l.deposit(ids[1], 42, 5).expect("b's own 42");
        assert_eq!(ledger::stats(&seg).txn_seq, 3);
    });
}

#[test]
fn a_late_copy_is_never_applied_however_many_requests_came_after() {
    both_modes(|mode| {
        let seg = create("late", small_caps(), mode);
        let ids = register_users(&seg, 1);
        let a = ids[0];
        let mut l = Ledger::attach(&seg, 0).expect("attach");
        let k = u64::from(small_caps().results_per_user);
        let first = l.deposit(a, 1000, 1001).expect("deposit");
        // Far more later requests than results are kept.
        for r in 1..=10 * k {
            l.deposit(a, 1000 + r, 1).expect("later deposit");
        }
        let balance = 1001 + 10 * k;
        assert_eq!(ledger::req_id_hw(&seg, a), Ok(1000 + 10 * k));
        assert_eq!(
            l.deposit(a, 1000, 1001),
            Err(LedgerError::Stale {
                req_id_hw: 1000 + 10 * k,
                within_kept: false
            }),
            "the late copy of {first:?} is refused"
        );
        // A copy within the kept results still gets its first answer.
        let recent = 1000 + 10 * k - 1;
        let again = l.deposit(a, recent, 1).expect("replay");
        assert!(again.replayed);
        assert_eq!(again.balance, balance - 1);
        assert_eq!(ledger::balance(&seg, a), Ok(balance));
        assert_eq!(ledger::stats(&seg).txn_seq, 1 + 10 * k);
    });
}

#[test]
fn a_req_id_passed_over_is_stale_and_never_applied_later() {
    both_modes(|mode| {
        let seg = create("skip", small_caps(), mode);
        let ids = register_users(&seg, 2);
        let (a, b) = (ids[0], ids[1]);
        let mut l = Ledger::attach(&seg, 0).expect("attach");
        l.deposit(a, 10, 500).expect("deposit");
        // req_id 9 never reached the ledger before 10 did: refused, now and on every retry.
        for _ in 0..3 {
            assert_eq!(
                l.transfer(a, b, 9, 100),
                Err(LedgerError::Stale {
                    req_id_hw: 10,
                    within_kept: true
                })
            );
        }
        assert_eq!(
            l.deposit(a, 0, 1),
            Err(LedgerError::Stale {
                req_id_hw: 10,
                within_kept: false
            }),
            "req_id 0 is below every high-water mark"
        );
        assert_eq!(ledger::balance(&seg, a), Ok(500));
        assert_eq!(ledger::balance(&seg, b), Ok(0));
        // The high-water mark is per user: b's first request may use any id.
        l.deposit(b, 3, 7).expect("b's own ids");
        assert_eq!(ledger::req_id_hw(&seg, b), Ok(3));
    });
}

#[test]
fn a_refusal_is_decided_once_and_its_retry_gets_the_same_answer() {
    both_modes(|mode| {
        let seg = create("refuse-once", small_caps(), mode);
        let ids = register_users(&seg, 2);
        let (a, b) = (ids[0], ids[1]);
        let mut l = Ledger::attach(&seg, 0).expect("attach");
        l.deposit(a, 1, 50).expect("deposit");
        let refused = l.withdraw(a, 2, 80);
        assert_eq!(refused, Err(LedgerError::InsufficientFunds { balance: 50 }));
        l.deposit(a, 3, 100).expect("now there are funds");
        // The retry of req 2 gets the first answer, although it would succeed now.
        assert_eq!(l.withdraw(a, 2, 80), refused);
        assert_eq!(l.transfer(a, b, 2, 80), Err(LedgerError::ReqIdReused));
        // An unknown recipient too: registering the name later does not change the answer.
        assert_eq!(l.transfer(a, 3, 4, 10), Err(LedgerError::UnknownAccount(3)));
        let c = register_users_from(&seg, 3);
        assert_eq!(c, 3);
        assert_eq!(l.transfer(a, 3, 4, 10), Err(LedgerError::UnknownAccount(3)));
        l.deposit(b, 1, u64::MAX).expect("b to the brim");
        let overflow = l.transfer(a, b, 5, 1);
        assert_eq!(overflow, Err(LedgerError::Overflow));
        l.withdraw(b, 2, 10).expect("room in b now");
        assert_eq!(l.transfer(a, b, 5, 1), overflow);
        assert_eq!(ledger::balance(&seg, a), Ok(150));
        assert_eq!(ledger::stats(&seg).txn_seq, 4, "refusals take no txn id");
        let report = ledger::audit(&seg, Duration::from_secs(1)).expect("audit");
        assert!(report.ok(), "{:?}", report.violations);
    });
}

#[test]
fn a_superseded_session_is_refused_under_the_lock_and_changes_nothing() {
    both_modes(|mode| {
        let seg = create("fence", small_caps(), mode);
        let ids = register_users(&seg, 2);
        let (a, b) = (ids[0], ids[1]);
        let users = Users::of(&seg);
        let old = SessionId { worker: 0, conn: 7 };
        let new = SessionId { worker: 1, conn: 9 };
        let mut l = Ledger::attach(&seg, 0).expect("attach");
        users.set_online(a, old).expect("online");
        let on = |s| Caller {
            user: a,
            session: Some(s),
        };
        l.deposit(on(old), 1, 100).expect("current session");
        users.set_online(a, new).expect("a newer login");
        assert_eq!(
            l.transfer(on(old), b, 2, 10),
            Err(LedgerError::SessionSuperseded)
        );
        assert_eq!(
            l.deposit(on(old), 3, 10),
            Err(LedgerError::SessionSuperseded)
        );
        assert_eq!(ledger::req_id_hw(&seg, a), Ok(1), "nothing was decided");
        // The retry on the new session applies it, once.
        let t = l
            .transfer(on(new), b, 2, 10)
            .expect("retry on the new session");
        assert!(!t.replayed);
        assert!(l.transfer(on(new), b, 2, 10).expect("again").replayed);
        assert_eq!(ledger::balance(&seg, a), Ok(90));
        users.set_offline(a, new);
        assert_eq!(
            l.deposit(on(new), 4, 1),
            Err(LedgerError::SessionSuperseded),
            "a session that ended is not current either"
        );
    });
}

/// Registers one more user `u{n}`; returns its id.
fn register_users_from(seg: &shm::Segment, n: u32) -> u32 {
    Users::of(seg)
        .register(&format!("u{n}"), &common::creds())
        .expect("register")
}

#[test]
fn history_follows_each_account_newest_first() {
    let seg = create("hist", small_caps(), LockMode::Account);
    let ids = register_users(&seg, 3);
    let (a, b, c) = (ids[0], ids[1], ids[2]);
    let mut l = Ledger::attach(&seg, 0).expect("attach");
    l.deposit(a, 1, 1000).expect("1");
    l.deposit(c, 2, 50).expect("2");
    l.transfer(a, b, 3, 100).expect("3");
    l.transfer(c, a, 4, 20).expect("4");
    l.withdraw(b, 5, 30).expect("5");
    let h = ledger::history(&seg, a, 0, 10).expect("history");
    let ids_a: Vec<u64> = h.iter().map(|t| t.txn_id).collect();
    assert_eq!(ids_a, vec![4, 3, 1]);
    assert_eq!(h[0].to_balance, 920);
    assert_eq!(h[1].from_balance, 900);
    let h = ledger::history(&seg, b, 0, 10).expect("history");
    assert_eq!(h.iter().map(|t| t.txn_id).collect::<Vec<_>>(), vec![5, 3]);
    assert_eq!(h[0].from_balance, 70);
    // Paging: before 4, at most 1.
    let h = ledger::history(&seg, a, 4, 1).expect("history");
    assert_eq!(h.iter().map(|t| t.txn_id).collect::<Vec<_>>(), vec![3]);
    assert_eq!(
        ledger::history(&seg, 99, 0, 10),
        Err(LedgerError::UnknownAccount(99))
    );
}

#[test]
fn a_wrapped_log_still_audits_and_history_stops_where_the_ring_does() {
    let mut caps = small_caps();
    caps.txn_log = 16;
    let seg = create("wrap", caps, LockMode::Account);
    let ids = register_users(&seg, 2);
    let mut l = Ledger::attach(&seg, 0).expect("attach");
    l.deposit(ids[0], 1, 1_000_000).expect("deposit");
    l.deposit(ids[1], 1, 1_000_000).expect("deposit");
    for i in 2..100 {
        l.transfer(ids[i as usize % 2], ids[(i as usize + 1) % 2], i, 7)
            .expect("transfer");
    }
    let report = ledger::audit(&seg, Duration::from_secs(1)).expect("audit");
    assert!(report.ok(), "{:?}", report.violations);
    assert!(!report.full_replay);
    assert_eq!(report.log_entries_checked, 16);
    let h = ledger::history(&seg, ids[0], 0, 1000).expect("history");
    assert_eq!(h.len(), 16, "only what the ring holds");
}

#[test]
fn the_audit_catches_a_balance_changed_behind_the_ledgers_back() {
    both_modes(|mode| {
        let seg = create("tamper", small_caps(), mode);
        let ids = register_users(&seg, 2);
        let mut l = Ledger::attach(&seg, 0).expect("attach");
        l.deposit(ids[0], 1, 100).expect("deposit");
        l.transfer(ids[0], ids[1], 2, 40).expect("transfer");
        assert!(ledger::audit(&seg, Duration::from_secs(1))
            .expect("audit")
            .ok());
        // Recovering a slot that holds no intent changes nothing.
        let r = recover_slot(&seg, 0).expect("recover");
        assert_eq!((r.locks_recovered, r.intents_recovered), (0, 0));
        // A credit that happened outside the ledger: conservation and the log both object.
        shm::ledger::fault_injection::set_balance(&seg, ids[1], 41);
        let report = ledger::audit(&seg, Duration::from_secs(1)).expect("audit");
        assert!(!report.ok());
        let all = report.violations.join("\n");
        assert!(all.contains("conservation"), "{all}");
        assert!(all.contains("account 2"), "{all}");
    });
}

#[test]
fn a_read_only_segment_refuses_ledger_writes_and_audits() {
    let seg = create("ro", small_caps(), LockMode::Account);
    register_users(&seg, 1);
    let ro = shm::Segment::attach(&common::instance(&seg), false).expect("attach ro");
    assert!(matches!(
        Ledger::attach(&ro, 0),
        Err(shm::ShmError::ReadOnly)
    ));
    assert!(matches!(
        ledger::audit(&ro, Duration::from_secs(1)),
        Err(shm::ShmError::ReadOnly)
    ));
    assert_eq!(ledger::balance(&ro, 1), Ok(0));
}
