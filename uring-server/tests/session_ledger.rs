//! The real server over loopback, on both backends: sessions, login, the ledger, idempotent
//! retries, pipelining, 1-byte writes, stats and audit.

use proto::body::*;
use proto::{Reply, Request, Response, Status};
use test_support::*;

#[test]
fn the_whole_session_and_ledger_flow() {
    for (backend, transport) in backends_and_transports() {
        eprintln!("{backend} over {transport:?}");
        let server = Server::start_over(transport, "flow", &["-w", "2", "--io", backend]);
        assert_eq!(
            server.backend,
            if backend == "uring" {
                "io_uring"
            } else {
                "epoll"
            }
        );
        let mut a = server.client();
        // HELLO tells the limits.
        match a
            .call(&Request::Hello(HelloRequest {
                client: Label::new("it").expect("label"),
            }))
            .reply()
        {
            Reply::Ok(Response::Hello(h)) => {
                assert_eq!(h.body_len_max, proto::BODY_LEN_MAX_DEFAULT);
                assert!(h.idle_timeout_ms > 0 && h.heartbeat_interval_ms > 0);
            }
            other => panic!("{other:?}"),
        }
        // Nothing but the session before login.
        a.expect(&deposit(5), Status::ErrUnauthorized);
        a.expect(&Request::Balance(Empty {}), Status::ErrUnauthorized);
        let hb = a.call(&Request::Heartbeat(HeartbeatRequest { client_time_ms: 77 }));
        assert!(matches!(hb.reply(), Reply::Ok(Response::Heartbeat(h)) if h.client_time_ms == 77));
        // LOGIN_PROOF without LOGIN.
        a.expect(
            &Request::LoginProof(LoginProofRequest {
                client_proof: [0; 32],
            }),
            Status::ErrBadState,
        );
        // Unknown user, then register.
        let wrong =
            proto::scram::ClientSecret::derive(b"wrong", &SALT, proto::scram::ITERATIONS_MIN);
        assert_eq!(a.login_with("alice", &wrong), Status::ErrNotFound);
        assert_eq!(a.register("alice"), Status::Ok);
        assert_eq!(a.register("alice"), Status::ErrAlreadyExists);
        assert_eq!(a.login_with("alice", &wrong), Status::ErrUnauthorized);
        assert_eq!(a.login_with("alice", secret()), Status::Ok);
        let alice = a.user_id;
        a.expect(
            &Request::Login(LoginRequest {
                username: proto::codec::Name::new("alice").expect("name"),
                client_nonce: Nonce::new(&[1; 16]).expect("nonce"),
            }),
            Status::ErrBadState,
        );

        let mut b = server.client();
        b.join_as("bob");
        let bob = b.user_id;
        assert_ne!(alice, bob);

        // Money.
        assert_eq!(a.ledger(&deposit(10_000)).map(|r| r.0), Ok(10_000));
        assert_eq!(a.ledger(&withdraw(2_500)).map(|r| r.0), Ok(7_500));
        assert_eq!(a.ledger(&transfer_to("bob", 1_250)).map(|r| r.0), Ok(6_250));
        assert_eq!(a.ledger(&transfer_id(bob, 250)).map(|r| r.0), Ok(6_000));
        assert_eq!(b.balance(), 1_500);
        assert_eq!(
            a.ledger(&withdraw(6_001)),
            Err(Status::ErrInsufficientFunds)
        );
        assert_eq!(a.ledger(&deposit(0)), Err(Status::ErrInvalidAmount));
        assert_eq!(
            a.ledger(&transfer_id(alice, 1)),
            Err(Status::ErrInvalidArgument)
        );
        assert_eq!(
            a.ledger(&transfer_to("nobody", 1)),
            Err(Status::ErrNotFound)
        );
        assert_eq!(a.ledger(&transfer_id(9999, 1)), Err(Status::ErrNotFound));
        assert_eq!(a.ledger(&deposit(u64::MAX)), Err(Status::ErrOverflow));

        // A retry with the same req_id is answered with the first result and applied once.
        let first = a
            .ledger_with_id(9_000, &transfer_to("bob", 100))
            .expect("transfer");
        let again = a
            .ledger_with_id(9_000, &transfer_to("bob", 100))
            .expect("retry");
        assert_eq!(first, again);
        assert_eq!(a.balance(), 5_900);
        assert_eq!(
            a.ledger_with_id(9_000, &transfer_to("bob", 101)),
            Err(Status::ErrInvalidArgument)
        );

        // History, newest first, with the caller's balance after each.
        match a
            .call(&Request::TxnHistory(TxnHistoryRequest {
                before_txn_id: 0,
                limit: 3,
            }))
            .reply()
        {
            Reply::Ok(Response::TxnHistory(h)) => {
                let t = h.txns.items();
                assert_eq!(t.len(), 3);
                assert_eq!(t[0].txn_id, first.1);
                assert_eq!(t[0].balance_after, 5_900);
                assert_eq!(t[0].kind, TxnKind::Transfer);
                assert!(t[0].txn_id > t[1].txn_id && t[1].txn_id > t[2].txn_id);
            }
            other => panic!("{other:?}"),
        }

        // LIST_USERS shows both online.
        match a
            .call(&Request::ListUsers(PageRequest {
                after_id: 0,
                limit: 10,
            }))
            .reply()
        {
            Reply::Ok(Response::ListUsers(l)) => assert_eq!(l.users.items().len(), 2),
            other => panic!("{other:?}"),
        }

        // LOGOUT ends the session on the same connection.
        a.expect(&Request::Logout(Empty {}), Status::Ok);
        a.expect(&deposit(1), Status::ErrUnauthorized);
        assert_eq!(a.login_with("alice", secret()), Status::Ok);

        let (code, out) = server.tool(&["audit"]);
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("audit OK"), "{out}");
        let (code, out) = server.tool(&["stats"]);
        assert_eq!(code, 0);
        assert!(out.contains("TRANSFER"), "{out}");
        assert!(out.contains("journal: sync writer pid"), "{out}");
        assert!(out.contains("records/sync"), "{out}");
        let json = server.stats_json();
        assert_eq!(json["format_version"], 1);
        // The journal's figures: the ledger requests above were written and synced.
        let j = &json["journal"];
        assert_eq!(j["mode"], "sync", "{json}");
        assert!(j["records"].as_u64() > Some(0), "{json}");
        assert!(j["syncs"].as_u64() > Some(0), "{json}");
        assert!(
            j["bytes"].as_u64() >= j["records"].as_u64().map(|r| r * 50),
            "{json}"
        );
        assert!(j["records_per_sync"].as_f64() >= Some(1.0), "{json}");
        assert!(
            j["sync_p99_us"].as_u64() >= j["sync_p50_us"].as_u64(),
            "{json}"
        );
        assert!(j["sync_p50_us"].as_u64() > Some(0), "{json}");
        assert_eq!(j["backlog"], 0, "{json}");
        assert!(
            json["requests_by_opcode"]["TRANSFER"].as_u64() > Some(0),
            "{json}"
        );
        // `--name` also works after the tool's name, as people type it.
        let after = std::process::Command::new(env!("CARGO_BIN_EXE_uring-server"))
            .args(["stats", "--name", &server.name])
            .output()
            .expect("run stats");
        assert!(after.status.success(), "stats --name after the tool");
        assert!(String::from_utf8_lossy(&after.stdout).contains("TRANSFER"));
        let (code, prom) = server.tool(&["stats", "--format", "prometheus"]);
        assert_eq!(code, 0);
        assert!(prom.contains("ns_requests_total{worker="), "{prom}");
        assert!(prom.contains("opcode=\"DEPOSIT\""), "{prom}");
        assert!(prom.contains("ns_journal_syncs_total "), "{prom}");
        // Every sample sits under its own family's TYPE line: families are contiguous.
        let mut family = "";
        for line in prom.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                family = rest.split_whitespace().next().unwrap_or("");
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap_or("");
                assert_eq!(name, family, "sample outside its family: {line}");
            }
        }
    }
}

