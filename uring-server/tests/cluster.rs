//! Nodes joined through NATS JetStream (`--cluster`): rooms are one by name across nodes, every
//! member on every node gets every message of its room once, in one order identical at every
//! member, with gap-free sequence numbers, and each sender's answer carries its message's
//! number. Faults: the bridge killed under load (the master restarts it; nothing lost, nothing
//! twice), NATS unreachable at start (a clear error, no silent single-node world), and, on a
//! 3-server NATS cluster with a 3-replica stream, one NATS server killed under load (ignored in
//! the default run: intermittent, see that test).
//!
//! Every check is over the wire against what the clients sent and received; nats-server is
//! started by the tests (test-support's `nats`), `NS_SKIP_NATS=1` opts out where it is missing.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use proto::body::*;
use proto::{Push, Reply, Request, Response, Status};
use test_support::*;

/// A node of the cluster: uring-server with `--cluster`.
fn node(urls: &str, id: u16, backend: &str, extra: &[&str]) -> Server {
    let id = id.to_string();
    let mut args = vec![
        "-w",
        "2",
        "--io",
        backend,
        "--durability",
        "none",
        "--cluster",
        urls,
        "--node-id",
        &id,
        "--flood-burst",
        "100000",
        "--flood-per-sec",
        "100000",
    ];
    args.extend_from_slice(extra);
    Server::start("cluster", &args)
}

/// Sends without waiting; returns the req_id.
fn send_async(c: &mut Client, room_id: u32, text: &str) -> u64 {
    let id = c.next_req_id();
    let req = Request::ChatSend(ChatSendRequest {
        room_id,
        text: Text::new(text).expect("text"),
    });
    c.send_raw(&Client::frame(id, &req));
    id
}

/// Sends `n` messages tagged `tag:0..n` without waiting, then reads their answers in order.
fn burst(m: &mut Member, tag: &str, n: usize) -> Vec<(String, Result<u64, Status>)> {
    let ids: Vec<(u64, String)> = (0..n)
        .map(|p| {
            let text = format!("{tag}:{p}");
            (send_async(&mut m.c, m.room, &text), text)
        })
        .collect();
    ids.into_iter()
        .map(|(id, text)| (text, m.answer(id)))
        .collect()
}

/// One member: its connection, its room id on its node, and what it received.
struct Member {
    c: Client,
    room: u32,
    /// (seq, text) in arrival order.
    got: Vec<(u64, String)>,
}

impl Member {
    fn new(server: &Server, user: &str) -> Member {
        let mut c = server.client();
        c.join_as(user);
        let room = join(&mut c, "lobby");
        Member {
            c,
            room,
            got: Vec::new(),
        }
    }

    /// Files pushes; returns a response if the frame was one.
    fn file(&mut self, g: Got) -> Option<Got> {
        if g.is_response() {
            return Some(g);
        }
        if let Push::ChatBroadcast(b) = g.push() {
            if b.room_id == self.room {
                self.got
                    .push((b.message.seq, b.message.text.as_str().to_string()));
            }
        }
        None
    }

    /// Reads until the response to `req_id`; its sequence number, or its status.
    fn answer(&mut self, req_id: u64) -> Result<u64, Status> {
        for g in std::mem::take(&mut self.c.pushes) {
            self.file(g);
        }
        loop {
            // Longer than the client's usual 10 s: after a NATS server's death the stream
            // elects a leader and the bridge reconnects before answers flow again.
            let g = self
                .c
                .read_frame_within(Duration::from_secs(45))
                .expect("an answer within 45 s");
            if let Some(r) = self.file(g) {
                assert_eq!(r.req_id(), req_id, "answers come in request order");
                return match r.reply() {
                    Reply::Ok(Response::ChatSend(s)) => Ok(s.seq),
                    Reply::Err(st, _) => Err(st),
                    other => panic!("{other:?}"),
                };
            }
        }
    }

