//! Faults under load, on both backends: kill -9 of a worker (restarted, state recovered, other
//! workers' clients untouched) and SIGINT (graceful: exit 0, shared memory gone, whole frames).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use proto::{Request, Status};
use test_support::*;

/// Opens connections until `per_worker` clients are logged in on each of `workers` workers.
fn clients_by_worker(server: &Server, workers: u16, per_worker: usize) -> Vec<Vec<Client>> {
    let mut by: Vec<Vec<Client>> = (0..workers).map(|_| Vec::new()).collect();
    let mut n = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while by.iter().any(|v| v.len() < per_worker) {
        assert!(
            Instant::now() < deadline,
            "SO_REUSEPORT never spread the connections"
        );
        let mut c = server.client();
        let w = c.worker() as usize;
        if by[w].len() < per_worker {
            n += 1;
            c.join_as(&format!("u{n}"));
            c.ledger(&deposit(1_000_000)).expect("fund");
            by[w].push(c);
        }
    }
    by
}

#[test]
fn kill_9_of_a_worker_under_load_is_recovered_and_others_see_no_error() {
    for backend in BACKENDS {
        let server = Server::start("kill", &["-w", "2", "--io", backend]);
        let mut by = clients_by_worker(&server, 2, 3);
        let survivors = std::mem::take(&mut by[1]);
        let victims = std::mem::take(&mut by[0]);
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        // Survivors transfer among themselves (and to the victims' accounts) nonstop.
        let threads: Vec<_> = survivors
            .into_iter()
            .enumerate()
            .map(|(i, mut c)| {
                let (stop, done) = (Arc::clone(&stop), Arc::clone(&done));
                std::thread::spawn(move || {
                    let mut k = 0u32;
                    while !stop.load(Ordering::Relaxed) {
                        k += 1;
                        let to = 1 + (k + i as u32) % 6;
                        let r = if to == c.user_id {
                            c.ledger(&deposit(1))
                        } else {
                            c.ledger(&transfer_id(to, 1))
                        };
                        r.unwrap_or_else(|st| panic!("a survivor saw {st:?}"));
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    c
                })
            })
            .collect();
        // Victims also transfer, so the kill lands mid-traffic.
        let victim_threads: Vec<_> = victims
            .into_iter()
            .map(|mut c| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let id = c.next_req_id();
                        let bytes = Client::frame(id, &transfer_id(1 + id as u32 % 6, 1));
                        if std::io::Write::write_all(c.stream(), &bytes).is_err() {
                            break;
                        }
                        if c.next().is_none() {
                            break; // The worker died under us, as intended.
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        let pids = server.worker_pids();
        let victim_pid = pids[0];
        assert!(victim_pid != 0);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(victim_pid as i32),
            Signal::SIGKILL,
        )
        .expect("kill the worker");
        // The master restarts it.
        wait_until(Duration::from_secs(10), "worker 0 is restarted", || {
            let now = server.worker_pids();
            now[0] != 0 && now[0] != victim_pid
        });
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        for t in victim_threads {
            let _ = t.join();
        }
        let mut survivors: Vec<Client> = threads
            .into_iter()
            .map(|t| t.join().expect("survivor thread"))
            .collect();
        assert!(done.load(Ordering::Relaxed) > 50, "survivors made progress");
        // New connections work (on either worker), and the ledger is sound.
        let mut fresh = server.client();
        fresh.join_as("u1");
        assert!(fresh.balance() > 0);
        survivors[0].call(&Request::Heartbeat(proto::body::HeartbeatRequest {
            client_time_ms: 0,
        }));
        let (code, out) = server.tool(&["audit"]);
        assert_eq!(code, 0, "{out}");
        let stats = server.stats_json();
        let restarts: u64 = (0..2)
            .filter_map(|w| stats["workers"][w]["restarts"].as_u64())
            .sum();
        assert_eq!(restarts, 1, "the killed worker was restarted once: {stats}");
    }
}

#[test]
fn sigint_under_load_exits_0_cleanly_with_whole_frames() {
    for backend in BACKENDS {
        let mut server = Server::start("sigint", &["-w", "2", "--io", backend]);
        let shm_path = server.shm_path();
        assert!(std::path::Path::new(&shm_path).exists());
        let stop = Arc::new(AtomicBool::new(false));
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let mut c = server.client();
                c.join_as(&format!("s{i}"));
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    let mut ok = 0u64;
                    let mut saw_notice = false;
                    while !stop.load(Ordering::Relaxed) {
                        let id = c.next_req_id();
                        let bytes = Client::frame(id, &deposit(1));
                        if std::io::Write::write_all(c.stream(), &bytes).is_err() {
                            break;
                        }
                        // `next` panics on a frame cut short or malformed: every frame the
                        // server sent must be whole.
                        match c.next() {
                            Some(g) if g.is_response() => {
                                assert_eq!(g.status(), Status::Ok);
                                ok += 1;
                            }
                            Some(g) => {
                                saw_notice |= g.opcode() == Some(proto::Opcode::Notice);
                                // Drain what remains until the close.
                                while c.next().is_some() {}
                                break;
                            }
                            None => break,
                        }
                    }
                    (ok, saw_notice)
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        server.signal(Signal::SIGINT);
        let code = server.wait_exit(Duration::from_secs(8));
        stop.store(true, Ordering::Relaxed);
        let results: Vec<(u64, bool)> = threads
            .into_iter()
            .map(|t| t.join().expect("client thread"))
            .collect();
        assert_eq!(code, Some(0), "graceful exit");
        assert!(
            !std::path::Path::new(&shm_path).exists(),
            "shared memory unlinked"
        );
        assert!(
            results.iter().all(|r| r.0 > 0),
            "clients made progress: {results:?}"
        );
        assert!(
            results.iter().any(|r| r.1),
            "clients were told of the shutdown: {results:?}"
        );
    }
}

#[test]
fn kill_9_of_the_master_takes_the_workers_and_the_next_start_replaces_the_segment() {
    let mut server = Server::start("master", &["-w", "2"]);
    let workers: Vec<u32> = server
        .worker_pids()
        .into_iter()
        .filter(|&p| p != 0)
        .collect();
    assert_eq!(workers.len(), 2);
    server.kill_master();
    // PR_SET_PDEATHSIG: the workers die with the master.
    wait_until(
        Duration::from_secs(5),
        "the workers die with the master",
        || {
            !workers
                .iter()
                .any(|p| std::path::Path::new(&format!("/proc/{p}")).exists() && !zombie(*p))
        },
    );
    assert!(
        std::path::Path::new(&server.shm_path()).exists(),
        "the segment was left behind"
    );
    // The next start under the same name finds the stale segment and replaces it.
    let mut next = Server::start_named_logged(&server.name, &["-w", "1"], &[]);
    let mut c = next.client();
    c.join_as("after");
    assert_eq!(c.ledger(&deposit(5)).map(|r| r.0), Ok(5));
    let log = next.stop_and_stderr();
    assert!(log.contains("stale"), "the replacement is logged: {log}");
    assert!(
        !log.contains('\x1b'),
        "no colour codes in a log that goes to a pipe: {log:?}"
    );
}

fn zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// A client that sends a flood of requests and never reads leaves the io_uring worker with a
/// send in flight (its socket buffers are full) when the graceful stop's grace runs out. The
/// worker must cancel it and reap its completion before freeing the buffer it points into: it
/// exits 0, it does not crash or hang.
#[test]
fn a_send_in_flight_when_the_grace_runs_out_is_cancelled_and_reaped_before_exit() {
    // Room for the whole backlog, so the worker keeps the send waiting rather than dropping
    // the client as a slow consumer.
    let mut server = Server::start_logged(
        "inflight",
        &["-w", "1", "--io", "uring", "--out-max-bytes", "134217728"],
        &[("RUST_LOG", "info")],
    );
    assert_eq!(server.backend, "io_uring");
    let mut c = server.client();
    c.join_as("flood");
    // 200k BALANCE requests in a few writes, never reading the 8 MB of answers.
    let one = Client::frame(1, &proto::Request::Balance(proto::body::Empty {}));
    let batch: Vec<u8> = one
        .iter()
        .copied()
        .cycle()
        .take(one.len() * 10_000)
        .collect();
    for _ in 0..20 {
        std::io::Write::write_all(c.stream(), &batch).expect("send the flood");
    }
    // Let the worker fill both socket buffers and park a send.
    std::thread::sleep(Duration::from_millis(500));
    server.signal(Signal::SIGTERM);
    let code = server.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(0), "graceful exit after the grace ran out");
    let log = server.inner.take_stderr();
    assert!(log.contains("worker exited"), "the worker exited 0: {log}");
    assert!(
        !log.contains("worker died"),
        "the worker did not crash: {log}"
    );
    // The parked send was among the operations cancelled.
    let line = log
        .lines()
        .find(|l| l.contains("operations cancelled and reaped"))
        .unwrap_or_else(|| panic!("the shutdown cancelled what was in flight: {log}"));
    let field = |name: &str| -> usize {
        line.split(&format!("{name}="))
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {line:?}"))
    };
    assert!(field("sends") >= 1, "a send was in flight: {line}");
    assert!(
        field("operations") >= 3,
        "and the tick and the wake-up: {line}"
    );
    drop(c);
}