#[test]
fn one_byte_at_a_time_and_100_pipelined_requests_in_one_write() {
    for (backend, transport) in backends_and_transports() {
        eprintln!("{backend} over {transport:?}");
        let server = Server::start_over(transport, "split", &["-w", "1", "--io", backend]);
        let mut c = server.client();
        c.join_as("carol");
        // A deposit dribbled one byte per write.
        let bytes = Client::frame(500, &deposit(7));
        for b in &bytes {
            c.send_raw(std::slice::from_ref(b));
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        let r = c.response(500);
        assert_eq!(r.status(), Status::Ok);
        // 100 requests in one write; responses in order.
        let mut batch = Vec::new();
        for i in 0..100u64 {
            batch.extend(Client::frame(1_000 + i, &deposit(1)));
        }
        c.send_raw(&batch);
        for i in 0..100u64 {
            let g = c.response(1_000 + i);
            match g.reply() {
                Reply::Ok(Response::Deposit(d)) => assert_eq!(d.balance, 8 + i),
                other => panic!("{other:?}"),
            }
        }
    }
}

#[test]
fn closed_registration_and_adduser() {
    let server = Server::start("closed", &["-w", "1", "--registration", "closed"]);
    let mut c = server.client();
    assert_eq!(c.register("dave"), Status::ErrRegistrationClosed);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_uring-server"))
        .args([
            "--name",
            &server.name,
            "adduser",
            "dave",
            "--password",
            PASSWORD,
        ])
        .output()
        .expect("adduser");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // adduser picks its own salt; the client derives from what LOGIN returns.
    let g = c.call(&Request::Login(LoginRequest {
        username: proto::codec::Name::new("dave").expect("name"),
        client_nonce: Nonce::new(&[3; 16]).expect("nonce"),
    }));
    let (salt, iterations) = match g.reply() {
        Reply::Ok(Response::Login(l)) => (l.salt.as_bytes().to_vec(), l.iterations),
        other => panic!("{other:?}"),
    };
    let s = proto::scram::ClientSecret::derive(PASSWORD.as_bytes(), &salt, iterations);
    assert_eq!(c.login_with("dave", &s), Status::Ok);
}

#[test]
fn repeated_login_failures_are_slowed_down() {
    let server = Server::start("throttle", &["-w", "1"]);
    let mut c = server.client();
    assert_eq!(c.register("erin"), Status::Ok);
    let wrong = proto::scram::ClientSecret::derive(b"nope", &SALT, proto::scram::ITERATIONS_MIN);
    for _ in 0..3 {
        assert_eq!(c.login_with("erin", &wrong), Status::ErrUnauthorized);
    }
    // Locked out for a while, even with the right password.
    assert_eq!(c.login_with("erin", secret()), Status::ErrRateLimited);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(c.login_with("erin", secret()), Status::Ok);
}

#[test]
fn a_newer_login_ends_the_older_session() {
    let server = Server::start("dup", &["-w", "1"]);
    let mut old = server.client();
    old.join_as("frank");
    let mut new = server.client();
    new.join_as("frank");
    // The old connection is told and closed within a sweep (1 s).
    let mut saw_notice = false;
    while let Some(g) = old.next() {
        if g.opcode() == Some(proto::Opcode::Notice) {
            match g.push() {
                proto::Push::Notice(n) => {
                    assert_eq!(n.code, proto::codes::notice::LOGGED_IN_ELSEWHERE);
                    saw_notice = true;
                }
                other => panic!("{other:?}"),
            }
        }
    }
    assert!(saw_notice);
    assert_eq!(new.ledger(&deposit(1)).map(|r| r.0), Ok(1));
}

/// Reads `c`'s frames (pushes kept aside first) until a DIRECT_MESSAGE whose text is `marker`;
/// returns the MONEY_RECEIVED pushes seen before it as (txn_id, from_id, amount, from).
fn credits_before(c: &mut Client, marker: &str) -> Vec<(u64, u32, u64, String)> {
    let mut got = Vec::new();
    let mut pending = std::mem::take(&mut c.pushes);
    loop {
        for g in pending.drain(..) {
            match g.push() {
                proto::Push::MoneyReceived(m) => {
                    got.push((m.txn_id, m.from_id, m.amount, m.from.as_str().to_string()))
                }
                proto::Push::DirectMessage(d) if d.text.as_str() == marker => return got,
                _ => {}
            }
        }
        pending.push(
            c.next()
                .expect("connection closed while waiting for pushes"),
        );
    }
}

fn dm(c: &mut Client, to: &str, text: &str) {
    c.expect(
        &Request::DirectSend(DirectSendRequest {
            to: proto::codec::Name::new(to).expect("name"),
            text: Text::new(text).expect("text"),
        }),
        Status::Ok,
    );
}

#[test]
fn a_transfer_tells_its_recipient_once_after_it_is_durable_even_when_retried() {
    for backend in BACKENDS {
        let server = Server::start("credit", &["-w", "2", "--io", backend]);
        let mut alice = server.client();
        let wa = alice.worker();
        // The recipient on the other worker: the push crosses processes.
        let mut bob = client_on_worker(&server, 1 - wa);
        alice.join_as("alice");
        bob.join_as("bob");
        let mut carol = server.client();
        carol.join_as("carol");
        carol.call(&Request::Logout(Empty {}));
        alice.ledger(&deposit(1_000)).expect("deposit");
        // A transfer by name, retried with the same req_id (as if its answer were lost), one
        // by id, and one to a user who is not logged in.
        let id = alice.next_req_id();
        let first = alice.ledger_with_id(id, &transfer_to("bob", 250));
        let (_, t1) = first.expect("transfer");
        assert_eq!(alice.ledger_with_id(id, &transfer_to("bob", 250)), first);
        let (_, t2) = alice
            .ledger(&transfer_id(bob.user_id, 40))
            .expect("transfer by id");
        alice.ledger(&transfer_to("carol", 10)).expect("to carol");
        // Refused transfers tell nobody.
        assert_eq!(
            alice.ledger(&transfer_to("bob", 1_000_000)),
            Err(Status::ErrInsufficientFunds)
        );
        dm(&mut alice, "bob", "end-1");
        let from = alice.user_id;
        let got = credits_before(&mut bob, "end-1");
        assert_eq!(
            got,
            vec![
                (t1, from, 250, "alice".to_string()),
                (t2, from, 40, "alice".to_string())
            ],
            "{backend}: one push per applied transfer, in order, none for the retry"
        );
        assert_eq!(bob.balance(), 290, "{backend}");
        // Alice, the sender, was told nothing of her own transfers.
        dm(&mut bob, "alice", "end-2");
        assert_eq!(credits_before(&mut alice, "end-2"), vec![], "{backend}");
        // Carol logs in later: her money is in her history, not in a push.
        carol.login_with("carol", secret());
        assert_eq!(carol.balance(), 10, "{backend}");
        dm(&mut alice, "carol", "end-3");
        assert_eq!(credits_before(&mut carol, "end-3"), vec![], "{backend}");

        // Not before it is durable: with the journal writer stopped, neither the sender's
        // answer nor the recipient's push goes out; both go once it runs again.
        let writer = server.stats_json()["journal"]["writer_pid"]
            .as_u64()
            .expect("writer pid") as i32;
        let pid = nix::unistd::Pid::from_raw(writer);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
        let held = alice.next_req_id();
        alice.send_raw(&Client::frame(held, &transfer_to("bob", 5)));
        let early = bob.read_frame_within(std::time::Duration::from_millis(400));
        let early_answer = alice.read_frame_within(std::time::Duration::from_millis(100));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).expect("SIGCONT");
        assert!(
            early.is_none(),
            "{backend}: a push before the transfer was durable"
        );
        assert!(
            early_answer.is_none(),
            "{backend}: an answer before durable"
        );
        let t3 = match alice.response(held).reply() {
            Reply::Ok(Response::Transfer(r)) => r.txn_id,
            other => panic!("{other:?}"),
        };
        dm(&mut alice, "bob", "end-4");
        assert_eq!(
            credits_before(&mut bob, "end-4"),
            vec![(t3, alice.user_id, 5, "alice".to_string())],
            "{backend}"
        );
    }
}

