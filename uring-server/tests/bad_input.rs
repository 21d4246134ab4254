//! Bad input over the wire, on both backends: the right status where the stream can go on, a
//! clean close where it cannot, every case counted, and a neighbour connection undisturbed.

use std::io::Read;
use std::time::Duration;

use proto::body::*;
use proto::header::{offset, RawHeader};
use proto::{Opcode, Request, Status, HEADER_LEN};
use test_support::*;

/// A logged-in client whose balance is checked after every case: nothing may disturb it.
fn neighbour(server: &Server) -> Client {
    let mut n = server.client();
    n.join_as("neighbour");
    n.ledger(&deposit(1_000)).expect("deposit");
    n
}

fn rewrite(frame: &[u8], edit: impl FnOnce(&mut RawHeader)) -> Vec<u8> {
    let mut h = RawHeader::parse(frame[..HEADER_LEN].try_into().expect("header"));
    edit(&mut h);
    let mut bytes = [0u8; HEADER_LEN];
    h.write(&mut bytes);
    h.checksum = proto::header::checksum(&bytes, &frame[HEADER_LEN..]);
    h.write(&mut bytes);
    let mut out = bytes.to_vec();
    out.extend_from_slice(&frame[HEADER_LEN..]);
    out
}

/// Reads until EOF; true if the server closed the connection.
fn closed(c: &mut Client) -> bool {
    c.stream()
        .tcp()
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    reads_to_close(c.stream())
}

