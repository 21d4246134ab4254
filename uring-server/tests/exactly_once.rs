//! Exactly once for money, over the wire, on both backends (PROTOCOL.md 8.4): a late copy of a
//! ledger request is never applied after its retry was answered, whatever happened in between,
//! and a retry after the serving worker was killed gets the first answer.
//!
//! Each test checks outcomes by reading BALANCE and TXN_HISTORY back over the wire and comparing
//! them with what the client itself sent and was told.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use proto::body::TxnKind;
use proto::Status;
use test_support::*;

/// Signals one worker. A pid of 0 or 1 would signal a whole process group or init: refused.
fn signal(pid: u32, sig: Signal) {
    assert!(pid > 1, "not a worker pid: {pid}");
    kill(Pid::from_raw(pid as i32), sig).expect("signal a worker");
}

/// Waits for the worker at `index` to be a running process other than `old`.
fn wait_restarted(server: &Server, index: usize, old: u32) {
    wait_until(
        Duration::from_secs(10),
        &format!("worker {index} is restarted"),
        || server.worker_pids().get(index).copied().unwrap_or(0) != old,
    );
}

/// The sequence of issue 10: worker a is slow to read request R (here: stopped); the client
/// gives up, logs in again on worker b (ending the first session), re-sends R and 20 more
/// requests; worker a resumes and reads R. R must be applied once. The late copy is answered
/// ERR_SESSION_SUPERSEDED, or, if worker a's once-a-second sweep notices the newer login before
/// it reads R, never read: the connection gets LOGGED_IN_ELSEWHERE and closes.
#[test]
fn a_late_copy_on_a_superseded_session_is_never_applied_after_its_retry_was_answered() {
    for (backend, lock_mode) in BACKENDS
        .into_iter()
        .flat_map(|b| [(b, "account"), (b, "global")])
    {
        let server = Server::start(
            "late",
            &["-w", "2", "--io", backend, "--lock-mode", lock_mode],
        );
        let pids = server.worker_pids();
        let mut a = client_on_worker(&server, 0);
        a.join_as("late");
        let r = a.next_req_id();
        // The retry's connection, opened while worker 0 still accepts and answers HELLO.
        let mut b = client_on_worker(&server, 1);
        // Worker 0 stops before it can read R: R waits in the socket's receive buffer.
        signal(pids[0], Signal::SIGSTOP);
        a.send_raw(&Client::frame(r, &deposit(1001)));
        assert_eq!(b.login_with("late", secret()), Status::Ok);
        assert!(b.req_id_hw < r, "R was never decided");
        let (balance, txn_id) = b.ledger_with_id(r, &deposit(1001)).expect("the retry");
        assert_eq!(balance, 1001);
        b.next_id_at_least(r);
        for i in 1..=20 {
            assert_eq!(b.ledger(&deposit(1)), Ok((1001 + i, txn_id + i)));
        }
        // Worker 0 resumes and reads the late copy of R.
        signal(pids[0], Signal::SIGCONT);
        // Everything A gets until the server closes it (a read timeout panics).
        let mut got = Vec::new();
        while let Some(g) = a.next() {
            got.push(g);
        }
        let answers: Vec<Status> = got
            .iter()
            .filter(|g| g.is_response())
            .map(|g| g.status())
            .collect();
        assert!(
            answers == [Status::ErrSessionSuperseded] || answers.is_empty(),
            "{backend}: the late copy is refused, never applied: {answers:?}"
        );
        assert!(
            got.iter()
                .any(|g| !g.is_response() && g.opcode() == Some(proto::Opcode::Notice)),
            "{backend}: A is told LOGGED_IN_ELSEWHERE"
        );
        eprintln!(
            "{backend}, {lock_mode} locks: late copy {}",
            if answers.is_empty() {
                "dropped by the sweep's kick"
            } else {
                "answered ERR_SESSION_SUPERSEDED"
            }
        );
        assert_eq!(b.balance(), 1021, "{backend}: R applied once");
        let h = history(&mut b);
        let big: Vec<_> = h.iter().filter(|t| t.2 == 1001).collect();
        assert_eq!(big, vec![&(txn_id, TxnKind::Deposit, 1001)], "{backend}");
        assert_eq!(h.len(), 21);
        // A retry on the current session, long after, still never applies it twice.
        let again = b.ledger_with_id(r, &deposit(1001));
        assert!(
            again == Ok((1001, txn_id)) || again == Err(Status::ErrStaleRequest),
            "{backend}: {again:?}"
        );
        assert_eq!(b.balance(), 1021);
    }
}

