//! The real server in tests, on bench-client's own client and launcher (one client
//! implementation in the workspace): the `uring-server` binary on a free port with its own
//! shared memory, and a thin layer that turns the client's errors into test failures and checks
//! what tests rely on (responses in request order, no frame cut short).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bench_client::server::{Launch, SpawnedServer};
use bench_client::{ClientError, Received};
use proto::body::*;
use proto::codec::Name;
use proto::scram::ClientSecret;
use proto::{write_request, Field, Push, Reply, Request, Response, Status, BODY_LEN_LIMIT};

pub use crate::unique_name;

/// Both backends, for tests that must pass on each.
pub const BACKENDS: [&str; 2] = ["uring", "epoll"];

/// The server binary cargo built beside the test (target/<profile>/uring-server, which cargo
/// builds for the server's own tests and for `cargo test --workspace`).
pub fn exe() -> std::path::PathBuf {
    bench_client::server::locate().expect("the uring-server binary (cargo build)")
}

/// A running server, stopped (and its shared memory removed) on drop.
pub struct Server {
    pub inner: SpawnedServer,
    pub addr: SocketAddr,
    pub name: String,
    pub backend: String,
    /// TLS: the test PKI the server runs with and the clients' configuration (trusting its CA).
    pub tls: Option<Tls>,
}

/// A TLS server's test PKI (removed with the server) and a client that trusts its CA.
pub use bench_client::server::TestPki as Tls;

/// Plaintext and TLS, for tests that must pass over each.
pub const TRANSPORTS: [Transport; 2] = [Transport::Plain, Transport::Tls];

/// Every backend over every transport: the wire tests' core cases run on each.
pub fn backends_and_transports() -> impl Iterator<Item = (&'static str, Transport)> {
    BACKENDS
        .into_iter()
        .flat_map(|b| TRANSPORTS.into_iter().map(move |t| (b, t)))
}

/// How a test's clients reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Plain,
    Tls,
}

impl Server {
    /// Starts `uring-server` with `--port 0`, a unique `--name`, and `extra` arguments.
    pub fn start(tag: &str, extra: &[&str]) -> Server {
        let launch = Launch {
            inherit_stderr: std::env::var_os("NS_TEST_LOG").is_some(),
            ..Launch::default()
        };
        Self::start_with(tag, extra, &launch)
    }

    /// [`Server::start`] with its log kept (for [`Server::stop_and_stderr`]) and `env` set.
    pub fn start_logged(tag: &str, extra: &[&str], env: &[(&str, &str)]) -> Server {
        Self::start_named_logged(&unique_name(tag), extra, env)
    }

    /// [`Server::start_logged`] under a given `--name` (a restart over a stale segment).
    pub fn start_named_logged(name: &str, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let launch = Launch {
            capture_stderr: true,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Launch::default()
        };
        Self::start_named(name.to_string(), extra, &launch)
    }

    fn start_with(tag: &str, extra: &[&str], launch: &Launch) -> Server {
        Self::start_named(unique_name(tag), extra, launch)
    }

    /// [`Server::start`] over `transport`: with TLS, a fresh test PKI, `--tls-cert`/`--tls-key`
    /// given, and every [`Server::client`] speaking TLS and verifying the certificate.
    pub fn start_over(transport: Transport, tag: &str, extra: &[&str]) -> Server {
        if transport == Transport::Plain {
            return Self::start(tag, extra);
        }
        let tls = Tls::new().expect("a test PKI");
        let tls_args = tls.server_args();
        let mut args: Vec<&str> = extra.to_vec();
        args.extend(tls_args.iter().map(String::as_str));
        let mut s = Self::start(tag, &args);
        s.tls = Some(tls);
        s
    }

    fn start_named(name: String, extra: &[&str], launch: &Launch) -> Server {
        let mut args = vec![
            "--max-users",
            "4096",
            "--txn-log",
            "65536",
            "--max-rooms",
            "64",
            "--members-per-room",
            "256",
        ];
        args.extend_from_slice(extra);
        let inner =
            SpawnedServer::start_with(&exe(), &name, &args, launch).expect("start uring-server");
        // A test that asks for a backend runs on it: no silent fallback to the other one.
        let asked = extra.windows(2).find(|w| w[0] == "--io").map(|w| w[1]);
        match asked {
            Some("uring") => assert_eq!(inner.backend, "io_uring", "asked for io_uring"),
            Some("epoll") => assert_eq!(inner.backend, "epoll", "asked for epoll"),
            _ => {}
        }
        Server {
            addr: inner.addr,
            backend: inner.backend.clone(),
            name,
            inner,
            tls: None,
        }
    }

