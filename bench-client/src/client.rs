//! A blocking client: connect, log in, one typed call per operation with responses matched by
//! `req_id`, pushes kept aside, timeouts, and retries that reuse the `req_id` (so a retried
//! ledger request is never applied twice) with exponential backoff, jitter and reconnection.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use crate::transport::{ClientTls, Stream};
use std::time::Duration;

use proto::body::*;
use proto::codec::Name;
use proto::scram::{auth_message, ClientSecret};
use proto::{
    write_request, DecodeError, Flags, FrameDecoder, Opcode, Push, RawHeader, Reply, Request,
    Response, Status, BODY_LEN_LIMIT,
};

/// Why a call failed without an answer from the server.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClientError {
    /// Connecting, reading or writing failed, or timed out.
    Io(std::io::Error),
    /// The server closed the connection.
    Closed,
    /// The server sent bytes that are not a valid frame.
    Protocol(DecodeError),
    /// A response body did not decode.
    Body(proto::BodyError),
    /// The server refused the request: its status and message.
    Refused(Status, String),
    /// The server's login signature did not verify: not the server we registered with.
    BadServerSignature,
    /// The server closed the connection in the middle of a frame.
    ClosedMidFrame,
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Io(e) => write!(f, "i/o: {e}"),
            ClientError::Closed => f.write_str("the server closed the connection"),
            ClientError::Protocol(e) => write!(f, "bad frame from the server: {e}"),
            ClientError::Body(e) => write!(f, "bad body from the server: {e}"),
            ClientError::Refused(st, msg) => write!(f, "{}: {msg}", st.name()),
            ClientError::BadServerSignature => {
                f.write_str("the server's login signature does not verify")
            }
            ClientError::ClosedMidFrame => {
                f.write_str("the server closed in the middle of a frame")
            }
        }
    }
}

impl std::error::Error for ClientError {}

impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        ClientError::Io(e)
    }
}

/// A received frame, owned. Raw header fields, because an error response may carry an opcode
/// this client does not know (see PROTOCOL.md §4).
#[derive(Debug, Clone)]
pub struct Received {
    /// The header as sent.
    pub raw: RawHeader,
    /// The body.
    pub body: Vec<u8>,
}

impl Received {
    /// The status (unknown numbers read as ERR_INTERNAL).
    pub fn status(&self) -> Status {
        Status::from_u16(self.raw.status).unwrap_or(Status::ErrInternal)
    }

    /// True for a response, false for a push.
    pub fn is_response(&self) -> bool {
        self.raw.flags & Flags::IS_RESPONSE != 0
    }

    /// The body as a response (OK body or error message).
    pub fn reply(&self) -> Result<Reply<'_>, ClientError> {
        match Opcode::from_u16(self.raw.opcode) {
            Some(op) => Reply::decode(op, self.status(), &self.body).map_err(ClientError::Body),
            None => Ok(Reply::Err(
                self.status(),
                ErrorBody {
                    message: Message::new("").map_err(ClientError::Body)?,
                },
            )),
        }
    }

    /// The body as a push.
    pub fn push(&self) -> Result<Push<'_>, ClientError> {
        let op = Opcode::from_u16(self.raw.opcode).ok_or(ClientError::Protocol(
            DecodeError::UnknownOpcode { header: self.raw },
        ))?;
        Push::decode(op, &self.body).map_err(ClientError::Body)
    }
}

/// Retry policy for [`Client::call_retrying`].
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Attempts in all.
    pub attempts: u32,
    /// First backoff; doubled each attempt, with up to 50% random jitter added.
    pub backoff: Duration,
    /// Longest backoff.
    pub backoff_max: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 5,
            backoff: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
        }
    }
}

/// A connection to the server, logged in or not.
#[derive(Debug)]
pub struct Client {
    addr: SocketAddr,
    stream: Stream,
    /// TLS for this connection and every reconnect, or plaintext.
    tls: Option<ClientTls>,
    decoder: FrameDecoder,
    pending: VecDeque<Received>,
    /// Pushes that arrived while waiting for responses.
    pub pushes: VecDeque<Received>,
    next_req_id: u64,
    timeout: Duration,
    login: Option<(String, ClientSecret)>,
    /// The logged-in user's id.
    pub user_id: u32,
    /// The worker serving this connection (from HELLO).
    pub worker: Option<u16>,
    /// How far below the server's high-water mark it keeps ledger outcomes (from LOGIN_PROOF).
    pub req_id_window: u32,
    /// The user's req_id high-water mark the last login reported (PROTOCOL.md 8.4).
    pub req_id_hw: u64,
}