/// The high-water mark alone, on one session: with 4 outcomes kept, a copy of R sent after 20
/// later requests is refused as stale; one within the window gets its first answer.
#[test]
fn a_copy_older_than_the_kept_outcomes_is_stale_and_one_within_them_is_replayed() {
    for backend in BACKENDS {
        let server = Server::start(
            "stale",
            &["-w", "1", "--io", backend, "--results-per-user", "4"],
        );
        let mut c = server.client();
        c.join_as("stale");
        let r = c.next_req_id();
        let (_, first_txn) = c.ledger_with_id(r, &deposit(1001)).expect("R");
        let mut last = (0, 0);
        for _ in 0..20 {
            last = c.ledger(&deposit(1)).expect("later");
        }
        let g = c.call_with_id(r, &deposit(1001));
        assert_eq!(g.status(), Status::ErrStaleRequest, "{backend}");
        // The last request is within the window: the same answer again.
        let last_id = c.next_id_peek();
        assert_eq!(c.ledger_with_id(last_id, &deposit(1)), Ok(last));
        // A req_id that was skipped over is refused too, and stays refused.
        let skipped = c.next_req_id();
        let next = c.next_req_id();
        c.ledger_with_id(next, &deposit(5)).expect("next");
        for _ in 0..2 {
            assert_eq!(
                c.ledger_with_id(skipped, &deposit(7)),
                Err(Status::ErrStaleRequest)
            );
        }
        assert_eq!(c.balance(), 1001 + 20 + 5, "{backend}");
        let h = history(&mut c);
        assert_eq!(h.len(), 22);
        assert_eq!(h.last().map(|t| t.0), Some(first_txn));
        // A new login reports the high-water mark, so a client that lost count goes on above it.
        let mut d = server.client();
        assert_eq!(d.login_with("stale", secret()), Status::Ok);
        assert_eq!(d.req_id_hw, next, "{backend}");
    }
}

/// Kill before the answer. Case 1: the worker applied TRANSFER R and was killed before the
/// client read the answer; the retry on the other worker gets the same txn_id, and the money
/// moved once. Case 2: the worker was killed before it read R; the retry applies it, once.
#[test]
fn a_retry_after_the_worker_was_killed_gets_the_first_answer_or_applies_once() {
    for backend in BACKENDS {
        let server = Server::start("killret", &["-w", "2", "--io", backend]);
        let mut peer = server.client();
        peer.join_as("payee");
        let seg = shm::Segment::attach(&server.name, false).expect("attach");
        for (case, read_first) in [(1, true), (2, false)] {
            let pids = server.worker_pids();
            let user = format!("payer{case}");
            let mut a = client_on_worker(&server, 0);
            a.join_as(&user);
            a.ledger(&deposit(10_000)).expect("fund");
            let payer = a.user_id;
            let payee_before = shm::ledger::balance(&seg, peer.user_id).expect("balance");
            let r = a.next_req_id();
            let mut b = client_on_worker(&server, 1);
            if !read_first {
                signal(pids[0], Signal::SIGSTOP);
            }
            a.send_raw(&Client::frame(r, &transfer_to("payee", 2_500)));
            if read_first {
                // Wait until the worker applied it (read from shared memory), then kill it
                // before the client reads any answer.
                let deadline = Instant::now() + Duration::from_secs(10);
                while shm::ledger::balance(&seg, payer) != Ok(7_500) {
                    assert!(Instant::now() < deadline, "R was never applied");
                    std::thread::yield_now();
                }
            }
            signal(pids[0], Signal::SIGKILL);
            drop(a);
            wait_restarted(&server, 0, pids[0]);
            assert_eq!(b.login_with(&user, secret()), Status::Ok);
            let answer = b.ledger_with_id(r, &transfer_to("payee", 2_500));
            let (balance, txn_id) = answer.expect("the retry is answered");
            assert_eq!(balance, 7_500, "{backend} case {case}");
            let h = history(&mut b);
            let transfers: Vec<_> = h.iter().filter(|t| t.1 == TxnKind::Transfer).collect();
            assert_eq!(
                transfers,
                vec![&(txn_id, TxnKind::Transfer, 2_500)],
                "{backend} case {case}: one log entry, the answer's txn_id"
            );
            assert_eq!(b.balance(), 7_500);
            assert_eq!(
                shm::ledger::balance(&seg, peer.user_id),
                Ok(payee_before + 2_500),
                "{backend} case {case}: credited once"
            );
            // Asked again, the same answer.
            assert_eq!(
                b.ledger_with_id(r, &transfer_to("payee", 2_500)),
                Ok((7_500, txn_id))
            );
        }
        let (code, out) = server.tool(&["audit"]);
        assert_eq!(code, 0, "{backend}: {out}");
    }
}
