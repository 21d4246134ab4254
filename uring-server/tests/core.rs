//! The protocol core alone: fed bytes and ticks of a clock moved by hand, on a temporary
//! segment, with no socket and no process (the core never sees one: it is fed bytes and hands
//! back what to send). Each test reads back exactly the frames the core
//! queued for the connection and checks them byte-level through the protocol crate.

use proto::body::*;
use proto::codec::Name;
use proto::codes::notice;
use proto::scram::{auth_message, ClientSecret};
use proto::{write_request, FrameDecoder, Opcode, Push, Reply, Request, Response, Status};
use shm::{Capacities, LockMode, Segment};
use uring_server::clock::ManualClock;
use uring_server::core::{Config, Core};

const WALL_START_MS: u64 = 1_800_000_000_000;

fn segment() -> Segment {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let name = format!(
        "core-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let caps = Capacities {
        users: 64,
        rooms: 8,
        members_per_room: 16,
        room_ring: 16,
        txn_log: 1024,
        results_per_user: 4,
        workers: 3,
    };
    Segment::create(&name, caps, LockMode::Account)
        .expect("create a segment")
        .0
}

fn config() -> Config {
    Config {
        worker: 0,
        max_conns: 8,
        idle_timeout_ms: 30_000,
        body_len_max: 64 * 1024,
        out_max_bytes: 1 << 20,
        frame_timeout_ms: 10_000,
        registration_open: true,
        flood_burst: 3,
        flood_per_sec: 1,
        batch_wait_us: 0,
        workers: 1,
        steer_by_cpu: false,
        cpu: None,
        tls: None,
        tls_handshake_timeout_ms: 10_000,
        cluster_timeout_ms: 5_000,
    }
}

/// A frame the core queued, owned.
#[derive(Debug)]
struct Out {
    response: bool,
    /// `None` for an error response echoing an opcode the protocol does not define (or 0).
    opcode: Option<Opcode>,
    status: Status,
    req_id: u64,
    body: Vec<u8>,
}

impl Out {
    fn reply(&self) -> Reply<'_> {
        let op = self.opcode.expect("a known opcode");
        Reply::decode(op, self.status, &self.body).expect("a valid response body")
    }

    fn push(&self) -> Push<'_> {
        assert!(!self.response, "a push");
        let op = self.opcode.expect("a known opcode");
        Push::decode(op, &self.body).expect("a valid push body")
    }
}

/// The frames in bytes the core sent, owned.
fn frames_of(bytes: &[u8]) -> Vec<Out> {
    let mut dec = FrameDecoder::new(proto::BODY_LEN_LIMIT);
    let mut out = Vec::new();
    let mut input = bytes;
    while !input.is_empty() {
        let (used, res) = dec.decode(input);
        input = &input[used..];
        match res {
            Ok(Some(f)) => out.push(Out {
                response: f.header.flags.is_response(),
                opcode: Some(f.header.opcode),
                status: f.header.status,
                req_id: f.header.req_id,
                body: f.body.to_vec(),
            }),
            Ok(None) => {}
            // An error response that echoes an opcode the protocol does not define
            // (PROTOCOL.md section 4): keep its header.
            Err(proto::DecodeError::UnknownOpcode { header })
                if header.flags & proto::Flags::IS_RESPONSE != 0 && header.status != 0 =>
            {
                out.push(Out {
                    response: true,
                    opcode: None,
                    status: Status::from_u16(header.status).expect("a known status"),
                    req_id: header.req_id,
                    body: Vec::new(),
                });
            }
            Err(e) => panic!("the core sent a bad frame: {e}"),
        }
    }
    assert!(dec.is_idle(), "no frame left cut");
    out
}

struct Harness<'s> {
    core: Core<'s>,
    clock: ManualClock,
    next_id: u64,
    /// Over TLS: every connection's client side.
    tls: Option<TlsClients>,
}

/// The client side of a TLS harness: one rustls client per connection, and the test PKI.
struct TlsClients {
    pki: Pki,
    conns: std::collections::HashMap<usize, rustls::ClientConnection>,
    /// Ciphertext goes to the core in pieces of at most this many bytes.
    split: usize,
}

/// A test PKI in a scratch directory (removed on drop) and a client that trusts its CA.
struct Pki {
    certs: ns_tls::GeneratedCerts,
    client: ns_tls::ClientTls,
    _dir: test_support::ScratchDir,
}

impl Pki {
    fn new(validity: ns_tls::Validity) -> Pki {
        let dir = test_support::ScratchDir::new("core-tls").expect("scratch dir");
        let certs = ns_tls::generate(dir.path(), &["127.0.0.1".into()], validity).expect("pki");
        let client =
            ns_tls::ClientTls::new(&ns_tls::Trust::Ca(certs.ca.clone()), "127.0.0.1", None)
                .expect("client config");
        Pki {
            certs,
            client,
            _dir: dir,
        }
    }

    /// `cfg` speaking TLS with this PKI's server certificate.
    fn serve(&self, cfg: Config) -> Config {
        let opts = ns_tls::TlsOptions {
            cert: Some(self.certs.cert.clone()),
            key: Some(self.certs.key.clone()),
            ..Default::default()
        };
        Config {
            tls: ns_tls::server_config(&opts).expect("server config"),
            ..cfg
        }
    }
}

/// Plaintext, or TLS through a rustls client per connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    Plain,
    Tls,
}

/// Runs a test body over both wires.
macro_rules! over_both {
    ($plain:ident, $tls:ident, $body:ident) => {
        #[test]
        fn $plain() {
            $body(Wire::Plain);
        }
        #[test]
        fn $tls() {
            $body(Wire::Tls);
        }
    };
}

/// Every record rustls has for the peer, drained.
fn drain_tls(conn: &mut rustls::ClientConnection) -> Vec<u8> {
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).expect("write into a Vec");
    }
    out
}

/// Feeds the core's records to a client; the plaintext they carried.
fn client_reads(conn: &mut rustls::ClientConnection, mut records: &[u8]) -> Vec<u8> {
    use std::io::Read;
    while !records.is_empty() {
        conn.read_tls(&mut records).expect("read_tls");
        conn.process_new_packets()
            .expect("the server's records are valid");
    }
    let mut plain = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match conn.reader().read(&mut buf) {
            Ok(0) => break,
            Ok(n) => plain.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("read plaintext: {e}"),
        }
    }
    plain
}