impl Client {
    /// Connects with `timeout` for connecting, reading and writing.
    pub fn connect(addr: SocketAddr, timeout: Duration) -> Result<Client, ClientError> {
        Self::connect_with(addr, timeout, None)
    }

    /// [`Client::connect`], over TLS when `tls` is given (the handshake is done before this
    /// returns; a refused certificate fails it).
    pub fn connect_with(
        addr: SocketAddr,
        timeout: Duration,
        tls: Option<&ClientTls>,
    ) -> Result<Client, ClientError> {
        let stream = Self::open(addr, timeout, tls)?;
        // Start request ids from the clock, so they rise across reconnects and runs even before
        // a login tells the server's high-water mark (PROTOCOL.md 8.4, rule 1).
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Ok(Client {
            addr,
            stream,
            tls: tls.cloned(),
            decoder: FrameDecoder::new(BODY_LEN_LIMIT),
            pending: VecDeque::new(),
            pushes: VecDeque::new(),
            next_req_id: now,
            timeout,
            login: None,
            user_id: 0,
            worker: None,
            req_id_window: 0,
            req_id_hw: 0,
        })
    }

    fn open(
        addr: SocketAddr,
        timeout: Duration,
        tls: Option<&ClientTls>,
    ) -> Result<Stream, ClientError> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        // With nothing listening on a port in the ephemeral range, a loopback connect can be
        // given that very port as its own and connect to itself (TCP simultaneous open): it
        // then holds the port the server wants back. Refused like a connection refused.
        if stream.local_addr()? == addr {
            return Err(ClientError::Io(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "connected to itself: nothing listens there",
            )));
        }
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(match tls {
            Some(tls) => Stream::tls(stream, tls)?,
            None => Stream::Plain(stream),
        })
    }

    /// The stream, for event loops that take the connection over after login.
    pub fn into_stream(self) -> Stream {
        self.stream
    }

    /// A fresh request id: above every one this client used, and above the user's high-water
    /// mark the last login reported.
    pub fn next_req_id(&mut self) -> u64 {
        self.next_req_id = self.next_req_id.wrapping_add(1);
        self.next_req_id
    }

    /// The last request id handed out, for an event loop that takes the connection over and
    /// continues the count.
    pub fn last_req_id(&self) -> u64 {
        self.next_req_id
    }

    /// Restarts the request-id count at `id`: for tests that write small, predictable ids by
    /// hand. A real client must never go back below what it used (PROTOCOL.md 8.4).
    pub fn set_next_req_id(&mut self, id: u64) {
        self.next_req_id = id;
    }

    /// Makes later request ids rise above `id` (after sending `id` by hand).
    pub fn skip_req_ids_to(&mut self, id: u64) {
        self.next_req_id = self.next_req_id.max(id);
    }

    /// Writes `bytes` as they are: for tests that send what a well-behaved client never would.
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.stream.write_all(bytes)?;
        Ok(())
    }

    /// The socket itself (half-closes, timeouts, raw writes in tests).
    pub fn stream(&mut self) -> &mut Stream {
        &mut self.stream
    }

    /// Reads the next frame.
    pub fn read(&mut self) -> Result<Received, ClientError> {
        let mut buf = [0u8; 8192];
        while self.pending.is_empty() {
            let n = self.stream.read(&mut buf)?;
            if n == 0 {
                return Err(if self.decoder.is_idle() {
                    ClientError::Closed
                } else {
                    ClientError::ClosedMidFrame
                });
            }
            let mut input = &buf[..n];
            while !input.is_empty() {
                let (used, res) = self.decoder.decode(input);
                input = &input[used..];
                match res {
                    Ok(Some(f)) => {
                        let h = f.header;
                        self.pending.push_back(Received {
                            raw: RawHeader::new(
                                h.flags,
                                h.opcode.as_u16(),
                                h.status.as_u16(),
                                h.req_id,
                                h.body_len,
                            ),
                            body: f.body.to_vec(),
                        });
                    }
                    Ok(None) => {}
                    Err(DecodeError::UnknownOpcode { header })
                        if header.flags & Flags::IS_RESPONSE != 0 && header.status != 0 =>
                    {
                        self.pending.push_back(Received {
                            raw: header,
                            body: Vec::new(),
                        });
                    }
                    Err(e) => return Err(ClientError::Protocol(e)),
                }
            }
        }
        self.pending.pop_front().ok_or(ClientError::Closed)
    }

    /// The next push: one kept aside, or the next frame read.
    pub fn next_push(&mut self) -> Result<Received, ClientError> {
        if let Some(p) = self.pushes.pop_front() {
            return Ok(p);
        }
        loop {
            let r = self.read()?;
            if !r.is_response() {
                return Ok(r);
            }
        }
    }

    /// Sends `req` with `req_id` without waiting for the response.
    pub fn send_with_id(&mut self, req_id: u64, req: &Request<'_>) -> Result<(), ClientError> {
        let mut out = Vec::with_capacity(64);
        write_request(&mut out, req_id, req, BODY_LEN_LIMIT).map_err(|e| {
            ClientError::Io(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
        })?;
        self.stream.write_all(&out)?;
        Ok(())
    }

    /// Sends `req` with `req_id` and waits for its response (pushes are kept aside).
    pub fn call_with_id(
        &mut self,
        req_id: u64,
        req: &Request<'_>,
    ) -> Result<Received, ClientError> {
        self.send_with_id(req_id, req)?;
        loop {
            let r = self.read()?;
            if r.is_response() && r.raw.req_id == req_id {
                return Ok(r);
            }
            if !r.is_response() {
                self.pushes.push_back(r);
            }
            // A response to an earlier request (after a timeout) is dropped.
        }
    }

    /// Sends `req` and waits for its response.
    pub fn call(&mut self, req: &Request<'_>) -> Result<Received, ClientError> {
        let id = self.next_req_id();
        self.call_with_id(id, req)
    }

    /// Like [`Client::call`], and an error status becomes `Err(Refused)`.
    pub fn call_ok(&mut self, req: &Request<'_>) -> Result<Received, ClientError> {
        let r = self.call(req)?;
        refused(r)
    }

    /// Sends `req`, and on a timeout, a lost connection, or an answer that says it was not
    /// executed (`ERR_SERVER_BUSY`, `ERR_TIMEOUT`, `ERR_UNAUTHORIZED` or
    /// `ERR_SESSION_SUPERSEDED` after a login) reconnects, logs in again and resends it
    /// with the same `req_id`, backing off exponentially with jitter: PROTOCOL.md 8.4's rule 2.
    /// The server answers a repeated ledger request with its first outcome, so it is executed
    /// once. One request at a time, so rule 3 holds.
    pub fn call_retrying(
        &mut self,
        req: &Request<'_>,
        retry: Retry,
    ) -> Result<Received, ClientError> {
        let id = self.next_req_id();
        self.call_retrying_id(id, req, retry)
    }

    /// [`Client::call_retrying`] with a request id taken earlier (a request already sent once
    /// and abandoned).
    pub fn call_retrying_id(
        &mut self,
        id: u64,
        req: &Request<'_>,
        retry: Retry,
    ) -> Result<Received, ClientError> {
        let mut backoff = retry.backoff;
        let mut attempt = 1;
        loop {
            let outcome = self.call_with_id(id, req);
            // Not executed: the connection was lost before an answer, or the answer says so
            // (busy, timed out, this connection is not logged in because its re-login after a
            // reconnect failed, or its session was taken by a newer login, one of this client's
            // own given up on and completed late by a slow worker): log in again and resend.
            let again = match &outcome {
                Ok(r) => match r.status() {
                    Status::ErrServerBusy | Status::ErrTimeout => true,
                    Status::ErrUnauthorized | Status::ErrSessionSuperseded => self.login.is_some(),
                    _ => false,
                },
                Err(ClientError::Io(_) | ClientError::Closed | ClientError::ClosedMidFrame) => true,
                Err(_) => false,
            };
            if !again {
                return outcome;
            }
            if attempt >= retry.attempts {
                // Gave up: the outcome is unknown (or known not executed), never an answer.
                return outcome.and_then(refused);
            }
            let mut jitter = [0u8; 2];
            let _ = getrandom::fill(&mut jitter);
            let frac = f64::from(u16::from_le_bytes(jitter)) / f64::from(u16::MAX) / 2.0;
            std::thread::sleep(backoff.mul_f64(1.0 + frac));
            backoff = (backoff * 2).min(retry.backoff_max);
            attempt += 1;
            // Reconnect and log in again; failures here count as the attempt's.
            let _ = self.reconnect();
        }
    }

    /// Opens a new connection to the same server and logs in again if we were logged in.
    pub fn reconnect(&mut self) -> Result<(), ClientError> {
        self.reconnect_keeping_old().map(drop)
    }

    /// Like [`Client::reconnect`], and hands back the old connection instead of closing it: a
    /// client that gave up waiting on a connection it leaves open (what it sent there may still
    /// be read by the server, late). The new login ends the old connection's session.
    pub fn reconnect_keeping_old(&mut self) -> Result<Stream, ClientError> {
        let fresh = Self::open(self.addr, self.timeout, self.tls.as_ref())?;
        let old = std::mem::replace(&mut self.stream, fresh);
        self.decoder = FrameDecoder::new(BODY_LEN_LIMIT);
        self.pending.clear();
        self.worker = None;
        // HELLO first: which worker serves the new connection.
        self.hello("bench-client")?;
        // Cloned, not taken: a login that fails here is tried again at the next reconnect.
        if let Some((user, secret)) = self.login.clone() {
            self.login_secret(&user, secret)?;
        }
        Ok(old)
    }

    /// HELLO; records the serving worker.
    pub fn hello(&mut self, client: &str) -> Result<HelloInfo, ClientError> {
        let r = self.call_ok(&Request::Hello(HelloRequest {
            client: Label::new(client).map_err(ClientError::Body)?,
        }))?;
        match r.reply()? {
            Reply::Ok(Response::Hello(h)) => {
                self.worker = Some(h.worker_id);
                Ok(HelloInfo {
                    worker_id: h.worker_id,
                    body_len_max: h.body_len_max,
                    idle_timeout_ms: h.idle_timeout_ms,
                    heartbeat_interval_ms: h.heartbeat_interval_ms,
                })
            }
            other => Err(unexpected(&other)),
        }
    }

    /// REGISTER `user` with credentials derived from `password` (a fresh random salt).
    pub fn register(&mut self, user: &str, password: &str) -> Result<u32, ClientError> {
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt)
            .map_err(|e| ClientError::Io(std::io::Error::other(e.to_string())))?;
        let secret =
            ClientSecret::derive(password.as_bytes(), &salt, proto::scram::ITERATIONS_DEFAULT);
        self.register_secret(user, &salt, &secret)
    }

    /// REGISTER with an already derived secret (load generators derive once for many users).
    pub fn register_secret(
        &mut self,
        user: &str,
        salt: &[u8],
        secret: &ClientSecret,
    ) -> Result<u32, ClientError> {
        let stored = secret.stored();
        let r = self.call_ok(&Request::Register(RegisterRequest {
            username: Name::new(user).map_err(ClientError::Body)?,
            salt: Salt::new(salt).map_err(ClientError::Body)?,
            iterations: proto::scram::ITERATIONS_DEFAULT,
            stored_key: stored.stored_key,
            server_key: stored.server_key,
        }))?;
        match r.reply()? {
            Reply::Ok(Response::Register(x)) => Ok(x.user_id),
            other => Err(unexpected(&other)),
        }
    }

    /// SCRAM login with a password: derives the secret from the salt the server returns.
    pub fn login(&mut self, user: &str, password: &str) -> Result<u32, ClientError> {
        self.login_inner(user, |salt, iterations| {
            ClientSecret::derive(password.as_bytes(), salt, iterations)
        })
    }

    /// SCRAM login with a secret derived beforehand.
    pub fn login_secret(&mut self, user: &str, secret: ClientSecret) -> Result<u32, ClientError> {
        self.login_inner(user, move |_, _| secret)
    }

    fn login_inner(
        &mut self,
        user: &str,
        secret_for: impl FnOnce(&[u8], u32) -> ClientSecret,
    ) -> Result<u32, ClientError> {
        let mut client_nonce = [0u8; 24];
        getrandom::fill(&mut client_nonce)
            .map_err(|e| ClientError::Io(std::io::Error::other(e.to_string())))?;
        let r = self.call_ok(&Request::Login(LoginRequest {
            username: Name::new(user).map_err(ClientError::Body)?,
            client_nonce: Nonce::new(&client_nonce).map_err(ClientError::Body)?,
        }))?;
        let (salt, iterations, server_nonce) = match r.reply()? {
            Reply::Ok(Response::Login(l)) => (
                l.salt.as_bytes().to_vec(),
                l.iterations,
                l.server_nonce.as_bytes().to_vec(),
            ),
            other => return Err(unexpected(&other)),
        };
        let secret = secret_for(&salt, iterations);
        let am = auth_message(user, &client_nonce, &server_nonce, &salt, iterations);
        let r = self.call_ok(&Request::LoginProof(LoginProofRequest {
            client_proof: secret.proof(&am),
        }))?;
        let user_id = match r.reply()? {
            Reply::Ok(Response::LoginProof(p)) => {
                if !secret.verify_server(&am, &p.server_signature) {
                    return Err(ClientError::BadServerSignature);
                }
                // Rule 1: continue above what the server has decided for this user.
                self.next_req_id = self.next_req_id.max(p.req_id_hw);
                self.req_id_window = p.req_id_window;
                self.req_id_hw = p.req_id_hw;
                p.user_id
            }
            other => return Err(unexpected(&other)),
        };
        self.user_id = user_id;
        self.login = Some((user.to_string(), secret));
        Ok(user_id)
    }

    /// DEPOSIT, WITHDRAW or TRANSFER: (balance, txn_id).
    pub fn ledger(&mut self, req: &Request<'_>) -> Result<(u64, u64), ClientError> {
        let r = self.call_retrying(req, Retry::default())?;
        match refused(r)?.reply()? {
            Reply::Ok(Response::Deposit(x) | Response::Withdraw(x) | Response::Transfer(x)) => {
                Ok((x.balance, x.txn_id))
            }
            other => Err(unexpected(&other)),
        }
    }

    /// One page of TXN_HISTORY: transactions older than `before_txn_id` (0: the newest),
    /// newest first.
    pub fn txn_history(
        &mut self,
        before_txn_id: u64,
        limit: u16,
    ) -> Result<Vec<TxnEntry>, ClientError> {
        let r = self.call_ok(&Request::TxnHistory(TxnHistoryRequest {
            before_txn_id,
            limit,
        }))?;
        match r.reply()? {
            Reply::Ok(Response::TxnHistory(h)) => Ok(h.txns.into_items()),
            other => Err(unexpected(&other)),
        }
    }

    /// BALANCE.
    pub fn balance(&mut self) -> Result<u64, ClientError> {
        match self.call_ok(&Request::Balance(Empty {}))?.reply()? {
            Reply::Ok(Response::Balance(b)) => Ok(b.balance),
            other => Err(unexpected(&other)),
        }
    }

    /// JOIN_ROOM: (room_id, last_seq).
    pub fn join(&mut self, room: &str) -> Result<(u32, u64), ClientError> {
        let r = self.call_ok(&Request::JoinRoom(JoinRoomRequest {
            room: Name::new(room).map_err(ClientError::Body)?,
        }))?;
        match r.reply()? {
            Reply::Ok(Response::JoinRoom(j)) => Ok((j.room_id, j.last_seq)),
            other => Err(unexpected(&other)),
        }
    }

    /// CHAT_SEND: the message's sequence number.
    pub fn send(&mut self, room_id: u32, text: &str) -> Result<u64, ClientError> {
        let r = self.call_ok(&Request::ChatSend(ChatSendRequest {
            room_id,
            text: Text::new(text).map_err(ClientError::Body)?,
        }))?;
        match r.reply()? {
            Reply::Ok(Response::ChatSend(s)) => Ok(s.seq),
            other => Err(unexpected(&other)),
        }
    }
}

/// What HELLO told.
#[derive(Debug, Clone, Copy)]
pub struct HelloInfo {
    /// The serving worker.
    pub worker_id: u16,
    /// Largest body accepted.
    pub body_len_max: u32,
    /// Idle timeout.
    pub idle_timeout_ms: u32,
    /// Heartbeat interval.
    pub heartbeat_interval_ms: u32,
}

fn refused(r: Received) -> Result<Received, ClientError> {
    if r.status() == Status::Ok {
        return Ok(r);
    }
    let msg = match r.reply() {
        Ok(Reply::Err(_, e)) => e.message.as_str().to_string(),
        _ => String::new(),
    };
    Err(ClientError::Refused(r.status(), msg))
}

fn unexpected(reply: &Reply<'_>) -> ClientError {
    ClientError::Refused(Status::ErrInternal, format!("unexpected reply {reply:?}"))
}
