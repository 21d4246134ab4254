//! Test support: start the real server binary on a free port with its own shared memory, and a
//! blocking protocol client.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use proto::body::*;
use proto::codec::Name;
use proto::scram::{auth_message, ClientSecret};
use proto::{
    write_request, Field, Frame, FrameDecoder, Push, RawHeader, Reply, Request, Response, Status,
    BODY_LEN_LIMIT,
};

/// A unique instance name for this test.
pub fn unique_name(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "it-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Both backends, for tests that must pass on each.
pub const BACKENDS: [&str; 2] = ["uring", "epoll"];

/// A running server, stopped (and its shared memory removed) on drop.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub name: String,
    pub backend: String,
}

impl Server {
    /// Starts `uring-server` with `--port 0`, a unique `--name`, and `extra` arguments.
    pub fn start(tag: &str, extra: &[&str]) -> Server {
        let name = unique_name(tag);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_uring-server"));
        cmd.args(["--port", "0", "--name", &name, "--max-users", "4096"])
            .args([
                "--txn-log",
                "65536",
                "--max-rooms",
                "64",
                "--members-per-room",
                "256",
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(if std::env::var_os("NS_TEST_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            });
        let mut child = cmd.spawn().expect("start uring-server");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the listening line");
        let words: Vec<&str> = line.split_whitespace().collect();
        assert!(
            words.len() >= 4 && words[0] == "listening",
            "unexpected first line {line:?}"
        );
        let addr: SocketAddr = words[2].parse().expect("address");
        let backend = words[4].to_string();
        // A test that asks for a backend runs on it: no silent fallback to the other one.
        let asked = extra.windows(2).find(|w| w[0] == "--io").map(|w| w[1]);
        match asked {
            Some("uring") => assert_eq!(backend, "io_uring", "asked for io_uring: {line}"),
            Some("epoll") => assert_eq!(backend, "epoll", "asked for epoll: {line}"),
            _ => {}
        }
        Server {
            child,
            addr,
            name,
            backend,
        }
    }

    /// Takes over a server child started by hand with `--port 0` and piped stdout and stderr.
    pub fn adopt(mut child: Child, name: String) -> Server {
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the listening line");
        let words: Vec<&str> = line.split_whitespace().collect();
        assert!(words.len() >= 5, "unexpected first line {line:?}");
        Server {
            addr: words[2].parse().expect("address"),
            backend: words[4].to_string(),
            child,
            name,
        }
    }

    /// SIGTERM, wait, and return what the server wrote to stderr (it must have been piped).
    pub fn stop_and_stderr(&mut self) -> String {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let _ = self.wait_exit(Duration::from_secs(10));
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        err
    }

    /// Connects a client.
    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    /// Runs a tool subcommand against this server; returns (exit code, stdout).
    pub fn tool(&self, args: &[&str]) -> (i32, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_uring-server"))
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
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig)
            .expect("signal the master");
    }

    /// Waits up to `limit` for the master to exit; its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// The shared-memory file.
    pub fn shm_path(&self) -> String {
        format!("/dev/shm/ns-{}", self.name)
    }

    /// Worker pids by index, read from the shared metrics, once every worker has published
    /// its own (a worker writes its pid as it starts; a 0 passed to kill(2) would signal the
    /// whole process group, the test harness included).
    pub fn worker_pids(&self) -> Vec<u32> {
        let seg = shm::Segment::attach(&self.name, false).expect("attach");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // The segment has one slot more than the server has workers (for tools).
            let workers = seg.caps().workers as usize - 1;
            let pids: Vec<u32> = shm::Metrics::of(&seg)
                .workers()
                .iter()
                .take(workers)
                .map(|w| w.pid.get() as u32)
                .collect();
            if pids.iter().all(|&p| p > 1) {
                return pids;
            }
            assert!(Instant::now() < deadline, "workers never published pids");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal(nix::sys::signal::Signal::SIGTERM);
            if self.wait_exit(Duration::from_secs(10)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        // A test that killed the master leaves the segment; remove it.
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

/// An owned copy of a received frame. Kept raw: an error response may carry an opcode this
/// client does not know (the echo of an unknown one, or 0 for a frame the server could not read).
#[derive(Debug, Clone)]
pub struct Got {
    pub raw: RawHeader,
    pub body: Vec<u8>,
}

impl Got {
    pub fn status(&self) -> Status {
        Status::from_u16(self.raw.status).expect("known status")
    }

    pub fn opcode(&self) -> Option<proto::Opcode> {
        proto::Opcode::from_u16(self.raw.opcode)
    }

    pub fn req_id(&self) -> u64 {
        self.raw.req_id
    }

    pub fn is_response(&self) -> bool {
        self.raw.flags & proto::Flags::IS_RESPONSE != 0
    }

    pub fn reply(&self) -> Reply<'_> {
        match self.opcode() {
            Some(op) => Reply::decode(op, self.status(), &self.body).expect("reply body"),
            None => {
                assert_ne!(
                    self.status(),
                    Status::Ok,
                    "OK response with an unknown opcode"
                );
                Reply::Err(
                    self.status(),
                    ErrorBody {
                        message: Message::new("").expect("empty"),
                    },
                )
            }
        }
    }

    pub fn push(&self) -> Push<'_> {
        Push::decode(self.opcode().expect("push opcode"), &self.body).expect("push body")
    }
}

/// A blocking client.
pub struct Client {
    pub stream: TcpStream,
    dec: FrameDecoder,
    next_id: u64,
    /// The high-water mark the last login reported.
    pub req_id_hw: u64,
    pub pushes: Vec<Got>,
    pub user_id: u32,
    /// Frames read from the socket but not yet handed out.
    pending: std::collections::VecDeque<Got>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        Client {
            stream,
            dec: FrameDecoder::new(BODY_LEN_LIMIT),
            next_id: 1,
            req_id_hw: 0,
            pushes: Vec::new(),
            user_id: 0,
            pending: std::collections::VecDeque::new(),
        }
    }

    pub fn next_req_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// The last request id handed out.
    pub fn next_id_peek(&self) -> u64 {
        self.next_id
    }

    /// Makes later request ids rise above `id` (after sending `id` by hand).
    pub fn next_id_at_least(&mut self, id: u64) {
        self.next_id = self.next_id.max(id);
    }

    /// Encodes a request with `req_id`.
    pub fn frame(req_id: u64, req: &Request<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        write_request(&mut out, req_id, req, BODY_LEN_LIMIT).expect("encode");
        out
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// Reads the next frame (response or push); `None` at EOF. Panics on a bad frame, and on a
    /// close in the middle of one.
    pub fn read_frame(&mut self) -> Option<Got> {
        let mut buf = [0u8; 4096];
        while self.pending.is_empty() {
            let n = match self.stream.read(&mut buf) {
                Ok(0) => {
                    assert!(self.dec.is_idle(), "connection closed mid-frame");
                    return None;
                }
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read: {e}"),
            };
            let mut input = &buf[..n];
            while !input.is_empty() {
                let (used, res) = self.dec.decode(input);
                input = &input[used..];
                match res {
                    Ok(Some(f)) => {
                        let g = owned(&f);
                        self.pending.push_back(g);
                    }
                    Ok(None) => {}
                    // An error response echoing an opcode we do not know: keep its header.
                    Err(proto::DecodeError::UnknownOpcode { header })
                        if header.flags & proto::Flags::IS_RESPONSE != 0 && header.status != 0 =>
                    {
                        self.pending.push_back(Got {
                            raw: header,
                            body: Vec::new(),
                        });
                    }
                    Err(e) => panic!("server sent a bad frame: {e}"),
                }
            }
        }
        self.pending.pop_front()
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

    /// The next frame, from the queue or the socket.
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

    pub fn register(&mut self, user: &str) -> Status {
        let stored = secret().stored();
        self.call(&Request::Register(RegisterRequest {
            username: Name::new(user).expect("name"),
            salt: Salt::new(&SALT).expect("salt"),
            iterations: proto::scram::ITERATIONS_MIN,
            stored_key: stored.stored_key,
            server_key: stored.server_key,
        }))
        .status()
    }

    /// SCRAM login with `secret`; returns the LOGIN_PROOF response's status.
    pub fn login_with(&mut self, user: &str, secret: &ClientSecret) -> Status {
        let client_nonce = [0x42u8; 16];
        let g = self.call(&Request::Login(LoginRequest {
            username: Name::new(user).expect("name"),
            client_nonce: Nonce::new(&client_nonce).expect("nonce"),
        }));
        let (salt, iterations, server_nonce) = match g.reply() {
            Reply::Ok(Response::Login(l)) => (
                l.salt.as_bytes().to_vec(),
                l.iterations,
                l.server_nonce.as_bytes().to_vec(),
            ),
            Reply::Err(st, _) => return st,
            other => panic!("{other:?}"),
        };
        let am = auth_message(user, &client_nonce, &server_nonce, &salt, iterations);
        let g = self.call(&Request::LoginProof(LoginProofRequest {
            client_proof: secret.proof(&am),
        }));
        match g.reply() {
            Reply::Ok(Response::LoginProof(p)) => {
                assert!(
                    secret.verify_server(&am, &p.server_signature),
                    "server signature does not verify"
                );
                self.user_id = p.user_id;
                // PROTOCOL.md 8.4, rule 1: continue above the user's high-water mark.
                self.next_id = self.next_id.max(p.req_id_hw);
                self.req_id_hw = p.req_id_hw;
                Status::Ok
            }
            Reply::Err(st, _) => st,
            other => panic!("{other:?}"),
        }
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
        match self
            .call(&Request::Hello(HelloRequest {
                client: Label::new("it").expect("label"),
            }))
            .reply()
        {
            Reply::Ok(Response::Hello(h)) => h.worker_id,
            other => panic!("{other:?}"),
        }
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

fn owned(f: &Frame<'_>) -> Got {
    let h = f.header;
    Got {
        raw: RawHeader::new(
            h.flags,
            h.opcode.as_u16(),
            h.status.as_u16(),
            h.req_id,
            h.body_len,
        ),
        body: f.body.to_vec(),
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