/// Reads `r` until EOF or reset (true) or any other error, a timeout included (false).
fn reads_to_close(r: &mut impl Read) -> bool {
    let mut buf = [0u8; 512];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn recoverable_errors_get_a_status_and_the_stream_goes_on() {
    for backend in BACKENDS {
        let server = Server::start("bad", &["-w", "1", "--io", backend]);
        let mut n = neighbour(&server);
        let mut c = server.client();
        c.join_as("mallory");

        // A flipped bit in the body: checksum failure, then the next request is fine.
        let mut f = Client::frame(10, &deposit(5));
        let last = f.len() - 1;
        f[last] ^= 0x40;
        c.send_raw(&f);
        assert_eq!(c.response(10).status(), Status::ErrChecksumFail);
        // A flipped bit in the header (req_id).
        let mut f = Client::frame(11, &deposit(5));
        f[offset::REQ_ID + 7] ^= 0x01;
        c.send_raw(&f);
        let g = c.next().expect("response");
        assert_eq!(g.status(), Status::ErrChecksumFail);
        // Unknown opcode, echoed.
        let f = rewrite(&Client::frame(12, &deposit(5)), |h| h.opcode = 0x0777);
        c.send_raw(&f);
        let g = c.next().expect("response");
        assert_eq!(g.status(), Status::ErrUnknownOpcode);
        assert_eq!(g.req_id(), 12);
        // Reserved bytes, undefined flags, a status in a request.
        for (id, edit) in [
            (
                13u64,
                Box::new(|h: &mut RawHeader| h.reserved[0] = 1) as Box<dyn Fn(&mut RawHeader)>,
            ),
            (14, Box::new(|h: &mut RawHeader| h.flags = 0x80)),
            (15, Box::new(|h: &mut RawHeader| h.status = 4)),
        ] {
            c.send_raw(&rewrite(&Client::frame(id, &deposit(5)), |h| edit(h)));
            assert_eq!(c.response(id).status(), Status::ErrBadPacket, "case {id}");
        }
        // Encrypted flag: unsupported.
        let f = rewrite(&Client::frame(16, &deposit(5)), |h| h.flags = 0b001);
        c.send_raw(&f);
        assert_eq!(c.response(16).status(), Status::ErrUnsupported);
        // Malformed bodies: every operation with a body one byte short, and one byte long.
        for (i, req) in [
            deposit(5),
            withdraw(5),
            transfer_to("neighbour", 5),
            Request::Balance(Empty {}),
            Request::TxnHistory(TxnHistoryRequest {
                before_txn_id: 0,
                limit: 1,
            }),
            Request::Heartbeat(HeartbeatRequest { client_time_ms: 1 }),
        ]
        .iter()
        .enumerate()
        {
            let good = Client::frame(100 + i as u64, req);
            let body = &good[HEADER_LEN..];
            for bad_body in [
                &body[..body.len().saturating_sub(1)],
                &[body, &[0u8][..]].concat()[..],
            ] {
                if bad_body.len() == body.len() {
                    continue;
                }
                let id = 200 + i as u64;
                let mut f = Vec::new();
                proto::frame::write_frame_with(
                    &mut f,
                    proto::FrameHead {
                        flags: proto::Flags::NONE,
                        opcode: req.opcode().as_u16(),
                        status: 0,
                        req_id: id,
                    },
                    bad_body.len(),
                    proto::BODY_LEN_LIMIT,
                    |o| o.extend_from_slice(bad_body),
                )
                .expect("encode");
                c.send_raw(&f);
                assert_eq!(
                    c.response(id).status(),
                    Status::ErrBadPacket,
                    "{:?}",
                    req.opcode()
                );
            }
        }
        // A push opcode sent as a request.
        let f = rewrite(&Client::frame(17, &deposit(5)), |h| {
            h.opcode = Opcode::ChatBroadcast.as_u16()
        });
        c.send_raw(&f);
        assert_eq!(c.response(17).status(), Status::ErrBadPacket);
        // Wrong state: LOGIN while logged in.
        c.expect(
            &Request::Login(LoginRequest {
                username: proto::codec::Name::new("x").expect("name"),
                client_nonce: Nonce::new(&[0; 16]).expect("nonce"),
            }),
            Status::ErrBadState,
        );
        // Amounts of 0, u64::MAX, and ones that would overflow.
        assert_eq!(c.ledger(&deposit(0)), Err(Status::ErrInvalidAmount));
        c.ledger(&deposit(10)).expect("deposit");
        assert_eq!(c.ledger(&deposit(u64::MAX)), Err(Status::ErrOverflow));
        assert_eq!(
            c.ledger(&withdraw(u64::MAX)),
            Err(Status::ErrInsufficientFunds)
        );
        assert_eq!(
            c.ledger(&transfer_to("neighbour", u64::MAX)),
            Err(Status::ErrInsufficientFunds)
        );
        // Still usable.
        assert_eq!(c.balance(), 10);
        assert_eq!(n.balance(), 1_000);
        let (code, out) = server.tool(&["stats"]);
        assert_eq!(code, 0);
        assert!(out.contains("ERR_CHECKSUM_FAIL"), "{out}");
        assert!(out.contains("ERR_UNKNOWN_OPCODE"), "{out}");
    }
}

#[test]
fn fatal_errors_get_a_status_then_a_clean_close() {
    for backend in BACKENDS {
        let server = Server::start("fatal", &["-w", "1", "--io", backend]);
        let mut n = neighbour(&server);
        let cases: Vec<(&str, Vec<u8>, Status)> = vec![
            (
                "bad magic",
                rewrite(&Client::frame(1, &deposit(1)), |h| h.magic = 0x4E54),
                Status::ErrBadPacket,
            ),
            (
                "bad version",
                rewrite(&Client::frame(1, &deposit(1)), |h| h.version = 9),
                Status::ErrBadPacket,
            ),
            (
                "header_len 33",
                rewrite(&Client::frame(1, &deposit(1)), |h| h.header_len = 33),
                Status::ErrBadPacket,
            ),
            (
                "body_len of 4 GiB",
                rewrite(&Client::frame(1, &deposit(1)), |h| h.body_len = u32::MAX)[..HEADER_LEN]
                    .to_vec(),
                Status::ErrTooLarge,
            ),
        ];
        for (what, bytes, status) in cases {
            let mut c = server.client();
            c.send_raw(&bytes);
            let g = c
                .next()
                .unwrap_or_else(|| panic!("{what}: no error response"));
            assert_eq!(g.status(), status, "{what}");
            assert!(closed(&mut c), "{what}: not closed");
        }
        // 1 MiB of random bytes: closed, nothing else happens.
        let mut c = server.client();
        let mut junk = vec![0u8; 1 << 20];
        let mut x = 0x1234_5678u32;
        for b in junk.iter_mut() {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
        let _ = std::io::Write::write_all(c.stream(), &junk);
        assert!(closed(&mut c), "random bytes: not closed");
        // A header cut short, then close; a body cut short, then close.
        let mut c = server.client();
        c.send_raw(&Client::frame(1, &deposit(1))[..10]);
        drop(c);
        let mut c = server.client();
        c.send_raw(&Client::frame(1, &deposit(1))[..HEADER_LEN + 3]);
        drop(c);
        assert_eq!(n.balance(), 1_000);
        assert_eq!(n.ledger(&deposit(1)).map(|r| r.0), Ok(1_001));
        let (_, out) = server.tool(&["stats"]);
        assert!(out.contains("ERR_TOO_LARGE"), "{out}");
    }
}

#[test]
fn over_max_conns_gets_server_busy_then_close() {
    for backend in BACKENDS {
        let server = Server::start("busy", &["-w", "1", "--io", backend, "--max-conns", "2"]);
        let mut a = server.client();
        let mut b = server.client();
        a.worker();
        b.worker();
        let mut c = server.client();
        let g = c.next().expect("busy response");
        assert_eq!(g.status(), Status::ErrServerBusy);
        assert!(closed(&mut c));
        drop(a);
        // Room again once one leaves (give the server a moment to see the close).
        std::thread::sleep(Duration::from_millis(200));
        let mut d = server.client();
        d.worker();
        b.worker();
    }
}

#[test]
fn idle_connections_are_closed_and_their_session_ended() {
    for backend in BACKENDS {
        let server = Server::start(
            "idle",
            &["-w", "1", "--io", backend, "--idle-timeout-ms", "700"],
        );
        let mut idle = server.client();
        idle.join_as("sleepy");
        let mut busy = server.client();
        busy.join_as("awake");
        // `busy` keeps talking; `idle` says nothing.
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_millis(2500) {
            busy.call(&Request::Heartbeat(HeartbeatRequest { client_time_ms: 0 }));
            std::thread::sleep(Duration::from_millis(100));
        }
        let g = idle.next().expect("a notice before the close");
        assert!(matches!(
            g.push(),
            proto::Push::Notice(n) if n.code == proto::codes::notice::IDLE_TIMEOUT
        ));
        assert!(idle.next().is_none(), "closed after the notice");
        // The user went offline: only `awake` is listed.
        match busy
            .call(&Request::ListUsers(PageRequest {
                after_id: 0,
                limit: 10,
            }))
            .reply()
        {
            proto::Reply::Ok(proto::Response::ListUsers(l)) => {
                let names: Vec<&str> = l.users.items().iter().map(|u| u.name.as_str()).collect();
                assert_eq!(names, vec!["awake"]);
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_slowloris_sender_is_closed_when_its_frame_takes_too_long() {
    for backend in BACKENDS {
        let server = Server::start(
            "loris",
            &["-w", "1", "--io", backend, "--frame-timeout-ms", "500"],
        );
        let mut n = neighbour(&server);
        let mut loris = server.client();
        let frame = Client::frame(5, &Request::Balance(Empty {}));
        let start = std::time::Instant::now();
        // One byte every 100 ms: activity all along, but the frame never completes in time.
        for b in frame.iter().take(30) {
            if std::io::Write::write_all(loris.stream(), std::slice::from_ref(b)).is_err() {
                break; // Closed by the server, as intended.
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let g = loris.next().expect("an error response before the close");
        assert_eq!(g.status(), Status::ErrTimeout);
        assert!(closed(&mut loris), "closed");
        assert!(start.elapsed() < Duration::from_secs(5));
        assert_eq!(n.balance(), 1_000, "the neighbour is undisturbed");
    }
}

/// Reads a raw socket until EOF or reset; true if the server closed it within `limit`.
fn raw_closed(s: &mut std::net::TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).expect("timeout");
    reads_to_close(s)
}

#[test]
fn the_tls_port_closes_plaintext_garbage_and_stalled_handshakes_and_counts_them() {
    use std::io::Write;
    for backend in BACKENDS {
        let server = Server::start_over(
            Transport::Tls,
            "tlsbad",
            &[
                "-w",
                "1",
                "--io",
                backend,
                "--tls-handshake-timeout-ms",
                "300",
            ],
        );
        let mut n = neighbour(&server);
        let connect = || std::net::TcpStream::connect(server.addr).expect("connect");
        // An NS client that does not speak TLS: closed, its HELLO never answered in the clear.
        let mut plain = connect();
        plain
            .write_all(&Client::frame(
                1,
                &Request::Hello(HelloRequest {
                    client: Label::new("plain").expect("label"),
                }),
            ))
            .expect("send");
        assert!(
            raw_closed(&mut plain, Duration::from_secs(5)),
            "{backend}: plaintext closed"
        );
        // Garbage that looks like a handshake record.
        let mut junk = connect();
        junk.write_all(&[0x16, 3, 1, 0, 6, 0xEE, 0xEE, 0xEE, 0xEE, 0xEE, 0xEE])
            .expect("send");
        assert!(
            raw_closed(&mut junk, Duration::from_secs(5)),
            "{backend}: garbage closed"
        );
        // A client that opens and never finishes its handshake (or never starts it).
        let mut silent = connect();
        let mut stalled = connect();
        stalled.write_all(&[0x16, 3, 1, 0, 200, 1]).expect("send");
        assert!(
            raw_closed(&mut silent, Duration::from_secs(5)),
            "{backend}: silent closed"
        );
        assert!(
            raw_closed(&mut stalled, Duration::from_secs(5)),
            "{backend}: stalled closed"
        );
        // A client that does not trust the server's CA refuses it; the server counts the alert.
        let other = Tls::new().expect("another PKI");
        let refused = bench_client::Client::connect_with(
            server.addr,
            Duration::from_secs(5),
            Some(&other.client),
        );
        assert!(
            refused.is_err(),
            "{backend}: an untrusted certificate is refused"
        );
        // The neighbour is served throughout.
        assert_eq!(n.balance(), 1_000, "{backend}: neighbour");
        wait_until(Duration::from_secs(5), "the TLS counters", || {
            let tls = &server.stats_json()["tls"];
            tls["errors"].as_u64() == Some(3) && tls["handshake_timeouts"].as_u64() == Some(2)
        });
        let tls = server.stats_json()["tls"].clone();
        assert_eq!(
            tls["handshakes"].as_u64(),
            Some(1),
            "{backend}: the neighbour's, only"
        );
    }
}