    /// SIGTERM, wait, and return what the server wrote to stderr (it must have been kept).
    pub fn stop_and_stderr(&mut self) -> String {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let _ = self.wait_exit(Duration::from_secs(10));
        self.inner.take_stderr()
    }

    /// Connects a client.
    pub fn client(&self) -> Client {
        Client::connect_with(self.addr, self.tls.as_ref().map(|t| &t.client))
    }

    /// Runs a tool subcommand against this server; returns (exit code, stdout).
    pub fn tool(&self, args: &[&str]) -> (i32, String) {
        let out = std::process::Command::new(exe())
            .args(["--name", &self.name])
            .args(args)
            .output()
            .expect("run tool");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// `uring-server stats --format json`, parsed.
    pub fn stats_json(&self) -> serde_json::Value {
        let (code, out) = self.tool(&["stats", "--format", "json"]);
        assert_eq!(code, 0, "stats: {out}");
        serde_json::from_str(&out).expect("stats --format json is JSON")
    }

    /// Sends `sig` to the master.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        self.inner.signal(sig).expect("signal the master");
    }

    /// Waits up to `limit` for the master to exit; its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        self.inner.wait_exit(limit)
    }

    /// SIGKILL to the master (its workers die with it), reaped.
    pub fn kill_master(&mut self) {
        self.inner.kill();
    }

    /// The master's pid.
    pub fn master_pid(&self) -> u32 {
        self.inner.pid()
    }

    /// The shared-memory file.
    pub fn shm_path(&self) -> String {
        format!("/dev/shm/ns-{}", self.name)
    }

    /// Worker pids by index, once every worker has published its own (a 0 passed to kill(2)
    /// would signal the whole process group, the test harness included).
    pub fn worker_pids(&self) -> Vec<u32> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(stats) = bench_client::server::server_stats(&self.name) {
                let running = stats.running_workers();
                if !running.is_empty() && running.len() == stats.workers.len() {
                    return running.into_iter().map(|w| w.1).collect();
                }
            }
            assert!(Instant::now() < deadline, "workers never published pids");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // The launcher stops the server (SIGTERM, then SIGKILL); a test that killed the master
        // leaves the segment: remove it.
        let _ = std::fs::remove_file(self.shm_path());
    }
}

/// One test password for every user: derived once (PBKDF2 is deliberately slow).
pub const PASSWORD: &str = "correct horse";
pub const SALT: [u8; 16] = [0x5A; 16];

pub fn secret() -> &'static ClientSecret {
    static S: std::sync::OnceLock<ClientSecret> = std::sync::OnceLock::new();
    S.get_or_init(|| ClientSecret::derive(PASSWORD.as_bytes(), &SALT, proto::scram::ITERATIONS_MIN))
}

/// A received frame, with accessors that fail the test on what a test never expects.
#[derive(Debug, Clone)]
pub struct Got(pub Received);

impl Got {
    pub fn status(&self) -> Status {
        Status::from_u16(self.0.raw.status).expect("known status")
    }

    pub fn opcode(&self) -> Option<proto::Opcode> {
        proto::Opcode::from_u16(self.0.raw.opcode)
    }

    pub fn req_id(&self) -> u64 {
        self.0.raw.req_id
    }

    pub fn is_response(&self) -> bool {
        self.0.is_response()
    }

    pub fn reply(&self) -> Reply<'_> {
        if self.opcode().is_none() {
            assert_ne!(
                self.status(),
                Status::Ok,
                "OK response with an unknown opcode"
            );
        }
        self.0.reply().expect("reply body")
    }

    pub fn push(&self) -> Push<'_> {
        self.0.push().expect("push body")
    }
}

