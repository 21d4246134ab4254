//! Chat at scale and under faults: 200 clients over 4 workers in 20 rooms; a member that stops
//! reading; kill -9 of a worker with members.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use proto::body::*;
use proto::{Push, Request, Status, HEADER_LEN};
use test_support::*;

fn send_frame(c: &mut Client, room_id: u32, text: &str) -> u64 {
    let id = c.next_req_id();
    let bytes = Client::frame(
        id,
        &Request::ChatSend(ChatSendRequest {
            room_id,
            text: Text::new(text).expect("text"),
        }),
    );
    c.send_raw(&bytes);
    id
}

#[test]
fn two_hundred_clients_over_four_workers_in_twenty_rooms_get_exactly_their_messages() {
    // Spread by hash: with more workers than CPUs the default steering (by CPU) would put
    // every connection on the first workers, and this test is about crossing workers.
    let server = Server::start(
        "scale",
        &["-w", "4", "--steer", "hash", "--flood-burst", "1000"],
    );
    let n_clients = 200;
    let per_client = 3;
    let mut clients: Vec<Client> = (0..n_clients)
        .map(|i| {
            let mut c = server.client();
            c.join_as(&format!("c{i}"));
            c
        })
        .collect();
    let workers: std::collections::HashSet<u16> = clients.iter_mut().map(|c| c.worker()).collect();
    assert!(
        workers.len() >= 3,
        "connections spread over the workers: {workers:?}"
    );
    // Each client joins two rooms.
    let mut rooms_of: Vec<Vec<u32>> = Vec::new();
    for (i, c) in clients.iter_mut().enumerate() {
        let a = join(c, &format!("room{}", i % 20));
        let b = join(c, &format!("room{}", (i * 7 + 3) % 20));
        rooms_of.push(if a == b { vec![a] } else { vec![a, b] });
    }
    // Everyone sends `per_client` messages to each of its rooms, pipelined.
    let mut sent_to: HashMap<u32, u64> = HashMap::new();
    for (i, c) in clients.iter_mut().enumerate() {
        let mut ids = Vec::new();
        for &r in &rooms_of[i] {
            for k in 0..per_client {
                ids.push(send_frame(c, r, &format!("{i}:{k}")));
                *sent_to.entry(r).or_default() += 1;
            }
        }
        for id in ids {
            assert_eq!(c.response(id).status(), Status::Ok);
        }
    }
    // Every client receives exactly the messages of its rooms, in order, no gap, no duplicate.
    for (i, c) in clients.iter_mut().enumerate() {
        let expected: u64 = rooms_of[i].iter().map(|r| sent_to[r]).sum();
        let mut seqs: HashMap<u32, Vec<u64>> = HashMap::new();
        let mut got = 0u64;
        let mut pending = std::mem::take(&mut c.pushes);
        while got < expected {
            if pending.is_empty() {
                pending.push(c.next().expect("closed early"));
            }
            for g in pending.drain(..) {
                match g.push() {
                    Push::ChatBroadcast(b) => {
                        seqs.entry(b.room_id).or_default().push(b.message.seq);
                        got += 1;
                    }
                    other => panic!("client {i}: unexpected push {other:?}"),
                }
            }
        }
        for &r in &rooms_of[i] {
            let want: Vec<u64> = (1..=sent_to[&r]).collect();
            assert_eq!(seqs.get(&r), Some(&want), "client {i}, room {r}");
        }
        assert_eq!(seqs.len(), rooms_of[i].len(), "client {i}: only its rooms");
    }
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

#[test]
fn a_member_that_stops_reading_is_disconnected_and_memory_stays_flat() {
    for backend in BACKENDS {
        let server = Server::start(
            "slow",
            &[
                "-w",
                "1",
                "--io",
                backend,
                "--out-max-bytes",
                "262144",
                "--flood-burst",
                "100000",
                "--flood-per-sec",
                "100000",
            ],
        );
        let worker = server.worker_pids()[0];
        let mut slow = server.client();
        slow.join_as("slow");
        // A small receive buffer so the kernel stops taking bytes early.
        nix::sys::socket::setsockopt(&*slow.stream(), nix::sys::socket::sockopt::RcvBuf, &4096)
            .expect("rcvbuf");
        let mut fast = server.client();
        fast.join_as("fast");
        let mut sender = server.client();
        sender.join_as("sender");
        let room = join(&mut slow, "busy");
        join(&mut fast, "busy");
        join(&mut sender, "busy");
        let rss_before = rss_kb(worker);
        let text = "x".repeat(3000);
        // Far more than the kernel's socket buffers absorb (they autotune to a few MB).
        let total = 4000u64;
        let mut fast_got = 0u64;
        let mut max_gap = Duration::ZERO;
        for _ in 0..total {
            let id = send_frame(&mut sender, room, &text);
            let t = Instant::now();
            assert_eq!(sender.response(id).status(), Status::Ok);
            // The fast member keeps up: its push for this message arrives promptly.
            loop {
                let g = fast.next().expect("fast member closed");
                if g.is_response() {
                    continue;
                }
                if let Push::ChatBroadcast(_) = g.push() {
                    fast_got += 1;
                    max_gap = max_gap.max(t.elapsed());
                    break;
                }
            }
        }
        assert_eq!(fast_got, total);
        assert!(
            max_gap < Duration::from_secs(1),
            "fast member delayed {max_gap:?}"
        );
        // 4000 × 3 KB = 12 MB went to a member that read nothing: past the 256 KiB bound.
        let (_, stats) = server.tool(&["stats"]);
        assert!(stats.contains("1 slow consumers"), "{stats}");
        let mut buf = [0u8; 65536];
        let mut closed = false;
        slow.stream()
            .tcp()
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        loop {
            match std::io::Read::read(slow.stream(), &mut buf) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(_) => {}
                // The server resets a slow consumer's connection (it drops what was unsent).
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    closed = true;
                    break;
                }
                Err(_) => break,
            }
        }
        assert!(closed, "the slow member was disconnected");
        let rss_after = rss_kb(worker);
        assert!(
            rss_after < rss_before + 16 * 1024,
            "worker RSS grew from {rss_before} kB to {rss_after} kB"
        );
        eprintln!("{backend}: worker RSS {rss_before} kB -> {rss_after} kB; fast member's worst push wait {max_gap:?}");
    }
}