impl<'s> Harness<'s> {
    fn new(seg: &'s Segment, cfg: Config) -> Harness<'s> {
        Self::over(seg, cfg, Wire::Plain)
    }

    /// A harness whose connections speak `wire`.
    fn over(seg: &'s Segment, cfg: Config, wire: Wire) -> Harness<'s> {
        let (cfg, tls) = match wire {
            Wire::Plain => (cfg, None),
            Wire::Tls => {
                let pki = Pki::new(ns_tls::Validity::Days(2));
                let cfg = pki.serve(cfg);
                (
                    cfg,
                    Some(TlsClients {
                        pki,
                        conns: Default::default(),
                        split: usize::MAX,
                    }),
                )
            }
        };
        let clock = ManualClock::new(WALL_START_MS);
        let core = Core::new(cfg, seg, None, Box::new(clock.clone())).expect("core");
        Harness {
            core,
            clock,
            next_id: 100,
            tls,
        }
    }

    /// A new connection: the core knows only its key, never a socket. Over TLS, the handshake
    /// is done before this returns.
    fn connect(&mut self) -> usize {
        let key = self.core.open().expect("accepted");
        if let Some(tls) = &mut self.tls {
            let conn = tls.pki.client.connection().expect("client connection");
            tls.conns.insert(key, conn);
            self.handshake(key);
        }
        key
    }

    /// Moves records both ways until neither side has any (the handshake, a close).
    fn handshake(&mut self, key: usize) {
        for _ in 0..16 {
            let tls = self.tls.as_mut().expect("a TLS harness");
            let conn = tls.conns.get_mut(&key).expect("a client");
            let to_server = drain_tls(conn);
            if !to_server.is_empty() {
                self.core.tick_clock();
                self.core.on_bytes(key, &to_server);
            }
            let to_client = self.raw_output(key);
            let tls = self.tls.as_mut().expect("a TLS harness");
            let conn = tls.conns.get_mut(&key).expect("a client");
            let plain = client_reads(conn, &to_client);
            assert!(plain.is_empty(), "no plaintext during the handshake");
            if to_server.is_empty() && to_client.is_empty() && !conn.is_handshaking() {
                return;
            }
        }
        panic!("the handshake did not finish");
    }

    /// The client side of TLS connection `key`.
    fn client(&mut self, key: usize) -> &mut rustls::ClientConnection {
        self.tls
            .as_mut()
            .and_then(|t| t.conns.get_mut(&key))
            .expect("a TLS connection's client")
    }

    /// `bytes` of the NS stream, encrypted by `key`'s client into records (not sent).
    fn seal(&mut self, key: usize, bytes: &[u8]) -> Vec<u8> {
        let conn = self.client(key);
        std::io::Write::write_all(&mut conn.writer(), bytes).expect("plaintext in");
        drain_tls(conn)
    }

    /// Everything the core has for `key`, as the bytes a backend would send, taken.
    fn raw_output(&mut self, key: usize) -> Vec<u8> {
        let mut bytes = Vec::new();
        while let Some(buf) = self.core.take_output(key) {
            self.core.sent(key, buf.len());
            bytes.extend_from_slice(&buf);
            self.core.recycle(key, buf);
        }
        bytes
    }

    /// Sends `bytes` of the NS stream on `key` (over TLS: as records, fed to the core in pieces
    /// of at most `split` bytes).
    fn send_bytes(&mut self, key: usize, bytes: &[u8]) {
        self.core.tick_clock();
        match &mut self.tls {
            None => self.core.on_bytes(key, bytes),
            Some(tls) => {
                let conn = tls.conns.get_mut(&key).expect("a client");
                std::io::Write::write_all(&mut conn.writer(), bytes).expect("plaintext in");
                let records = drain_tls(conn);
                for piece in records.chunks(tls.split) {
                    self.core.on_bytes(key, piece);
                }
            }
        }
    }

    /// Sends `req` with a fresh req_id; returns the id.
    fn send(&mut self, key: usize, req: &Request<'_>) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        self.send_id(key, id, req);
        id
    }

    fn send_id(&mut self, key: usize, id: u64, req: &Request<'_>) {
        let mut bytes = Vec::new();
        write_request(&mut bytes, id, req, proto::BODY_LEN_LIMIT).expect("encode");
        self.send_bytes(key, &bytes);
    }

    /// Everything queued for `key`, as frames, taken out of its queue (over TLS: decrypted
    /// by its client).
    fn take(&mut self, key: usize) -> Vec<Out> {
        let bytes = self.raw_output(key);
        match &mut self.tls {
            None => frames_of(&bytes),
            Some(tls) => {
                let conn = tls.conns.get_mut(&key).expect("a client");
                frames_of(&client_reads(conn, &bytes))
            }
        }
    }

    /// Sends `req` and returns its one response (pushes queued before it are returned too).
    fn call(&mut self, key: usize, req: &Request<'_>) -> Out {
        let id = self.send(key, req);
        let mut frames = self.take(key);
        let i = frames.iter().position(|f| f.response).expect("a response");
        let r = frames.remove(i);
        assert_eq!(r.req_id, id, "the response echoes the req_id");
        r
    }

    fn status(&mut self, key: usize, req: &Request<'_>) -> Status {
        self.call(key, req).status
    }

    fn register(&mut self, key: usize, user: &str, password: &str) -> Status {
        self.status(key, &register_request(user, password))
    }

    /// LOGIN + LOGIN_PROOF; the LOGIN_PROOF response (or the LOGIN refusal).
    fn login(&mut self, key: usize, user: &str, password: &str) -> Out {
        let nonce = [9u8; 16];
        let r = self.call(
            key,
            &Request::Login(LoginRequest {
                username: Name::new(user).expect("name"),
                client_nonce: Nonce::new(&nonce).expect("nonce"),
            }),
        );
        let (salt, iterations, server_nonce) = match r.reply() {
            Reply::Ok(Response::Login(l)) => (
                l.salt.as_bytes().to_vec(),
                l.iterations,
                l.server_nonce.as_bytes().to_vec(),
            ),
            _ => return r,
        };
        let secret = ClientSecret::derive(password.as_bytes(), &salt, iterations);
        let am = auth_message(user, &nonce, &server_nonce, &salt, iterations);
        let r = self.call(
            key,
            &Request::LoginProof(LoginProofRequest {
                client_proof: secret.proof(&am),
            }),
        );
        if let Reply::Ok(Response::LoginProof(p)) = r.reply() {
            assert!(secret.verify_server(&am, &p.server_signature));
        }
        r
    }

    /// A connection logged in as a new user `user`.
    fn user(&mut self, user: &str) -> usize {
        let key = self.connect();
        assert_eq!(self.register(key, user, "pw"), Status::Ok);
        assert_eq!(self.login(key, user, "pw").status, Status::Ok);
        key
    }

    fn ledger(&mut self, key: usize, req: &Request<'_>) -> Result<(u64, u64), Status> {
        match self.call(key, req).reply() {
            Reply::Ok(Response::Deposit(x) | Response::Withdraw(x) | Response::Transfer(x)) => {
                Ok((x.balance, x.txn_id))
            }
            Reply::Err(st, _) => Err(st),
            other => panic!("{other:?}"),
        }
    }

    fn balance(&mut self, key: usize) -> u64 {
        match self.call(key, &Request::Balance(Empty {})).reply() {
            Reply::Ok(Response::Balance(b)) => b.balance,
            other => panic!("{other:?}"),
        }
    }

    fn closing(&self, key: usize) -> bool {
        self.core.step(key).is_some_and(|st| st.closing)
    }
}

/// REGISTER for `user` with `password` (a fixed salt, the minimum iterations).
fn register_request<'a>(user: &'a str, password: &str) -> Request<'a> {
    let secret = ClientSecret::derive(password.as_bytes(), &[7; 16], 4096);
    let stored = secret.stored();
    Request::Register(RegisterRequest {
        username: Name::new(user).expect("name"),
        salt: Salt::new(&[7; 16]).expect("salt"),
        iterations: 4096,
        stored_key: stored.stored_key,
        server_key: stored.server_key,
    })
}

fn deposit(amount: u64) -> Request<'static> {
    Request::Deposit(AmountRequest { amount })
}

fn withdraw(amount: u64) -> Request<'static> {
    Request::Withdraw(AmountRequest { amount })
}

fn transfer(to: &str, amount: u64) -> Request<'_> {
    Request::Transfer(TransferRequest {
        to: Target::Name(Name::new(to).expect("name")),
        amount,
    })
}

fn notices(frames: &[Out]) -> Vec<u16> {
    frames
        .iter()
        .filter(|f| !f.response)
        .filter_map(|f| match f.push() {
            Push::Notice(n) => Some(n.code),
            _ => None,
        })
        .collect()
}

over_both!(
    hello_states_the_limits_and_heartbeat_echoes_with_wall_time,
    tls_hello_states_the_limits_and_heartbeat_echoes_with_wall_time,
    hello_states_the_limits_and_heartbeat_echoes_with_wall_time_on
);
fn hello_states_the_limits_and_heartbeat_echoes_with_wall_time_on(wire: Wire) {
    let seg = segment();
    let mut h = Harness::over(&seg, config(), wire);
    let c = h.connect();
    match h
        .call(
            c,
            &Request::Hello(HelloRequest {
                client: Label::new("t").expect("label"),
            }),
        )
        .reply()
    {
        Reply::Ok(Response::Hello(x)) => {
            assert_eq!(x.worker_id, 0);
            assert_eq!(x.body_len_max, 64 * 1024);
            assert_eq!(x.idle_timeout_ms, 30_000);
            assert_eq!(x.heartbeat_interval_ms, 10_000);
            assert_eq!(x.server_time_ms, WALL_START_MS);
        }
        other => panic!("{other:?}"),
    }
    h.clock.advance(1234);
    match h
        .call(
            c,
            &Request::Heartbeat(HeartbeatRequest { client_time_ms: 77 }),
        )
        .reply()
    {
        Reply::Ok(Response::Heartbeat(x)) => {
            assert_eq!(x.client_time_ms, 77);
            assert_eq!(x.server_time_ms, WALL_START_MS + 1234);
        }
        other => panic!("{other:?}"),
    }
}

over_both!(
    nothing_but_hello_register_login_and_heartbeat_before_login,
    tls_nothing_but_hello_register_login_and_heartbeat_before_login,
    nothing_but_hello_register_login_and_heartbeat_before_login_on
);
fn nothing_but_hello_register_login_and_heartbeat_before_login_on(wire: Wire) {
    let seg = segment();
    let mut h = Harness::over(&seg, config(), wire);
    let c = h.connect();
    for req in [
        deposit(1),
        Request::Balance(Empty {}),
        Request::Logout(Empty {}),
        Request::JoinRoom(JoinRoomRequest {
            room: Name::new("r").expect("name"),
        }),
    ] {
        assert_eq!(
            h.status(c, &req),
            Status::ErrUnauthorized,
            "{:?}",
            req.opcode()
        );
    }
    let proof = Request::LoginProof(LoginProofRequest {
        client_proof: [0; 32],
    });
    assert_eq!(
        h.status(c, &proof),
        Status::ErrBadState,
        "LOGIN_PROOF without LOGIN"
    );
    assert!(!h.closing(c), "refusals keep the connection");
}