#[test]
fn a_config_file_sets_the_server_and_the_command_line_overrides_it() {
    let dir = std::env::temp_dir().join(unique_name("config"));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("ns.toml");
    std::fs::write(
        &path,
        "registration = \"closed\"\nflood_burst = 2\nflood-per-sec = 1\n",
    )
    .expect("write the config");
    let config = path.to_string_lossy().into_owned();
    let from_file = Server::start("cfg", &["-w", "1", "--config", &config]);
    let mut c = from_file.client();
    assert_eq!(
        c.register("erin"),
        Status::ErrRegistrationClosed,
        "from the file"
    );
    drop(from_file);
    let over = Server::start(
        "cfg",
        &["-w", "1", "--config", &config, "--registration", "open"],
    );
    let mut c = over.client();
    c.join_as("erin");
    // The rest of the file still holds: a burst of 2, then the flood limit.
    let room_id = join(&mut c, "cfg");
    let sends: Vec<Status> = (0..3)
        .map(|i| {
            c.call(&Request::ChatSend(ChatSendRequest {
                room_id,
                text: Text::new(&format!("m{i}")).expect("text"),
            }))
            .status()
        })
        .collect();
    assert_eq!(sends, [Status::Ok, Status::Ok, Status::ErrRateLimited]);
    drop(over);
    // A bad file stops the start with its name and the key, before anything is created.
    std::fs::write(&path, "prot = 9000\n").expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_uring-server"))
        .args([
            "--config",
            &config,
            "--name",
            &unique_name("cfgbad"),
            "--port",
            "0",
        ])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&config) && err.contains("\"prot\""), "{err}");
    std::fs::remove_dir_all(&dir).expect("clean up");
}