    /// Reads pushes until `n` arrived (or fails after `limit`).
    fn until(&mut self, n: usize, limit: Duration) {
        for g in std::mem::take(&mut self.c.pushes) {
            self.file(g);
        }
        let deadline = Instant::now() + limit;
        while self.got.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "only {} of {n} messages after {limit:?}",
                self.got.len()
            );
            if let Some(g) = self.c.read_frame_within(left) {
                assert!(self.file(g).is_none(), "no request was outstanding");
            }
        }
    }
}

/// Every member got exactly messages 1..=n, in order, and all agree on which text is which
/// number; every answered send is there under its answered number. Returns seq → text.
fn check_one_order(
    members: &[Member],
    n: usize,
    answered: &HashMap<String, u64>,
) -> HashMap<u64, String> {
    let first = &members[0].got;
    let seqs: Vec<u64> = first.iter().map(|g| g.0).collect();
    assert_eq!(
        seqs,
        (1..=n as u64).collect::<Vec<_>>(),
        "gap-free numbers, in order, once each"
    );
    for (i, m) in members.iter().enumerate() {
        assert_eq!(&m.got, first, "member {i} saw another order than member 0");
    }
    let by_seq: HashMap<u64, String> = first.iter().cloned().collect();
    for (text, seq) in answered {
        assert_eq!(
            by_seq.get(seq),
            Some(text),
            "the answer's number is the message's"
        );
    }
    by_seq
}

#[test]
fn rooms_are_one_across_three_nodes_in_one_identical_order() {
    if !nats_or_skip() {
        return;
    }
    let nats = nats_single();
    let urls = nats.url();
    // Both backends among the nodes.
    let nodes = [
        node(&urls, 1, "uring", &[]),
        node(&urls, 2, "epoll", &[]),
        node(&urls, 3, "uring", &[]),
    ];
    let mut members: Vec<Member> = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        for k in 0..2 {
            members.push(Member::new(n, &format!("u{i}{k}")));
        }
    }
    // Everyone sends; some wait for each answer, some pipeline 10 at a time.
    let rounds = 10;
    let mut answered = HashMap::new();
    for r in 0..rounds {
        for (i, m) in members.iter_mut().enumerate() {
            if i % 2 == 0 {
                let text = format!("{i}:{r}");
                let id = send_async(&mut m.c, m.room, &text);
                answered.insert(text, m.answer(id).expect("sent"));
            } else {
                for (text, r) in burst(m, &format!("{i}:{r}"), 10) {
                    answered.insert(text, r.expect("sent"));
                }
            }
        }
    }
    let total = members.len() / 2 * rounds * 11;
    assert_eq!(answered.len(), total);
    for m in &mut members {
        m.until(total, Duration::from_secs(20));
    }
    check_one_order(&members, total, &answered);
    // History from any node, and a newcomer on a node that joins later sees the same.
    let late = node(&urls, 4, "uring", &[]);
    let mut c = late.client();
    c.join_as("late");
    let room = join(&mut c, "lobby");
    match c
        .call(&Request::RoomHistory(RoomHistoryRequest {
            room_id: room,
            after_seq: total as u64 - 5,
            limit: 100,
        }))
        .reply()
    {
        Reply::Ok(Response::RoomHistory(h)) => {
            assert_eq!(
                h.last_seq, total as u64,
                "the late node replayed the stream"
            );
            let got: Vec<(u64, String)> = h
                .messages
                .items()
                .iter()
                .map(|m| (m.seq, m.text.as_str().to_string()))
                .collect();
            assert_eq!(got, members[0].got[total - 5..].to_vec());
        }
        other => panic!("{other:?}"),
    }
    let stats = nodes[1].stats_json();
    assert_eq!(stats["cluster"]["state"], "ready");
    assert_eq!(stats["cluster"]["lag"], 0);
    assert_eq!(stats["cluster"]["applied"], total as u64);
}