/// bench-client's blocking client, with test-failing errors and small, predictable req_ids.
pub struct Client {
    inner: bench_client::Client,
    /// Pushes read while waiting for responses.
    pub pushes: Vec<Got>,
    pub user_id: u32,
    /// The high-water mark the last login reported.
    pub req_id_hw: u64,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        Self::connect_with(addr, None)
    }

    /// [`Client::connect`], over TLS when `tls` is given.
    pub fn connect_with(addr: SocketAddr, tls: Option<&bench_client::ClientTls>) -> Client {
        let mut inner = bench_client::Client::connect_with(addr, Duration::from_secs(10), tls)
            .expect("connect");
        // Tests write req_ids by hand: start every connection's count at 1.
        inner.set_next_req_id(1);
        Client {
            inner,
            pushes: Vec::new(),
            user_id: 0,
            req_id_hw: 0,
        }
    }

    /// The stream itself (plaintext or TLS; `.tcp()` is the socket).
    pub fn stream(&mut self) -> &mut bench_client::Stream {
        self.inner.stream()
    }

    pub fn next_req_id(&mut self) -> u64 {
        self.inner.next_req_id()
    }

    /// The last request id handed out.
    pub fn next_id_peek(&self) -> u64 {
        self.inner.last_req_id()
    }

    /// Makes later request ids rise above `id` (after sending `id` by hand).
    pub fn next_id_at_least(&mut self, id: u64) {
        self.inner.skip_req_ids_to(id);
    }

    /// Encodes a request with `req_id`.
    pub fn frame(req_id: u64, req: &Request<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        write_request(&mut out, req_id, req, BODY_LEN_LIMIT).expect("encode");
        out
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.inner.send_raw(bytes).expect("send");
    }

    /// Reads the next frame (response or push); `None` at EOF or reset. Fails the test on a
    /// bad frame, a close in the middle of one, or a read that times out (10 s).
    pub fn read_frame(&mut self) -> Option<Got> {
        match self.inner.read() {
            Ok(r) => Some(Got(r)),
            Err(ClientError::Closed) => None,
            Err(ClientError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => None,
            Err(ClientError::ClosedMidFrame) => panic!("connection closed mid-frame"),
            Err(e) => panic!("read: {e}"),
        }
    }

    /// [`Client::read_frame`], but `None` when nothing whole arrives within `limit` (the
    /// decoder keeps what it has for the next read).
    pub fn read_frame_within(&mut self, limit: Duration) -> Option<Got> {
        self.stream()
            .tcp()
            .set_read_timeout(Some(limit))
            .expect("timeout");
        let got = match self.inner.read() {
            Ok(r) => Some(Got(r)),
            Err(ClientError::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("read: {e}"),
        };
        self.stream()
            .tcp()
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        got
    }

    /// Reads until the response to `req_id`, keeping pushes aside.
    pub fn response(&mut self, req_id: u64) -> Got {
        loop {
            let g = self.next().expect("connection closed before the response");
            if g.is_response() {
                assert_eq!(g.req_id(), req_id, "responses come in request order");
                return g;
            }
            self.pushes.push(g);
        }
    }

    /// The next frame.
    #[allow(clippy::should_implement_trait)] // A blocking read that fails the test, not an iterator.
    pub fn next(&mut self) -> Option<Got> {
        self.read_frame()
    }

    /// Sends a request and waits for its response.
    pub fn call(&mut self, req: &Request<'_>) -> Got {
        let id = self.next_req_id();
        self.call_with_id(id, req)
    }

    pub fn call_with_id(&mut self, id: u64, req: &Request<'_>) -> Got {
        let bytes = Self::frame(id, req);
        self.send_raw(&bytes);
        self.response(id)
    }

    /// Expects status `st` and returns the response.
    pub fn expect(&mut self, req: &Request<'_>, st: Status) -> Got {
        let g = self.call(req);
        assert_eq!(g.status(), st, "{:?} got {:?}", req.opcode(), g.reply());
        g
    }

    fn status_of<T>(r: Result<T, ClientError>) -> Status {
        match r {
            Ok(_) => Status::Ok,
            Err(ClientError::Refused(st, _)) => st,
            Err(e) => panic!("{e}"),
        }
    }

    fn keep_pushes(&mut self) {
        while let Some(p) = self.inner.pushes.pop_front() {
            self.pushes.push(Got(p));
        }
    }

    pub fn register(&mut self, user: &str) -> Status {
        let r = self.inner.register_secret(user, &SALT, secret());
        self.keep_pushes();
        Self::status_of(r)
    }

    /// SCRAM login with `secret` (the library checks the server's signature); the status.
    pub fn login_with(&mut self, user: &str, secret: &ClientSecret) -> Status {
        let r = self.inner.login_secret(user, secret.clone());
        self.keep_pushes();
        if let Ok(id) = r {
            self.user_id = id;
            self.req_id_hw = self.inner.req_id_hw;
        }
        Self::status_of(r)
    }

    /// Registers (if needed) and logs in with the test password.
    pub fn join_as(&mut self, user: &str) {
        let st = self.register(user);
        assert!(
            st == Status::Ok || st == Status::ErrAlreadyExists,
            "register {user}: {st:?}"
        );
        assert_eq!(self.login_with(user, secret()), Status::Ok, "login {user}");
    }

    /// The worker serving this connection (from HELLO).
    pub fn worker(&mut self) -> u16 {
        let w = self.inner.hello("it").expect("HELLO").worker_id;
        self.keep_pushes();
        w
    }

    /// A ledger call's (balance, txn_id), or its error status.
    pub fn ledger(&mut self, req: &Request<'_>) -> Result<(u64, u64), Status> {
        let id = self.next_req_id();
        self.ledger_with_id(id, req)
    }

    pub fn ledger_with_id(&mut self, id: u64, req: &Request<'_>) -> Result<(u64, u64), Status> {
        match self.call_with_id(id, req).reply() {
            Reply::Ok(Response::Deposit(r) | Response::Withdraw(r) | Response::Transfer(r)) => {
                Ok((r.balance, r.txn_id))
            }
            Reply::Err(st, _) => Err(st),
            other => panic!("{other:?}"),
        }
    }

    pub fn balance(&mut self) -> u64 {
        match self.call(&Request::Balance(Empty {})).reply() {
            Reply::Ok(Response::Balance(b)) => b.balance,
            other => panic!("{other:?}"),
        }
    }
}

pub fn deposit(amount: u64) -> Request<'static> {
    Request::Deposit(AmountRequest { amount })
}