over_both!(
    a_login_returns_the_user_id_and_the_high_water_mark,
    tls_a_login_returns_the_user_id_and_the_high_water_mark,
    a_login_returns_the_user_id_and_the_high_water_mark_on
);
fn a_login_returns_the_user_id_and_the_high_water_mark_on(wire: Wire) {
    let seg = segment();
    let mut h = Harness::over(&seg, config(), wire);
    let c = h.connect();
    assert_eq!(h.register(c, "ann", "secret"), Status::Ok);
    assert_eq!(h.register(c, "ann", "other"), Status::ErrAlreadyExists);
    match h.login(c, "ann", "secret").reply() {
        Reply::Ok(Response::LoginProof(p)) => {
            assert_eq!(p.user_id, 1);
            assert_eq!(p.req_id_hw, 0);
            assert_eq!(p.req_id_window, 4);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        h.status(
            c,
            &Request::Register(RegisterRequest {
                username: Name::new("bob").expect("name"),
                salt: Salt::new(&[1; 16]).expect("salt"),
                iterations: 4096,
                stored_key: [0; 32],
                server_key: [0; 32],
            })
        ),
        Status::ErrBadState,
        "REGISTER while logged in"
    );
    h.send_id(c, 5_000, &deposit(10));
    h.take(c);
    let d = h.connect();
    match h.login(d, "ann", "secret").reply() {
        Reply::Ok(Response::LoginProof(p)) => assert_eq!(p.req_id_hw, 5_000),
        other => panic!("{other:?}"),
    }
}

#[test]
fn unknown_users_and_wrong_passwords_are_refused_and_repeated_failures_lock_out() {
    let seg = segment();
    let mut h = Harness::new(&seg, config());
    let c = h.connect();
    assert_eq!(h.login(c, "nobody", "x").status, Status::ErrNotFound);
    assert_eq!(h.register(c, "cid", "right"), Status::Ok);
    for _ in 0..3 {
        assert_eq!(h.login(c, "cid", "wrong").status, Status::ErrUnauthorized);
    }
    // Locked for 1 s after the third failure, even with the right password.
    assert_eq!(h.login(c, "cid", "right").status, Status::ErrRateLimited);
    h.clock.advance(1_001);
    assert_eq!(h.login(c, "cid", "right").status, Status::Ok);
}

#[test]
fn a_login_challenge_expires_after_ten_seconds() {
    let seg = segment();
    let mut h = Harness::new(&seg, config());
    let c = h.connect();
    assert_eq!(h.register(c, "dee", "pw"), Status::Ok);
    let r = h.call(
        c,
        &Request::Login(LoginRequest {
            username: Name::new("dee").expect("name"),
            client_nonce: Nonce::new(&[1; 16]).expect("nonce"),
        }),
    );
    assert_eq!(r.status, Status::Ok);
    h.clock.advance(10_001);
    let proof = Request::LoginProof(LoginProofRequest {
        client_proof: [0; 32],
    });
    assert_eq!(h.status(c, &proof), Status::ErrTimeout);
}

over_both!(
    deposit_withdraw_transfer_balance_and_history,
    tls_deposit_withdraw_transfer_balance_and_history,
    deposit_withdraw_transfer_balance_and_history_on
);
fn deposit_withdraw_transfer_balance_and_history_on(wire: Wire) {
    let seg = segment();
    let mut h = Harness::over(&seg, config(), wire);
    let a = h.user("amy");
    let b = h.user("ben");
    assert_eq!(h.ledger(a, &deposit(1_000)), Ok((1_000, 1)));
    assert_eq!(h.ledger(a, &withdraw(300)), Ok((700, 2)));
    assert_eq!(h.ledger(a, &transfer("ben", 200)), Ok((500, 3)));
    assert_eq!(h.balance(a), 500);
    assert_eq!(h.balance(b), 200);
    match h
        .call(
            a,
            &Request::TxnHistory(TxnHistoryRequest {
                before_txn_id: 0,
                limit: 10,
            }),
        )
        .reply()
    {
        Reply::Ok(Response::TxnHistory(t)) => {
            let got: Vec<(u64, TxnKind, u64, u64)> = t
                .txns
                .items()
                .iter()
                .map(|e| (e.txn_id, e.kind, e.amount, e.balance_after))
                .collect();
            assert_eq!(
                got,
                vec![
                    (3, TxnKind::Transfer, 200, 500),
                    (2, TxnKind::Withdraw, 300, 700),
                    (1, TxnKind::Deposit, 1_000, 1_000),
                ]
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn every_ledger_refusal_has_its_status_and_changes_nothing() {
    let seg = segment();
    let mut h = Harness::new(&seg, config());
    let a = h.user("eve");
    let _b = h.user("fay");
    assert_eq!(h.ledger(a, &deposit(100)), Ok((100, 1)));
    assert_eq!(h.ledger(a, &deposit(0)), Err(Status::ErrInvalidAmount));
    assert_eq!(
        h.ledger(a, &withdraw(101)),
        Err(Status::ErrInsufficientFunds)
    );
    assert_eq!(
        h.ledger(a, &transfer("fay", 101)),
        Err(Status::ErrInsufficientFunds)
    );
    assert_eq!(
        h.ledger(a, &transfer("eve", 1)),
        Err(Status::ErrInvalidArgument)
    );
    assert_eq!(h.ledger(a, &transfer("ghost", 1)), Err(Status::ErrNotFound));
    assert_eq!(h.ledger(a, &deposit(u64::MAX)), Err(Status::ErrOverflow));
    let by_id = Request::Transfer(TransferRequest {
        to: Target::Id(99),
        amount: 1,
    });
    assert_eq!(h.ledger(a, &by_id), Err(Status::ErrNotFound));
    assert_eq!(h.balance(a), 100);
}

over_both!(
    a_retry_gets_the_first_answer_and_a_passed_over_req_id_is_stale,
    tls_a_retry_gets_the_first_answer_and_a_passed_over_req_id_is_stale,
    a_retry_gets_the_first_answer_and_a_passed_over_req_id_is_stale_on
);
fn a_retry_gets_the_first_answer_and_a_passed_over_req_id_is_stale_on(wire: Wire) {
    let seg = segment();
    let mut h = Harness::over(&seg, config(), wire);
    let a = h.user("gus");
    h.send_id(a, 1_000, &deposit(50));
    let first = h.take(a);
    h.send_id(a, 1_000, &deposit(50));
    let again = h.take(a);
    assert_eq!(first[0].body, again[0].body, "the same balance and txn_id");
    h.send_id(a, 1_000, &deposit(51));
    assert_eq!(
        h.take(a)[0].status,
        Status::ErrInvalidArgument,
        "req_id reused"
    );
    h.send_id(a, 999, &deposit(5));
    assert_eq!(h.take(a)[0].status, Status::ErrStaleRequest);
    assert_eq!(h.balance(a), 50);
}

#[test]
fn a_newer_login_supersedes_the_older_connection_at_its_next_request() {
    let seg = segment();
    let mut h = Harness::new(&seg, config());
    let old = h.user("hal");
    let new = h.connect();
    assert_eq!(h.login(new, "hal", "pw").status, Status::Ok);
    h.send(old, &deposit(10));
    let frames = h.take(old);
    assert_eq!(frames[0].status, Status::ErrSessionSuperseded);
    assert_eq!(notices(&frames), vec![notice::LOGGED_IN_ELSEWHERE]);
    assert!(h.closing(old));
    assert_eq!(h.balance(new), 0, "the request was not executed");
}

#[test]
fn the_sweep_closes_a_superseded_idle_connection() {
    let seg = segment();
    let mut h = Harness::new(&seg, config());
    let old = h.user("ida");
    let new = h.connect();
    assert_eq!(h.login(new, "ida", "pw").status, Status::Ok);
    let marked = h.core.sweep();
    assert_eq!(marked, vec![old]);
    assert_eq!(notices(&h.take(old)), vec![notice::LOGGED_IN_ELSEWHERE]);
}

#[test]
fn an_idle_connection_is_told_and_closed_after_the_idle_timeout() {
    let seg = segment();
    let mut h = Harness::new(&seg, config());
    let c = h.user("jon");
    h.take(c);
    h.clock.advance(30_000);
    h.core.tick_clock();
    assert!(h.core.sweep().is_empty(), "not past the timeout yet");
    h.clock.advance(1);
    h.core.tick_clock();
    assert_eq!(h.core.sweep(), vec![c]);
    assert_eq!(notices(&h.take(c)), vec![notice::IDLE_TIMEOUT]);
    assert!(h.closing(c));
}

#[test]
fn a_frame_that_does_not_arrive_whole_in_time_is_answered_err_timeout() {
    let seg = segment();
    let mut h = Harness::new(&seg, config());
    let c = h.connect();
    let mut bytes = Vec::new();
    write_request(&mut bytes, 1, &deposit(1), proto::BODY_LEN_LIMIT).expect("encode");
    h.send_bytes(c, &bytes[..10]);
    for _ in 0..10 {
        // A byte now and then keeps the connection from going idle, never the frame whole.
        h.clock.advance(1_000);
        h.send_bytes(c, &bytes[10..10]);
    }
    h.clock.advance(1);
    h.core.tick_clock();
    assert_eq!(h.core.sweep(), vec![c]);
    let frames = h.take(c);
    assert_eq!(frames[0].status, Status::ErrTimeout);
    assert!(h.closing(c));
}

over_both!(
    room_messages_are_pushed_in_order_to_every_local_member,
    tls_room_messages_are_pushed_in_order_to_every_local_member,
    room_messages_are_pushed_in_order_to_every_local_member_on
);
fn room_messages_are_pushed_in_order_to_every_local_member_on(wire: Wire) {
    let seg = segment();
    let mut h = Harness::over(&seg, config(), wire);
    let a = h.user("kim");
    let b = h.user("lee");
    fn join(name: &str) -> Request<'_> {
        Request::JoinRoom(JoinRoomRequest {
            room: Name::new(name).expect("name"),
        })
    }
    let room = match h.call(a, &join("pit")).reply() {
        Reply::Ok(Response::JoinRoom(j)) => j.room_id,
        other => panic!("{other:?}"),
    };
    assert_eq!(room, 1, "the first room is room 1");
    assert_eq!(h.call(b, &join("pit")).status, Status::Ok);
    for (i, text) in ["one", "two"].iter().enumerate() {
        let send = Request::ChatSend(ChatSendRequest {
            room_id: room,
            text: Text::new(text).expect("text"),
        });
        match h.call(a, &send).reply() {
            Reply::Ok(Response::ChatSend(s)) => assert_eq!(s.seq, i as u64 + 1),
            other => panic!("{other:?}"),
        }
    }
    h.core.deliver();
    for member in [a, b] {
        let got: Vec<(u64, String)> = h
            .take(member)
            .iter()
            .filter_map(|f| match f.push() {
                Push::ChatBroadcast(m) => {
                    Some((m.message.seq, m.message.text.as_str().to_string()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(got, vec![(1, "one".into()), (2, "two".into())]);
    }
}

#[test]
fn the_flood_limit_answers_err_rate_limited_and_refills_with_time() {
    let seg = segment();
    let mut h = Harness::new(&seg, config());
    let a = h.user("max");
    let room = match h
        .call(
            a,
            &Request::JoinRoom(JoinRoomRequest {
                room: Name::new("r").expect("name"),
            }),
        )
        .reply()
    {
        Reply::Ok(Response::JoinRoom(j)) => j.room_id,
        other => panic!("{other:?}"),
    };
    let send = Request::ChatSend(ChatSendRequest {
        room_id: room,
        text: Text::new("x").expect("text"),
    });
    for _ in 0..3 {
        assert_eq!(h.status(a, &send), Status::Ok, "within the burst");
    }
    assert_eq!(h.status(a, &send), Status::ErrRateLimited);
    h.clock.advance(1_000);
    assert_eq!(h.status(a, &send), Status::Ok, "one more a second");
}

over_both!(
    a_direct_message_reaches_a_user_on_this_worker,
    tls_a_direct_message_reaches_a_user_on_this_worker,
    a_direct_message_reaches_a_user_on_this_worker_on
);
fn a_direct_message_reaches_a_user_on_this_worker_on(wire: Wire) {
    let seg = segment();
    let mut h = Harness::over(&seg, config(), wire);
    let a = h.user("ned");
    let b = h.user("ola");
    let dm = Request::DirectSend(DirectSendRequest {
        to: Name::new("ola").expect("name"),
        text: Text::new("psst").expect("text"),
    });
    assert_eq!(h.status(a, &dm), Status::Ok);
    h.core.deliver();
    let got: Vec<String> = h
        .take(b)
        .iter()
        .filter_map(|f| match f.push() {
            Push::DirectMessage(m) => Some(format!("{}: {}", m.from.as_str(), m.text.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(got, vec!["ned: psst".to_string()]);
    let to_offline = Request::DirectSend(DirectSendRequest {
        to: Name::new("nobody").expect("name"),
        text: Text::new("x").expect("text"),
    });
    assert_eq!(h.status(a, &to_offline), Status::ErrNotFound);
}

#[test]
fn logout_ends_the_session_on_the_same_connection() {
    let seg = segment();
    let mut h = Harness::new(&seg, config());
    let a = h.user("pat");
    assert_eq!(h.status(a, &Request::Logout(Empty {})), Status::Ok);
    assert_eq!(h.status(a, &deposit(1)), Status::ErrUnauthorized);
    assert_eq!(h.login(a, "pat", "pw").status, Status::Ok);
    assert_eq!(h.ledger(a, &deposit(1)).map(|r| r.0), Ok(1));
}

over_both!(
    a_bad_checksum_is_answered_and_the_stream_goes_on_while_bad_magic_closes,
    tls_a_bad_checksum_is_answered_and_the_stream_goes_on_while_bad_magic_closes,
    a_bad_checksum_is_answered_and_the_stream_goes_on_while_bad_magic_closes_on
);
fn a_bad_checksum_is_answered_and_the_stream_goes_on_while_bad_magic_closes_on(wire: Wire) {
    let seg = segment();
    let mut h = Harness::over(&seg, config(), wire);
    let c = h.connect();
    let mut bytes = Vec::new();
    write_request(
        &mut bytes,
        7,
        &Request::Heartbeat(HeartbeatRequest { client_time_ms: 1 }),
        proto::BODY_LEN_LIMIT,
    )
    .expect("encode");
    bytes[23] ^= 1;
    h.send_bytes(c, &bytes);
    let frames = h.take(c);
    assert_eq!(
        (frames[0].status, frames[0].req_id),
        (Status::ErrChecksumFail, 7)
    );
    assert!(!h.closing(c));
    assert_eq!(
        h.status(
            c,
            &Request::Heartbeat(HeartbeatRequest { client_time_ms: 2 })
        ),
        Status::Ok
    );
    let mut bad = bytes.clone();
    bad[0] = 0;
    h.send_bytes(c, &bad);
    assert_eq!(h.take(c)[0].status, Status::ErrBadPacket);
    assert!(h.closing(c), "framing is lost: close");
}

#[test]
fn connections_over_the_limit_are_refused() {
    let seg = segment();
    let mut cfg = config();
    cfg.max_conns = 2;
    let mut h = Harness::new(&seg, cfg);
    h.connect();
    h.connect();
    let refusal = h.core.open().expect_err("over the limit");
    let mut dec = FrameDecoder::new(proto::BODY_LEN_LIMIT);
    let (_, res) = dec.decode(&refusal);
    match res {
        Err(proto::DecodeError::UnknownOpcode { header }) => {
            assert_eq!(header.status, Status::ErrServerBusy.as_u16());
        }
        other => panic!("an ERR_SERVER_BUSY response with opcode 0: {other:?}"),
    }
}

over_both!(
    a_reader_that_lets_its_queue_pass_the_bound_is_dropped_as_a_slow_consumer,
    tls_a_reader_that_lets_its_queue_pass_the_bound_is_dropped_as_a_slow_consumer,
    a_reader_that_lets_its_queue_pass_the_bound_is_dropped_as_a_slow_consumer_on
);
fn a_reader_that_lets_its_queue_pass_the_bound_is_dropped_as_a_slow_consumer_on(wire: Wire) {
    let seg = segment();
    let mut cfg = config();
    cfg.out_max_bytes = 1_000;
    let mut h = Harness::over(&seg, cfg, wire);
    let c = h.connect();
    for i in 0..40 {
        h.send_id(
            c,
            i + 1,
            &Request::Heartbeat(HeartbeatRequest { client_time_ms: i }),
        );
    }
    let step = h.core.step(c).expect("connection");
    assert!(
        step.closing && step.abort && !step.has_output,
        "closed at once, output dropped"
    );
}

over_both!(
    a_graceful_stop_tells_everyone_and_ends_after_the_grace,
    tls_a_graceful_stop_tells_everyone_and_ends_after_the_grace,
    a_graceful_stop_tells_everyone_and_ends_after_the_grace_on
);
fn a_graceful_stop_tells_everyone_and_ends_after_the_grace_on(wire: Wire) {
    let seg = segment();
    let mut h = Harness::over(&seg, config(), wire);
    let a = h.user("quin");
    let b = h.connect();
    h.take(a);
    let all = h.core.begin_shutdown(std::time::Duration::from_secs(3));
    assert_eq!(all.len(), 2);
    for c in [a, b] {
        assert_eq!(notices(&h.take(c)), vec![notice::SHUTTING_DOWN]);
        assert!(h.closing(c));
    }
    assert!(!h.core.drained(), "connections remain within the grace");
    h.clock.advance(3_000);
    h.core.tick_clock();
    assert!(h.core.drained(), "the grace is over");
    h.core.close_all();
    assert_eq!(h.core.open_count(), 0);
}

/// A HEARTBEAT request frame with its header edited by `edit`, checksum recomputed.
fn edited_frame(edit: impl Fn(&mut proto::RawHeader)) -> Vec<u8> {
    let mut bytes = Vec::new();
    let hb = Request::Heartbeat(HeartbeatRequest { client_time_ms: 1 });
    write_request(&mut bytes, 3, &hb, proto::BODY_LEN_LIMIT).expect("encode");
    let head: [u8; 32] = bytes[..32].try_into().expect("32 bytes");
    let mut raw = proto::RawHeader::parse(&head);
    edit(&mut raw);
    let mut h32 = [0u8; 32];
    raw.write(&mut h32);
    raw.checksum = proto::header::checksum(&h32, &bytes[32..]);
    raw.write(&mut h32);
    let mut out = h32.to_vec();
    out.extend_from_slice(&bytes[32..]);
    out
}

over_both!(
    frames_a_server_must_refuse_get_their_status_and_the_stream_goes_on,
    tls_frames_a_server_must_refuse_get_their_status_and_the_stream_goes_on,
    frames_a_server_must_refuse_get_their_status_and_the_stream_goes_on_on
);
fn frames_a_server_must_refuse_get_their_status_and_the_stream_goes_on_on(wire: Wire) {
    let seg = segment();
    let mut h = Harness::over(&seg, config(), wire);
    let c = h.connect();
    let cases = [
        (
            edited_frame(|r| r.opcode = Opcode::ChatBroadcast.as_u16()),
            Status::ErrBadPacket,
            "a push opcode as a request",
        ),
        (
            edited_frame(|r| r.opcode = 0x0777),
            Status::ErrUnknownOpcode,
            "an unknown opcode",
        ),
        (
            edited_frame(|r| r.flags |= proto::Flags::ENCRYPTED),
            Status::ErrUnsupported,
            "the encrypted flag",
        ),
        (
            edited_frame(|r| r.status = 5),
            Status::ErrBadPacket,
            "a status in a request",
        ),
    ];
    for (frame, want, what) in cases {
        h.send_bytes(c, &frame);
        let got = h.take(c);
        assert_eq!((got[0].status, got[0].req_id), (want, 3), "{what}");
        assert!(!h.closing(c), "{what} does not lose the stream");
    }
    let hb = Request::Heartbeat(HeartbeatRequest { client_time_ms: 9 });
    assert_eq!(h.status(c, &hb), Status::Ok);
}

#[test]
fn registration_closed_refuses_register() {
    let seg = segment();
    let mut cfg = config();
    cfg.registration_open = false;
    let mut h = Harness::new(&seg, cfg);
    let c = h.connect();
    assert_eq!(h.register(c, "zed", "pw"), Status::ErrRegistrationClosed);
}

#[test]
fn leave_and_send_answer_not_member_for_a_room_left_and_not_found_for_none() {
    let seg = segment();
    let mut h = Harness::new(&seg, config());
    let a = h.user("uma");
    let b = h.user("val");
    let room = match h
        .call(
            a,
            &Request::JoinRoom(JoinRoomRequest {
                room: Name::new("den").expect("name"),
            }),
        )
        .reply()
    {
        Reply::Ok(Response::JoinRoom(j)) => j.room_id,
        other => panic!("{other:?}"),
    };
    let send = |room_id| {
        Request::ChatSend(ChatSendRequest {
            room_id,
            text: Text::new("hi").expect("text"),
        })
    };
    assert_eq!(h.status(b, &send(room)), Status::ErrNotMember);
    assert_eq!(h.status(b, &send(room + 1)), Status::ErrNotFound);
    let leave = |room_id| Request::LeaveRoom(LeaveRoomRequest { room_id });
    assert_eq!(h.status(b, &leave(room)), Status::ErrNotMember);
    assert_eq!(h.status(a, &leave(room)), Status::Ok);
    assert_eq!(h.status(a, &send(room)), Status::ErrNotMember);
}

#[test]
fn list_users_and_rooms_page_by_id() {
    let seg = segment();
    let mut h = Harness::new(&seg, config());
    let a = h.user("wes");
    let _b = h.user("xia");
    let _c = h.user("yan");
    let page = |after_id, limit| Request::ListUsers(PageRequest { after_id, limit });
    let ids = |o: &Out| match o.reply() {
        Reply::Ok(Response::ListUsers(l)) => l
            .users
            .items()
            .iter()
            .map(|u| u.user_id)
            .collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    assert_eq!(ids(&h.call(a, &page(0, 2))), vec![1, 2]);
    assert_eq!(ids(&h.call(a, &page(2, 2))), vec![3]);
    assert_eq!(ids(&h.call(a, &page(3, 2))), Vec::<u32>::new());
    for name in ["r1", "r2", "r3"] {
        let j = Request::JoinRoom(JoinRoomRequest {
            room: Name::new(name).expect("name"),
        });
        assert_eq!(h.status(a, &j), Status::Ok);
    }
    let mut rooms = |after_id| match h
        .call(a, &Request::ListRooms(PageRequest { after_id, limit: 2 }))
        .reply()
    {
        Reply::Ok(Response::ListRooms(l)) => l
            .rooms
            .items()
            .iter()
            .map(|r| r.room_id)
            .collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    assert_eq!(rooms(0), vec![1, 2]);
    assert_eq!(rooms(2), vec![3]);
}

#[test]
fn room_history_serves_what_the_ring_holds_and_counts_what_is_gone() {
    let seg = segment();
    let mut cfg = config();
    cfg.flood_burst = 100;
    let mut h = Harness::new(&seg, cfg);
    let a = h.user("zoe");
    let room = match h
        .call(
            a,
            &Request::JoinRoom(JoinRoomRequest {
                room: Name::new("log").expect("name"),
            }),
        )
        .reply()
    {
        Reply::Ok(Response::JoinRoom(j)) => j.room_id,
        other => panic!("{other:?}"),
    };
    // The ring holds 16: send 20.
    for i in 1..=20 {
        let text = format!("m{i}");
        let send = Request::ChatSend(ChatSendRequest {
            room_id: room,
            text: Text::new(&text).expect("text"),
        });
        assert_eq!(h.status(a, &send), Status::Ok);
    }
    let q = Request::RoomHistory(RoomHistoryRequest {
        room_id: room,
        after_seq: 0,
        limit: 100,
    });
    match h.call(a, &q).reply() {
        Reply::Ok(Response::RoomHistory(r)) => {
            assert_eq!(r.last_seq, 20);
            assert_eq!(r.missed, 4, "1..=4 left the ring");
            let seqs: Vec<u64> = r.messages.items().iter().map(|m| m.seq).collect();
            assert_eq!(seqs, (5..=20).collect::<Vec<_>>());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_second_login_on_a_logged_in_connection_is_bad_state_and_heartbeat_works_in_every_state() {
    let seg = segment();
    let mut h = Harness::new(&seg, config());
    let c = h.connect();
    let hb = Request::Heartbeat(HeartbeatRequest { client_time_ms: 1 });
    assert_eq!(h.status(c, &hb), Status::Ok, "connected");
    assert_eq!(h.register(c, "abe", "pw"), Status::Ok);
    assert_eq!(h.login(c, "abe", "pw").status, Status::Ok);
    assert_eq!(h.status(c, &hb), Status::Ok, "logged in");
    let login = Request::Login(LoginRequest {
        username: Name::new("abe").expect("name"),
        client_nonce: Nonce::new(&[1; 16]).expect("nonce"),
    });
    assert_eq!(h.status(c, &login), Status::ErrBadState);
}

over_both!(
    a_malformed_body_is_bad_packet_and_the_stream_goes_on,
    tls_a_malformed_body_is_bad_packet_and_the_stream_goes_on,
    a_malformed_body_is_bad_packet_and_the_stream_goes_on_on
);
fn a_malformed_body_is_bad_packet_and_the_stream_goes_on_on(wire: Wire) {
    let seg = segment();
    let mut h = Harness::over(&seg, config(), wire);
    let a = h.user("bea");
    // A DEPOSIT body one byte short, with a valid checksum.
    let mut bytes = Vec::new();
    write_request(&mut bytes, 44, &deposit(5), proto::BODY_LEN_LIMIT).expect("encode");
    let head: [u8; 32] = bytes[..32].try_into().expect("32 bytes");
    let mut raw = proto::RawHeader::parse(&head);
    raw.body_len -= 1;
    let body = &bytes[32..bytes.len() - 1];
    let mut h32 = [0u8; 32];
    raw.write(&mut h32);
    raw.checksum = proto::header::checksum(&h32, body);
    raw.write(&mut h32);
    let mut short = h32.to_vec();
    short.extend_from_slice(body);
    h.send_bytes(a, &short);
    assert_eq!(h.take(a)[0].status, Status::ErrBadPacket);
    assert!(!h.closing(a));
    assert_eq!(h.balance(a), 0, "nothing applied");
}

#[test]
fn a_refusal_under_the_lock_is_decided_once_and_replayed_to_its_retry() {
    let seg = segment();
    let mut h = Harness::new(&seg, config());
    let a = h.user("cal");
    h.send_id(a, 500, &withdraw(10));
    assert_eq!(h.take(a)[0].status, Status::ErrInsufficientFunds);
    h.send_id(a, 550, &deposit(100));
    assert_eq!(h.take(a)[0].status, Status::Ok);
    // The retry of req 500 gets the first answer, though it would succeed now.
    h.send_id(a, 500, &withdraw(10));
    assert_eq!(h.take(a)[0].status, Status::ErrInsufficientFunds);
    let by_id = Request::Transfer(TransferRequest {
        to: Target::Id(42),
        amount: 1,
    });
    h.send_id(a, 600, &by_id);
    assert_eq!(h.take(a)[0].status, Status::ErrNotFound);
    h.send_id(a, 600, &by_id);
    assert_eq!(h.take(a)[0].status, Status::ErrNotFound, "decided once");
    assert_eq!(h.balance(a), 100);
}

#[test]
fn txn_history_pages_with_before_txn_id() {
    let seg = segment();
    let mut h = Harness::new(&seg, config());
    let a = h.user("dan");
    for amount in 1..=5 {
        h.ledger(a, &deposit(amount)).expect("deposit");
    }
    let page = |h: &mut Harness<'_>, before_txn_id, limit| -> Vec<u64> {
        match h
            .call(
                a,
                &Request::TxnHistory(TxnHistoryRequest {
                    before_txn_id,
                    limit,
                }),
            )
            .reply()
        {
            Reply::Ok(Response::TxnHistory(t)) => t.txns.items().iter().map(|e| e.txn_id).collect(),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(page(&mut h, 0, 2), vec![5, 4]);
    assert_eq!(page(&mut h, 4, 2), vec![3, 2]);
    assert_eq!(page(&mut h, 2, 2), vec![1]);
    assert_eq!(page(&mut h, 1, 2), Vec::<u64>::new());
}

over_both!(
    a_frame_fed_one_byte_at_a_time_is_answered_once_whole,
    tls_a_frame_fed_one_byte_at_a_time_is_answered_once_whole,
    a_frame_fed_one_byte_at_a_time_is_answered_once_whole_on
);
fn a_frame_fed_one_byte_at_a_time_is_answered_once_whole_on(wire: Wire) {
    let seg = segment();
    let mut h = Harness::over(&seg, config(), wire);
    let c = h.connect();
    let mut bytes = Vec::new();
    let hb = Request::Heartbeat(HeartbeatRequest { client_time_ms: 5 });
    write_request(&mut bytes, 77, &hb, proto::BODY_LEN_LIMIT).expect("encode");
    for (i, b) in bytes.iter().enumerate() {
        h.send_bytes(c, std::slice::from_ref(b));
        let got = h.take(c);
        if i + 1 < bytes.len() {
            assert!(got.is_empty(), "nothing before the last byte");
        } else {
            assert_eq!(
                (got.len(), got[0].req_id, got[0].status),
                (1, 77, Status::Ok)
            );
        }
    }
}

over_both!(
    a_hundred_pipelined_requests_in_one_read_are_answered_in_order,
    tls_a_hundred_pipelined_requests_in_one_read_are_answered_in_order,
    a_hundred_pipelined_requests_in_one_read_are_answered_in_order_on
);
fn a_hundred_pipelined_requests_in_one_read_are_answered_in_order_on(wire: Wire) {
    let seg = segment();
    let mut h = Harness::over(&seg, config(), wire);
    let a = h.user("ema");
    let mut bytes = Vec::new();
    for i in 0..100u64 {
        write_request(&mut bytes, 1_000 + i, &deposit(1), proto::BODY_LEN_LIMIT).expect("encode");
    }
    h.send_bytes(a, &bytes);
    let got = h.take(a);
    let ids: Vec<u64> = got.iter().map(|f| f.req_id).collect();
    assert_eq!(ids, (1_000..1_100).collect::<Vec<_>>());
    assert!(got.iter().all(|f| f.status == Status::Ok));
    assert_eq!(h.balance(a), 100);
}

#[test]
fn a_second_login_request_replaces_the_first_challenge() {
    let seg = segment();
    let mut h = Harness::new(&seg, config());
    let c = h.connect();
    assert_eq!(h.register(c, "fin", "pw"), Status::Ok);
    let first = Request::Login(LoginRequest {
        username: Name::new("fin").expect("name"),
        client_nonce: Nonce::new(&[3; 16]).expect("nonce"),
    });
    assert_eq!(h.status(c, &first), Status::Ok);
    // A whole new login on the same connection: the second challenge is the one that counts.
    assert_eq!(h.login(c, "fin", "pw").status, Status::Ok);
}

#[test]
fn a_member_gets_only_messages_sent_after_it_joined() {
    let seg = segment();
    let mut h = Harness::new(&seg, config());
    let a = h.user("gil");
    let b = h.user("hui");
    let join = Request::JoinRoom(JoinRoomRequest {
        room: Name::new("late").expect("name"),
    });
    let room = match h.call(a, &join).reply() {
        Reply::Ok(Response::JoinRoom(j)) => j.room_id,
        other => panic!("{other:?}"),
    };
    let send = |t: &'static str| {
        Request::ChatSend(ChatSendRequest {
            room_id: room,
            text: Text::new(t).expect("text"),
        })
    };
    assert_eq!(h.status(a, &send("before")), Status::Ok);
    h.core.deliver();
    h.take(a);
    assert_eq!(h.status(b, &join), Status::Ok);
    assert_eq!(h.status(a, &send("after")), Status::Ok);
    h.core.deliver();
    let texts: Vec<String> = h
        .take(b)
        .iter()
        .filter_map(|f| match f.push() {
            Push::ChatBroadcast(m) => Some(m.message.text.as_str().to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(texts, vec!["after".to_string()]);
}

#[test]
fn logout_leaves_every_room_and_joining_twice_counts_once() {
    let seg = segment();
    let mut h = Harness::new(&seg, config());
    let a = h.user("ira");
    let b = h.user("jay");
    let join = Request::JoinRoom(JoinRoomRequest {
        room: Name::new("hall").expect("name"),
    });
    assert_eq!(h.status(a, &join), Status::Ok);
    assert_eq!(h.status(a, &join), Status::Ok);
    assert_eq!(h.status(b, &join), Status::Ok);
    let members = |h: &mut Harness<'_>| match h
        .call(
            b,
            &Request::ListRooms(PageRequest {
                after_id: 0,
                limit: 10,
            }),
        )
        .reply()
    {
        Reply::Ok(Response::ListRooms(l)) => l.rooms.items()[0].members,
        other => panic!("{other:?}"),
    };
    assert_eq!(members(&mut h), 2);
    assert_eq!(h.status(a, &Request::Logout(Empty {})), Status::Ok);
    assert_eq!(members(&mut h), 1);
}

#[test]
fn with_no_connection_a_graceful_stop_is_drained_at_once() {
    let seg = segment();
    let mut h = Harness::new(&seg, config());
    assert!(!h.core.drained(), "not stopping yet");
    assert!(h
        .core
        .begin_shutdown(std::time::Duration::from_secs(3))
        .is_empty());
    assert!(h.core.drained());
}

#[test]
fn the_core_says_what_the_event_loop_must_do_next() {
    let seg = segment();
    let mut h = Harness::new(&seg, config());
    let c = h.connect();
    let step = |h: &Harness<'_>| h.core.step(c).expect("open");
    assert!(!step(&h).has_output && !step(&h).closing);
    h.send(
        c,
        &Request::Heartbeat(HeartbeatRequest { client_time_ms: 1 }),
    );
    assert!(step(&h).has_output);
    // A send takes the whole output; the backend owns it until it gives the buffer back.
    let buf = h.core.take_output(c).expect("output");
    assert!(!step(&h).has_output, "taken by the send");
    h.core.sent(c, 10);
    h.send(
        c,
        &Request::Heartbeat(HeartbeatRequest { client_time_ms: 2 }),
    );
    assert!(
        step(&h).has_output,
        "queued while the first send is in flight"
    );
    h.core.sent(c, buf.len() - 10);
    h.core.recycle(c, buf);
    let second = h.core.take_output(c).expect("the second answer");
    assert_eq!(
        frames_of(&second).len(),
        1,
        "only what was queued after the take"
    );
    h.core.sent(c, second.len());
    h.core.recycle(c, second);
    assert!(!step(&h).has_output);
    h.core.peer_closed(c);
    assert!(step(&h).closing);
    h.send(
        c,
        &Request::Heartbeat(HeartbeatRequest { client_time_ms: 3 }),
    );
    assert!(!step(&h).has_output, "nothing is read once closing");
    assert!(h.core.remove(c));
    assert!(h.core.step(c).is_none());
}

#[test]
fn a_failed_send_drops_the_output_and_closes() {
    let seg = segment();
    let mut h = Harness::new(&seg, config());
    let c = h.connect();
    h.send(
        c,
        &Request::Heartbeat(HeartbeatRequest { client_time_ms: 1 }),
    );
    h.core.send_failed(c);
    let step = h.core.step(c).expect("open");
    assert!(step.closing && !step.has_output);
}

/// A backend that plays a script through the real event loop: each turn hands the core the
/// bytes of that turn, and every send it is asked for is recorded (turn, key, bytes) and taken
/// whole at once. When the script is over, its turn fails, which ends the loop.
struct Script {
    turns: std::collections::VecDeque<Vec<(usize, Vec<u8>)>>,
    turn: usize,
    sends: Vec<(usize, usize, Vec<u8>)>,
}

const SCRIPT_OVER: &str = "the script is over";

impl uring_server::event_loop::Backend for Script {
    fn sending(&self, _key: usize) -> bool {
        false
    }
    fn in_flight(&self, _key: usize) -> bool {
        false
    }
    fn send(&mut self, core: &mut Core<'_>, key: usize) {
        let Some(buf) = core.take_output(key) else {
            return;
        };
        core.sent(key, buf.len());
        self.sends.push((self.turn, key, buf.clone()));
        core.recycle(key, buf);
    }
    fn stop_reading(&mut self, _key: usize) {}
    fn reset(&mut self, _key: usize) {}
    fn close(&mut self, _key: usize) {}
    fn stop_accepting(&mut self) {}
    fn turn(&mut self, core: &mut Core<'_>, touched: &mut Vec<usize>) -> anyhow::Result<()> {
        let Some(input) = self.turns.pop_front() else {
            anyhow::bail!(SCRIPT_OVER);
        };
        self.turn += 1;
        core.tick_clock();
        for (key, bytes) in input {
            core.on_bytes(key, &bytes);
            touched.push(key);
        }
        Ok(())
    }
    fn finish(&mut self, _core: &mut Core<'_>) -> anyhow::Result<()> {
        Ok(())
    }
}

#[test]
fn a_burst_gets_one_send_per_connection_per_turn_with_answers_and_pushes_together() {
    let seg = segment();
    let mut h = Harness::new(
        &seg,
        Config {
            flood_burst: 100,
            ..config()
        },
    );
    let members: Vec<usize> = (0..5).map(|i| h.user(&format!("m{i}"))).collect();
    let join = Request::JoinRoom(JoinRoomRequest {
        room: Name::new("burst").expect("name"),
    });
    let mut room = 0;
    for &m in &members {
        match h.call(m, &join).reply() {
            Reply::Ok(Response::JoinRoom(j)) => room = j.room_id,
            other => panic!("{other:?}"),
        }
    }
    // One turn: every member sends three messages, all in one read (15 in all: the test
    // segment's room ring holds 16).
    let per_member = 3u64;
    let mut burst = Vec::new();
    for (i, &m) in members.iter().enumerate() {
        let mut bytes = Vec::new();
        for n in 0..per_member {
            let text = format!("m{i} #{n}");
            let req = Request::ChatSend(ChatSendRequest {
                room_id: room,
                text: Text::new(&text).expect("text"),
            });
            write_request(&mut bytes, 1000 + n, &req, proto::BODY_LEN_LIMIT).expect("encode");
        }
        burst.push((m, bytes));
    }
    let mut script = Script {
        turns: [burst, Vec::new()].into_iter().collect(),
        turn: 0,
        sends: Vec::new(),
    };
    let wakes_before = h.core.metrics().chat_wakes.get();
    let shutdown = uring_server::stop::Shutdown {
        grace: std::time::Duration::ZERO,
    };
    let end = uring_server::event_loop::run(&mut h.core, &mut script, &shutdown);
    assert_eq!(
        end.expect_err("ends with the script").to_string(),
        SCRIPT_OVER
    );
    assert_eq!(
        h.core.metrics().chat_wakes.get() - wakes_before,
        1,
        "one cross-worker wake for the whole turn, not one per message"
    );
    // Exactly one send per member, all after the burst's turn.
    let mut sent_to: Vec<usize> = script.sends.iter().map(|(_, k, _)| *k).collect();
    sent_to.sort_unstable();
    assert_eq!(sent_to, members, "one send per connection");
    let total = per_member * members.len() as u64;
    for (turn, key, bytes) in &script.sends {
        assert_eq!(*turn, 1, "sent at the end of the burst's turn");
        let frames = frames_of(bytes);
        let answers: Vec<u64> = frames
            .iter()
            .filter(|f| f.response)
            .map(|f| {
                assert_eq!(f.status, Status::Ok);
                f.req_id
            })
            .collect();
        assert_eq!(answers, (1000..1000 + per_member).collect::<Vec<_>>());
        // Every message of the turn, in the room's order, in the same send as the answers.
        let seqs: Vec<u64> = frames
            .iter()
            .filter(|f| !f.response)
            .map(|f| match f.push() {
                Push::ChatBroadcast(b) => b.message.seq,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(seqs, (1..=total).collect::<Vec<_>>(), "member {key}");
    }
}

/// A segment with the journal on from LSN 0 (no writer: tests move `durable` by hand).
fn journaled_segment() -> Segment {
    let seg = segment();
    shm::journal::start_at(&seg, 0);
    shm::journal::set_mode(&seg, shm::journal::Mode::Sync);
    seg
}

/// The journal is on disk up to `lsn` (exclusive): what the writer says after a sync.
fn durable_to(h: &mut Harness<'_>, seg: &Segment, lsn: u64) {
    shm::journal::set_durable(seg, lsn);
    h.core.release_durable();
}

/// Registers and logs in `user` with the journal on: REGISTER's answer waits for its record.
fn journaled_user(h: &mut Harness<'_>, seg: &Segment, user: &str) -> usize {
    let key = h.connect();
    let id = h.send(key, &register_request(user, "pw"));
    assert!(h.take(key).is_empty(), "REGISTER waits for its record");
    durable_to(h, seg, shm::journal::head(seg));
    let got = h.take(key);
    assert_eq!(
        (got.len(), got[0].req_id, got[0].status),
        (1, id, Status::Ok)
    );
    assert_eq!(h.login(key, user, "pw").status, Status::Ok);
    key
}

over_both!(
    with_the_journal_on_an_answer_waits_for_its_own_record_and_a_read_for_what_it_saw,
    tls_with_the_journal_on_an_answer_waits_for_its_own_record_and_a_read_for_what_it_saw,
    with_the_journal_on_an_answer_waits_for_its_own_record_and_a_read_for_what_it_saw_on
);
fn with_the_journal_on_an_answer_waits_for_its_own_record_and_a_read_for_what_it_saw_on(
    wire: Wire,
) {
    let seg = journaled_segment();
    let mut h = Harness::over(&seg, config(), wire);
    let amy = journaled_user(&mut h, &seg, "amy");
    let ben = journaled_user(&mut h, &seg, "ben");
    // Ben's deposit: held until its record is durable, then answered.
    let ben_dep = h.send(ben, &deposit(50));
    assert!(h.take(ben).is_empty(), "held for its record");
    let ben_lsn = shm::journal::head(&seg) - 1;
    durable_to(&mut h, &seg, ben_lsn);
    assert!(
        h.take(ben).is_empty(),
        "durable below its record is not enough"
    );
    durable_to(&mut h, &seg, ben_lsn + 1);
    let got = h.take(ben);
    assert_eq!((got[0].req_id, got[0].status), (ben_dep, Status::Ok));
    // Amy's deposit is decided but not durable: its answer waits ...
    let amy_dep = h.send(amy, &deposit(100));
    let amy_lsn = shm::journal::head(&seg) - 1;
    assert!(h.take(amy).is_empty());
    // ... while Ben's balance rests only on Ben's durable record: answered at once.
    assert_eq!(h.balance(ben), 50, "a read of durable state is not held");
    // Amy's own balance saw her undurable deposit: held too, behind it, in order.
    let amy_bal = h.send(amy, &Request::Balance(Empty {}));
    assert!(
        h.take(amy).is_empty(),
        "a read that saw an undurable write is held"
    );
    // A refusal decided under the lock is a record of its own: held until it is durable.
    let amy_wd = h.send(amy, &withdraw(1_000));
    let refusal_lsn = shm::journal::head(&seg) - 1;
    assert!(refusal_lsn > amy_lsn);
    durable_to(&mut h, &seg, amy_lsn + 1);
    let got = h.take(amy);
    let ids: Vec<(u64, Status)> = got.iter().map(|f| (f.req_id, f.status)).collect();
    assert_eq!(
        ids,
        vec![(amy_dep, Status::Ok), (amy_bal, Status::Ok)],
        "the deposit and the read that rests on it go; the refusal waits for its record"
    );
    match got[1].reply() {
        Reply::Ok(Response::Balance(b)) => assert_eq!(b.balance, 100),
        other => panic!("{other:?}"),
    }
    durable_to(&mut h, &seg, refusal_lsn + 1);
    let got = h.take(amy);
    assert_eq!(
        (got.len(), got[0].req_id, got[0].status),
        (1, amy_wd, Status::ErrInsufficientFunds)
    );
    // A retry answered from the outcome table waits for everything appended so far (the
    // original's record may still be in flight): with Ben's new deposit not yet durable, the
    // retry is held too, and goes once the journal has caught up.
    h.send(ben, &deposit(1));
    h.send_id(amy, amy_dep, &deposit(100));
    assert!(h.take(amy).is_empty(), "a retry rests on the head");
    durable_to(&mut h, &seg, shm::journal::head(&seg));
    let got = h.take(amy);
    assert_eq!((got[0].req_id, got[0].status), (amy_dep, Status::Ok));
    assert_eq!(h.take(ben).len(), 1);
    assert_eq!(h.balance(amy), 100, "applied once");
}

#[test]
fn with_the_journal_on_a_send_takes_what_came_before_a_held_answer_and_keeps_the_rest() {
    let seg = journaled_segment();
    let mut h = Harness::new(&seg, config());
    let amy = journaled_user(&mut h, &seg, "amy");
    // One read of the socket: a heartbeat, a deposit, a heartbeat.
    let mut bytes = Vec::new();
    let hb = Request::Heartbeat(HeartbeatRequest { client_time_ms: 1 });
    for (id, req) in [(501, &hb), (502, &deposit(7)), (503, &hb)] {
        write_request(&mut bytes, id, req, proto::BODY_LEN_LIMIT).expect("encode");
    }
    h.send_bytes(amy, &bytes);
    let ids = |frames: Vec<Out>| frames.iter().map(|f| f.req_id).collect::<Vec<_>>();
    assert_eq!(
        ids(h.take(amy)),
        vec![501],
        "the first heartbeat goes; the deposit and what follows it wait"
    );
    // More output behind the held answer stays behind it.
    h.send_id(amy, 504, &hb);
    assert!(h.take(amy).is_empty());
    durable_to(&mut h, &seg, shm::journal::head(&seg));
    assert_eq!(
        ids(h.take(amy)),
        vec![502, 503, 504],
        "in order, once durable"
    );
}

// TLS alone: what only a TLS connection can get wrong.

/// A TLS harness and one connection opened on it, handshake not begun, with its client.
fn tls_pair<'s>(
    seg: &'s Segment,
    cfg: Config,
    pki: &Pki,
) -> (Harness<'s>, usize, rustls::ClientConnection) {
    let mut h = Harness::over(seg, cfg, Wire::Tls);
    // The server keeps the harness's PKI; the client under test trusts `pki`.
    let key = h.core.open().expect("accepted");
    (h, key, pki.client.connection().expect("client"))
}

/// The counters a TLS failure moves: (handshakes, errors, handshake timeouts).
fn tls_counters(h: &Harness<'_>) -> (u64, u64, u64) {
    let m = h.core.metrics();
    (
        m.tls_handshakes.get(),
        m.tls_errors.get(),
        m.tls_handshake_timeouts.get(),
    )
}

#[test]
fn tls_a_request_record_cut_at_every_byte_is_answered_once_whole() {
    let seg = segment();
    let mut h = Harness::over(&seg, config(), Wire::Tls);
    let mut frame = Vec::new();
    let hb = Request::Heartbeat(HeartbeatRequest { client_time_ms: 9 });
    write_request(&mut frame, 55, &hb, proto::BODY_LEN_LIMIT).expect("encode");
    // One connection per cut: each has its own keys, so each encrypts the frame itself.
    let c = h.connect();
    let record_len = h.seal(c, &frame).len();
    assert!(record_len > frame.len(), "one encrypted record");
    for cut in 1..record_len {
        let c = h.connect();
        let record = h.seal(c, &frame);
        h.core.on_bytes(c, &record[..cut]);
        assert!(
            h.take(c).is_empty(),
            "nothing before the record is whole (cut {cut})"
        );
        assert!(!h.closing(c), "a cut record is not an error (cut {cut})");
        h.core.on_bytes(c, &record[cut..]);
        let got: Vec<(u64, Status)> = h.take(c).iter().map(|f| (f.req_id, f.status)).collect();
        assert_eq!(got, vec![(55, Status::Ok)], "one answer (cut {cut})");
        h.core.remove(c);
    }
}

#[test]
fn tls_a_plaintext_client_or_garbage_is_closed_and_counted_and_a_neighbour_goes_on() {
    let seg = segment();
    let mut h = Harness::over(&seg, config(), Wire::Tls);
    let neighbour = h.user("nia");
    let mut hello = Vec::new();
    let req = Request::Hello(HelloRequest {
        client: Label::new("plain").expect("label"),
    });
    write_request(&mut hello, 1, &req, proto::BODY_LEN_LIMIT).expect("encode");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("an NS frame in the clear", hello),
        (
            "random bytes",
            (0..200u8).map(|i| i.wrapping_mul(37)).collect(),
        ),
        // A handshake record header with a body that is not a ClientHello.
        (
            "a garbage handshake",
            [&[0x16, 0x03, 0x01, 0x00, 0x08][..], &[0xEE; 8]].concat(),
        ),
        // A record that claims 65,535 bytes: refused on its header, nothing allocated for it.
        (
            "a record with a lying length",
            vec![0x17, 0x03, 0x03, 0xFF, 0xFF, 0, 0, 0],
        ),
    ];
    for (what, bytes) in cases {
        let before = tls_counters(&h);
        let c = h.core.open().expect("accepted");
        h.core.tick_clock();
        h.core.on_bytes(c, &bytes);
        let step = h.core.step(c).expect("open until the event loop closes it");
        assert!(step.closing, "{what}: closed");
        let out = h.raw_output(c);
        // Nothing in the clear: at most rustls's alert record (content type 21).
        assert!(
            out.is_empty() || out[0] == 0x15,
            "{what}: only a TLS alert goes out, got {:02x?}",
            &out[..out.len().min(8)]
        );
        assert!(
            frames_of_lenient(&out).is_empty(),
            "{what}: no NS frame in the clear"
        );
        let after = tls_counters(&h);
        assert_eq!(after.1, before.1 + 1, "{what}: counted as a TLS error");
        h.core.remove(c);
    }
    assert_eq!(h.balance(neighbour), 0, "the neighbour is served");
}

/// The req_id of an NS frame at the start of `bytes`, if one is there.
fn frames_of_lenient(bytes: &[u8]) -> Vec<u64> {
    let mut dec = FrameDecoder::new(proto::BODY_LEN_LIMIT);
    match dec.decode(bytes) {
        (_, Ok(Some(f))) => vec![f.header.req_id],
        _ => Vec::new(),
    }
}

#[test]
fn tls_a_handshake_that_never_finishes_is_closed_at_its_timeout() {
    let seg = segment();
    let pki = Pki::new(ns_tls::Validity::Days(2));
    let cfg = Config {
        tls_handshake_timeout_ms: 5_000,
        cluster_timeout_ms: 5_000,
        ..config()
    };
    let (mut h, c, mut client) = tls_pair(&seg, cfg, &pki);
    let hello = drain_tls(&mut client);
    // Half a ClientHello, then nothing more.
    h.core.tick_clock();
    h.core.on_bytes(c, &hello[..hello.len() / 2]);
    h.clock.advance(4_000);
    h.core.tick_clock();
    assert!(h.core.sweep().is_empty(), "not yet at 4 s");
    h.clock.advance(1_500);
    h.core.tick_clock();
    assert_eq!(h.core.sweep(), vec![c], "closed at 5.5 s");
    let step = h.core.step(c).expect("open");
    assert!(
        step.closing && step.abort,
        "closed without a word (a reset)"
    );
    assert_eq!(tls_counters(&h).2, 1, "counted as a handshake timeout");
    // A finished handshake is not timed: an idle TLS connection falls to the idle timeout.
    let d = h.connect();
    h.clock.advance(6_000);
    h.core.tick_clock();
    assert!(
        h.core.sweep().is_empty(),
        "a done handshake has no deadline"
    );
    assert!(!h.closing(d));
}

#[test]
fn tls_an_expired_or_untrusted_certificate_is_refused_by_the_client_and_counted() {
    let seg = segment();
    for (what, server_validity, trusted) in [
        ("expired", ns_tls::Validity::Expired, true),
        ("signed by another CA", ns_tls::Validity::Days(2), false),
    ] {
        let server_pki = Pki::new(server_validity);
        let client_pki = if trusted {
            None
        } else {
            Some(Pki::new(ns_tls::Validity::Days(2)))
        };
        let cfg = server_pki.serve(config());
        let clock = ManualClock::new(WALL_START_MS);
        let mut core = Core::new(cfg, &seg, None, Box::new(clock)).expect("core");
        let c = core.open().expect("accepted");
        let mut client = client_pki
            .as_ref()
            .unwrap_or(&server_pki)
            .client
            .connection()
            .expect("client");
        core.tick_clock();
        core.on_bytes(c, &drain_tls(&mut client));
        let mut flight = Vec::new();
        while let Some(buf) = core.take_output(c) {
            core.sent(c, buf.len());
            flight.extend_from_slice(&buf);
            core.recycle(c, buf);
        }
        let mut rd = &flight[..];
        let mut refused = None;
        while !rd.is_empty() && refused.is_none() {
            client.read_tls(&mut rd).expect("read_tls");
            refused = client.process_new_packets().err();
        }
        let e = refused.unwrap_or_else(|| panic!("{what}: the client must refuse"));
        assert!(
            matches!(e, rustls::Error::InvalidCertificate(_)),
            "{what}: refused for the certificate, got {e}"
        );
        // The client's alert reaches the server: closed and counted.
        let before = core.metrics().tls_errors.get();
        core.on_bytes(c, &drain_tls(&mut client));
        assert!(core.step(c).expect("open").closing, "{what}: closed");
        assert_eq!(core.metrics().tls_errors.get(), before + 1, "{what}");
        assert_eq!(
            core.metrics().tls_handshakes.get(),
            0,
            "{what}: no handshake done"
        );
        core.remove(c);
    }
}

#[test]
fn tls_close_notify_closes_both_ways() {
    let seg = segment();
    let mut h = Harness::over(&seg, config(), Wire::Tls);
    // The client's close_notify ends the connection like a FIN.
    let a = h.connect();
    let conn = h.client(a);
    conn.send_close_notify();
    let bytes = drain_tls(conn);
    h.core.on_bytes(a, &bytes);
    assert!(h.closing(a), "closed on the peer's close_notify");
    // A graceful stop: the notice, then the server's close_notify.
    let b = h.connect();
    h.core.begin_shutdown(std::time::Duration::from_secs(1));
    let out = h.raw_output(b);
    let conn = h.client(b);
    let plain = client_reads(conn, &out);
    let frames = frames_of(&plain);
    assert_eq!(notices(&frames), vec![notice::SHUTTING_DOWN]);
    assert!(
        conn.process_new_packets().expect("valid").peer_has_closed(),
        "the stop ends with our close_notify"
    );
    assert_eq!(tls_counters(&h).0, 2, "two handshakes done");
}