#[test]
fn a_killed_bridge_is_restarted_and_nothing_is_lost_or_doubled() {
    if !nats_or_skip() {
        return;
    }
    let nats = nats_single();
    let urls = nats.url();
    let a = node(&urls, 1, "uring", &["--cluster-timeout-ms", "20000"]);
    let b = node(&urls, 2, "uring", &["--cluster-timeout-ms", "20000"]);
    let mut members = vec![
        Member::new(&a, "a1"),
        Member::new(&b, "b1"),
        Member::new(&b, "b2"),
    ];
    let mut answered = HashMap::new();
    let mut killed = false;
    for r in 0..60 {
        for (i, m) in members.iter_mut().enumerate() {
            // Node b's bridge dies with b's sends in flight.
            let ids: Vec<(u64, String)> = (0..5)
                .map(|p| {
                    let text = format!("{i}:{r}:{p}");
                    (send_async(&mut m.c, m.room, &text), text)
                })
                .collect();
            if r == 20 && i == 1 && !killed {
                // Node b's bridge dies with b's sends in flight.
                let pid = b.stats_json()["cluster"]["bridge_pid"]
                    .as_u64()
                    .expect("bridge pid");
                assert!(pid > 0);
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                )
                .expect("kill the bridge");
                killed = true;
            }
            for (id, text) in ids {
                answered.insert(text, m.answer(id).expect("sent despite the bridge's death"));
            }
        }
    }
    let total = answered.len();
    for m in &mut members {
        m.until(total, Duration::from_secs(30));
    }
    check_one_order(&members, total, &answered);
    let s = b.stats_json();
    assert!(s["cluster"]["connects"].as_u64().unwrap_or(0) >= 2, "{s}");
    assert_eq!(s["cluster"]["state"], "ready");
}

#[test]
fn no_nats_at_start_is_a_clear_error_not_a_single_node() {
    if !nats_or_skip() {
        return;
    }
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let out = std::process::Command::new(exe())
        .args(["--port", "0", "--durability", "none", "--name"])
        .arg(unique_name("nonats"))
        .args(["--cluster", &format!("nats://127.0.0.1:{port}")])
        .args(["--cluster-wait-secs", "2"])
        .output()
        .expect("run uring-server");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it must not start: {stdout}");
    assert!(
        !stdout.contains("listening on"),
        "no worker may serve a world of one node: {stdout}"
    );
    assert!(
        stderr.contains("could not join the cluster"),
        "the error says why: {stderr}"
    );
}

// Not in the default run yet: in 2 of 6 runs on this machine a client's connection was closed
// while a bridge waited out a NATS reconnection (answers held ~10 s, then a broken pipe), which
// is not understood yet. Run it with `cargo test -p uring-server --test cluster -- --ignored`.
#[test]
#[ignore = "intermittent: a connection closed during a NATS failover (DESIGN 9, open)"]
fn a_killed_nats_server_loses_no_acknowledged_message() {
    if !nats_or_skip() {
        return;
    }
    let mut nats = nats_cluster();
    let urls = urls(&nats);
    let extra = ["--cluster-replicas", "3", "--cluster-timeout-ms", "30000"];
    let a = node(&urls, 1, "uring", &extra);
    let b = node(&urls, 2, "epoll", &extra);
    let mut members = vec![Member::new(&a, "a1"), Member::new(&b, "b1")];
    let mut answered = HashMap::new();
    let mut timed_out = 0;
    let mut longest = Duration::ZERO;
    for r in 0..40 {
        if r == 10 {
            nats[0].kill();
        }
        for (i, m) in members.iter_mut().enumerate() {
            let t = Instant::now();
            let answers = burst(m, &format!("{i}:{r}"), 5);
            longest = longest.max(t.elapsed());
            for (text, r) in answers {
                match r {
                    Ok(seq) => {
                        answered.insert(text, seq);
                    }
                    Err(Status::ErrTimeout) => timed_out += 1,
                    Err(st) => panic!("{st:?}"),
                }
            }
        }
    }
    assert_eq!(
        timed_out, 0,
        "the stream kept a majority: every send was ordered"
    );
    let total = answered.len();
    for m in &mut members {
        m.until(total, Duration::from_secs(30));
    }
    check_one_order(&members, total, &answered);
}