#[test]
fn kill_9_of_a_worker_removes_its_members_and_sessions() {
    let server = Server::start("chatkill", &["-w", "2"]);
    let mut by_worker: Vec<Vec<Client>> = vec![Vec::new(), Vec::new()];
    let mut n = 0;
    while by_worker.iter().any(|v| v.len() < 3) {
        let mut c = server.client();
        let w = c.worker() as usize;
        if by_worker[w].len() < 3 {
            n += 1;
            c.join_as(&format!("k{n}"));
            join(&mut c, "lobby");
            by_worker[w].push(c);
        }
    }
    let observer = &mut by_worker[1][0];
    let members = |c: &mut Client| room_members(c, "lobby");
    assert_eq!(members(observer), 6);
    let victim = server.worker_pids()[0];
    let killed_at = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    let observer = &mut by_worker[1][0];
    loop {
        if members(observer) == 3 {
            break;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(2),
            "members not removed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let online = online_users(observer);
    assert_eq!(online, 3, "the dead worker's users are offline");
    eprintln!(
        "members and sessions of the killed worker removed within {:?}",
        killed_at.elapsed()
    );
}

#[test]
fn clients_that_vanish_mid_frame_or_half_close_go_offline_and_leave_their_rooms() {
    for backend in BACKENDS {
        let server = Server::start("vanish", &["-w", "2", "--io", backend]);
        let mut observer = server.client();
        observer.join_as("observer");
        join(&mut observer, "hall");
        let counts = |c: &mut Client| (online_users(c), room_members(c, "hall"));
        let mut gone = Vec::new();
        for i in 0..6 {
            let mut c = server.client();
            c.join_as(&format!("v{i}"));
            join(&mut c, "hall");
            // Load while it is there.
            for _ in 0..20 {
                c.call(&Request::Balance(Empty {}));
            }
            gone.push(c);
        }
        assert_eq!(counts(&mut observer), (7, 7));
        for (i, mut c) in gone.into_iter().enumerate() {
            let frame = Client::frame(99, &Request::Balance(Empty {}));
            match i % 3 {
                // Vanish in the middle of a header.
                0 => c.send_raw(&frame[..7]),
                // Vanish in the middle of a body-bearing frame.
                1 => c.send_raw(&Client::frame(98, &deposit(5))[..HEADER_LEN + 3]),
                // Half-close: no more bytes from the client, the socket still open.
                _ => c
                    .stream()
                    .tcp()
                    .shutdown(std::net::Shutdown::Write)
                    .expect("half close"),
            }
            if i % 3 != 2 {
                drop(c);
            } else {
                std::mem::forget(
                    c.stream()
                        .tcp()
                        .try_clone()
                        .expect("keep the read side open"),
                );
            }
        }
        wait_until(Duration::from_secs(5), "one user and one room left", || {
            counts(&mut observer) == (1, 1)
        });
    }
}

/// The workers the connections made from a thread pinned to `cpu` landed on.
fn workers_from_cpu(addr: std::net::SocketAddr, cpu: usize, n: usize) -> Vec<u16> {
    std::thread::spawn(move || {
        placement::pin_current(&[cpu]).expect("pin");
        (0..n)
            .map(|_| Client::connect(addr).worker())
            .collect::<Vec<u16>>()
    })
    .join()
    .expect("the connecting thread")
}

#[test]
fn steering_by_cpu_gives_a_cpus_connections_to_one_worker_and_hash_spreads_them() {
    let cpus = placement::allowed();
    let steered = Server::start("steer", &["-w", "4", "--steer", "cpu"]);
    let mut by_cpu = Vec::new();
    for &cpu in cpus.iter().take(2) {
        let seen: std::collections::HashSet<u16> = workers_from_cpu(steered.addr, cpu, 20)
            .into_iter()
            .collect();
        assert_eq!(
            seen.len(),
            1,
            "CPU {cpu}'s connections on one worker: {seen:?}"
        );
        by_cpu.extend(seen);
    }
    if cpus.len() >= 2 {
        assert_ne!(by_cpu[0], by_cpu[1], "two CPUs, two workers");
    }
    let hashed = Server::start("hash", &["-w", "4", "--steer", "hash"]);
    let seen: std::collections::HashSet<u16> = workers_from_cpu(hashed.addr, cpus[0], 20)
        .into_iter()
        .collect();
    // 20 connections over 4 listeners by hash all on one: probability 4^-19.
    assert!(seen.len() >= 2, "spread by hash: {seen:?}");
}
