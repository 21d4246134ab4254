//! The ledger in one process: every refusal, idempotency, history, and the audit, in both lock
//! modes.

mod common;

use std::time::Duration;

use common::{create, register_users, small_caps};
use shm::ledger::{self, recover_slot};
use shm::{Ledger, LedgerError, LockMode};

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
        assert_eq!(l.transfer(a, 0, 8, 1), Err(LedgerError::UnknownAccount(0)));
        assert_eq!(l.deposit(77, 9, 1), Err(LedgerError::UnknownAccount(77)));
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
fn the_idempotency_ring_forgets_only_beyond_its_capacity() {
    let seg = create("idemring", small_caps(), LockMode::Account);
    let ids = register_users(&seg, 1);
    let mut l = Ledger::attach(&seg, 0).expect("attach");
    let k = u64::from(small_caps().idem_per_user);
    let first = l.deposit(ids[0], 1000, 1).expect("deposit");
    for r in 1..k {
        l.deposit(ids[0], 1000 + r, 1).expect("deposit");
    }
    // Still within the last k: replayed.
    assert!(l.deposit(ids[0], 1000, 1).expect("replay").replayed);
    assert_eq!(
        l.deposit(ids[0], 1000, 1).map(|a| a.txn_id),
        Ok(first.txn_id)
    );
    l.deposit(ids[0], 2000, 1)
        .expect("one more pushes the first out");
    assert!(!l.deposit(ids[0], 1000, 1).expect("applied again").replayed);
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
    l.deposit(ids[0], 0, 1_000_000).expect("deposit");
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