pub fn withdraw(amount: u64) -> Request<'static> {
    Request::Withdraw(AmountRequest { amount })
}

pub fn transfer_to(name: &str, amount: u64) -> Request<'_> {
    Request::Transfer(TransferRequest {
        to: Target::Name(Name::new(name).expect("name")),
        amount,
    })
}

pub fn transfer_id(id: u32, amount: u64) -> Request<'static> {
    Request::Transfer(TransferRequest {
        to: Target::Id(id),
        amount,
    })
}

/// Bytes of an encoded body, for hand-made frames.
pub fn body_bytes<'a, T: Field<'a>>(b: &T) -> Vec<u8> {
    b.to_vec()
}

/// JOIN_ROOM; the room's id.
pub fn join(c: &mut Client, room: &str) -> u32 {
    match c
        .call(&Request::JoinRoom(JoinRoomRequest {
            room: Name::new(room).expect("name"),
        }))
        .reply()
    {
        Reply::Ok(Response::JoinRoom(j)) => j.room_id,
        other => panic!("{other:?}"),
    }
}

/// Members of room `name` now (0 if it is not listed), by LIST_ROOMS.
pub fn room_members(c: &mut Client, name: &str) -> u32 {
    match c
        .call(&Request::ListRooms(PageRequest {
            after_id: 0,
            limit: 100,
        }))
        .reply()
    {
        Reply::Ok(Response::ListRooms(l)) => l
            .rooms
            .items()
            .iter()
            .find(|r| r.name.as_str() == name)
            .map_or(0, |r| r.members),
        other => panic!("{other:?}"),
    }
}

/// Users online now, by LIST_USERS.
pub fn online_users(c: &mut Client) -> usize {
    match c
        .call(&Request::ListUsers(PageRequest {
            after_id: 0,
            limit: 100,
        }))
        .reply()
    {
        Reply::Ok(Response::ListUsers(l)) => l.users.items().len(),
        other => panic!("{other:?}"),
    }
}

/// The caller's transactions, newest first: (txn_id, kind, amount).
pub fn history(c: &mut Client) -> Vec<(u64, TxnKind, u64)> {
    let g = c.call(&Request::TxnHistory(TxnHistoryRequest {
        before_txn_id: 0,
        limit: 1000,
    }));
    match g.reply() {
        Reply::Ok(Response::TxnHistory(h)) => h
            .txns
            .items()
            .iter()
            .map(|t| (t.txn_id, t.kind, t.amount))
            .collect(),
        other => panic!("{other:?}"),
    }
}
