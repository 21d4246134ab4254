//! libnet and liblog: a blocking connection with timeouts, plaintext or TLS (the workspace's
//! rustls client, `ns-tls`: the certificate verified against a CA file or the system's),
//! `read_full`/`write_full` on any fd
//! (EINTR and partial IO handled), a call that matches the answer by req_id and keeps pushes
//! aside, and a logging hook that sees every frame sent and received.

use std::collections::VecDeque;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use proto::{FrameDecoder, FrameKind};

use crate::bodies::*;
use crate::{
    guard, NS_ERR_CLOSED, NS_ERR_INVALID, NS_ERR_IO, NS_ERR_NULL, NS_ERR_TIMEOUT, NS_ERR_TLS, NS_OK,
};

/// What the logging hook is told about one frame.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ns_log_record {
    /// `"send"`, `"recv"` or `"push"` (NUL-terminated, static).
    pub event: *const c_char,
    /// This process.
    pub pid: u32,
    /// The frame's req_id (0 for a push).
    pub req_id: u64,
    /// Its opcode (`ns_opcode_name`).
    pub opcode: u16,
    /// Its status (`ns_status_name`).
    pub status: u16,
    /// Body bytes.
    pub body_len: u32,
}

/// A logging hook: called for every frame a connection sends or receives, on the calling
/// thread, with the `user` pointer given to `ns_set_log`.
pub type ns_log_fn = Option<unsafe extern "C" fn(user: *mut c_void, rec: *const ns_log_record)>;

struct Hook {
    f: ns_log_fn,
    user: usize,
}

static HOOK: Mutex<Hook> = Mutex::new(Hook { f: None, user: 0 });

/// Installs `f` as the logging hook for every connection (null removes it). `ns_log_stderr` is
/// one that prints structured lines.
#[no_mangle]
pub extern "C" fn ns_set_log(f: ns_log_fn, user: *mut c_void) {
    if let Ok(mut h) = HOOK.lock() {
        *h = Hook {
            f,
            user: user as usize,
        };
    }
}

/// A ready-made hook: one line per frame on stderr,
/// `nsproto pid=… event=send req_id=… opcode=DEPOSIT status=OK body_len=…`.
///
/// # Safety
/// `rec` readable.
#[no_mangle]
pub unsafe extern "C" fn ns_log_stderr(_user: *mut c_void, rec: *const ns_log_record) {
    // SAFETY: per the contract.
    let Some(r) = (unsafe { rec.as_ref() }) else {
        return;
    };
    // SAFETY: the library passes a static NUL-terminated event name.
    let event = unsafe { CStr::from_ptr(r.event) }.to_string_lossy();
    let name = |p: *const c_char| {
        // SAFETY: the name functions return static NUL-terminated strings.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    };
    let _ = writeln!(
        std::io::stderr(),
        "nsproto pid={} event={event} req_id={} opcode={} status={} body_len={}",
        r.pid,
        r.req_id,
        name(crate::ns_opcode_name(r.opcode)),
        name(crate::ns_status_name(r.status)),
        r.body_len
    );
}

fn log(event: &'static CStr, req_id: u64, opcode: u16, status: u16, body_len: u32) {
    let (f, user) = match HOOK.lock() {
        Ok(h) => (h.f, h.user),
        Err(_) => return,
    };
    if let Some(f) = f {
        let rec = ns_log_record {
            event: event.as_ptr(),
            pid: std::process::id(),
            req_id,
            opcode,
            status,
            body_len,
        };
        // SAFETY: the hook was installed by the caller for exactly this call.
        unsafe { f(user as *mut c_void, &rec) };
    }
}

/// A connection to a server: a blocking TCP socket with timeouts, its decoder, the next req_id
/// and the pushes read while waiting for answers. Close with `ns_conn_close`.
pub struct ns_conn {
    stream: ns_tls::Stream,
    decoder: FrameDecoder,
    inbuf: Vec<u8>,
    inpos: usize,
    next_req_id: u64,
    timeout: Duration,
    pushes: VecDeque<*mut ns_push>,
}

impl std::fmt::Debug for ns_conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ns_conn")
            .field("next_req_id", &self.next_req_id)
            .finish_non_exhaustive()
    }
}

impl Drop for ns_conn {
    fn drop(&mut self) {
        for p in self.pushes.drain(..) {
            // SAFETY: queued pushes are this library's, not handed out yet.
            unsafe { ns_push_free(p) };
        }
    }
}

fn io_code(e: &std::io::Error) -> i32 {
    if e.get_ref()
        .is_some_and(|inner| inner.is::<ns_tls::rustls::Error>())
    {
        return NS_ERR_TLS;
    }
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => NS_ERR_TIMEOUT,
        std::io::ErrorKind::UnexpectedEof
        | std::io::ErrorKind::ConnectionReset
        | std::io::ErrorKind::BrokenPipe => NS_ERR_CLOSED,
        _ => NS_ERR_IO,
    }
}

/// Connects to `host:port` (a name or an address), giving up after `timeout_ms` per address;
/// later reads and writes time out after `timeout_ms` too. `*out` gets the connection.
///
/// # Safety
/// `host` a NUL-terminated string; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn ns_connect(
    host: *const c_char,
    port: u16,
    timeout_ms: u32,
    out: *mut *mut ns_conn,
) -> i32 {
    // SAFETY: per the contract; no CA file and no name are read.
    unsafe { connect(host, port, timeout_ms, None, out) }
}

/// [`ns_connect`] over TLS (a server run with `--tls-cert`, PROTOCOL.md 1.1): the handshake is
/// done before this returns. The server's certificate is verified against the CAs in the PEM
/// file `ca_file` (null: the system's bundle, /etc/ssl/certs/ca-certificates.crt) and must
/// carry `server_name` (null: `host`), a DNS name or an IP address. A refused certificate, a
/// server that does not speak TLS or an unreadable CA file is `NS_ERR_TLS`.
///
/// # Safety
/// `host` a NUL-terminated string; `ca_file` and `server_name` NUL-terminated or null; `out`
/// writable.
#[no_mangle]
pub unsafe extern "C" fn ns_connect_tls(
    host: *const c_char,
    port: u16,
    timeout_ms: u32,
    ca_file: *const c_char,
    server_name: *const c_char,
    out: *mut *mut ns_conn,
) -> i32 {
    guard(|| {
        // SAFETY: NUL-terminated or null (contract).
        let text = |p: *const c_char| unsafe { (!p.is_null()).then(|| CStr::from_ptr(p).to_str()) };
        let (Some(Ok(h)), ca, name) = (text(host), text(ca_file), text(server_name)) else {
            return if host.is_null() {
                NS_ERR_NULL
            } else {
                NS_ERR_INVALID
            };
        };
        let (Ok(ca), Ok(name)) = (ca.transpose(), name.transpose()) else {
            return NS_ERR_INVALID;
        };
        let trust = ca.map_or(ns_tls::Trust::System, |f| ns_tls::Trust::Ca(f.into()));
        let Ok(tls) = ns_tls::ClientTls::new(&trust, name.unwrap_or(h), None) else {
            return NS_ERR_TLS;
        };
        // SAFETY: per the contract.
        unsafe { connect(host, port, timeout_ms, Some(&tls), out) }
    })
}

/// Both connects: TCP to the first address of `host` that answers, then TLS if asked.
///
/// # Safety
/// As [`ns_connect`].
unsafe fn connect(
    host: *const c_char,
    port: u16,
    timeout_ms: u32,
    tls: Option<&ns_tls::ClientTls>,
    out: *mut *mut ns_conn,
) -> i32 {
    guard(|| {
        // SAFETY: per the contract.
        let Some(out) = (unsafe { out.as_mut() }) else {
            return NS_ERR_NULL;
        };
        if host.is_null() {
            return NS_ERR_NULL;
        }
        // SAFETY: a NUL-terminated string (contract).
        let Ok(host) = unsafe { CStr::from_ptr(host) }.to_str() else {
            return NS_ERR_INVALID;
        };
        let timeout = Duration::from_millis(u64::from(timeout_ms.max(1)));
        let Ok(addrs) = (host, port).to_socket_addrs() else {
            return NS_ERR_INVALID;
        };
        let mut last = NS_ERR_IO;
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, timeout) {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    if stream.set_read_timeout(Some(timeout)).is_err()
                        || stream.set_write_timeout(Some(timeout)).is_err()
                    {
                        return NS_ERR_IO;
                    }
                    let stream = match tls {
                        None => ns_tls::Stream::Plain(stream),
                        Some(tls) => match ns_tls::Stream::tls(stream, tls) {
                            Ok(s) => s,
                            Err(e) => return io_code(&e),
                        },
                    };
                    *out = Box::into_raw(Box::new(ns_conn {
                        stream,
                        decoder: FrameDecoder::new(proto::BODY_LEN_LIMIT),
                        inbuf: vec![0; 64 << 10],
                        inpos: 0,
                        next_req_id: 1,
                        timeout,
                        pushes: VecDeque::new(),
                    }));
                    return NS_OK;
                }
                Err(e) => last = io_code(&e),
            }
        }
        last
    })
}

/// Closes the connection and frees it, with any pushes still queued (null is ignored).
///
/// # Safety
/// `c` from `ns_connect`, not used again.
#[no_mangle]
pub unsafe extern "C" fn ns_conn_close(c: *mut ns_conn) {
    if !c.is_null() {
        // SAFETY: per the contract, a Box this library leaked.
        drop(unsafe { Box::from_raw(c) });
    }
}

/// The connection's socket (for poll/select; do not read or close it yourself).
///
/// # Safety
/// `c` a live connection.
#[no_mangle]
pub unsafe extern "C" fn ns_conn_fd(c: *const ns_conn) -> c_int {
    // SAFETY: per the contract.
    unsafe { c.as_ref() }.map_or(-1, |c| c.stream.tcp().as_raw_fd())
}

/// Makes the next request use `req_id` and the ones after it count up from there (after a login,
/// continue above `req_id_hw`: PROTOCOL.md 8.4).
///
/// # Safety
/// `c` a live connection.
#[no_mangle]
pub unsafe extern "C" fn ns_conn_set_next_req_id(c: *mut ns_conn, req_id: u64) -> i32 {
    // SAFETY: per the contract.
    match unsafe { c.as_mut() } {
        Some(c) => {
            c.next_req_id = req_id;
            NS_OK
        }
        None => NS_ERR_NULL,
    }
}

enum Got {
    Response(*mut ns_response, u64),
    Push,
}

impl ns_conn {
    /// Reads until one frame is decoded: a response is returned, a push queued.
    fn read_one(&mut self, deadline: Instant) -> Result<Got, i32> {
        let mut tried = false;
        loop {
            if self.inpos > 0 {
                let (used, r) = self.decoder.decode(&self.inbuf[..self.inpos]);
                let got = match r {
                    Ok(Some(f)) => {
                        let h = f.header;
                        match h.kind() {
                            FrameKind::Response => {
                                log(
                                    c"recv",
                                    h.req_id,
                                    h.opcode.as_u16(),
                                    h.status.as_u16(),
                                    h.body_len,
                                );
                                Some(Got::Response(
                                    crate::bodies::response_from_frame(&f)?,
                                    h.req_id,
                                ))
                            }
                            FrameKind::Push => {
                                log(c"push", 0, h.opcode.as_u16(), 0, h.body_len);
                                self.pushes.push_back(crate::bodies::push_from(
                                    h.opcode,
                                    f.body.to_vec(),
                                )?);
                                Some(Got::Push)
                            }
                            FrameKind::Request => return Err(NS_ERR_INVALID),
                        }
                    }
                    Ok(None) => None,
                    Err(e) => return Err(crate::code_of(&e)),
                };
                self.inbuf.copy_within(used..self.inpos, 0);
                self.inpos -= used;
                if let Some(g) = got {
                    return Ok(g);
                }
            }
            // At least one read is tried, so a timeout of 0 still takes what has arrived.
            let now = Instant::now();
            if now >= deadline && tried {
                return Err(NS_ERR_TIMEOUT);
            }
            tried = true;
            let left = deadline.saturating_duration_since(now);
            let _ = self
                .stream
                .tcp()
                .set_read_timeout(Some(left.max(Duration::from_millis(1))));
            match self.stream.read(&mut self.inbuf[self.inpos..]) {
                Ok(0) => return Err(NS_ERR_CLOSED),
                Ok(n) => self.inpos += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_code(&e)),
            }
        }
    }
}

/// Sends `*req` with the connection's next req_id and waits (up to the connection's timeout)
/// for its response, keeping pushes that arrive meanwhile for `ns_next_push`. `*out` gets the
/// response (free with `ns_response_free`): `NS_OK` when its status is OK, `NS_ERR_REFUSED`
/// when the server refused (its status and message are in `*out`). On any other error `*out`
/// is null; a timed-out request may still be executed later: retry it with the same req_id
/// (`ns_call_with_id`).
///
/// # Safety
/// `c` live; `req` as for `ns_encode_request`; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn ns_call(
    c: *mut ns_conn,
    req: *const ns_request,
    out: *mut *mut ns_response,
) -> i32 {
    // SAFETY: per the contract.
    let Some(conn) = (unsafe { c.as_mut() }) else {
        return NS_ERR_NULL;
    };
    let id = conn.next_req_id;
    conn.next_req_id += 1;
    // SAFETY: per the contract.
    unsafe { ns_call_with_id(c, id, req, out) }
}

/// `ns_call` with a given req_id (a retry uses the first one's).
///
/// # Safety
/// As `ns_call`.
#[no_mangle]
pub unsafe extern "C" fn ns_call_with_id(
    c: *mut ns_conn,
    req_id: u64,
    req: *const ns_request,
    out: *mut *mut ns_response,
) -> i32 {
    guard(|| {
        // SAFETY: per the contract.
        let (Some(c), Some(r), Some(out)) =
            (unsafe { c.as_mut() }, unsafe { req.as_ref() }, unsafe {
                out.as_mut()
            })
        else {
            return NS_ERR_NULL;
        };
        *out = std::ptr::null_mut();
        // SAFETY: per the contract.
        let request = match unsafe { crate::bodies::to_request(r) } {
            Ok(x) => x,
            Err(e) => return e,
        };
        let mut frame = Vec::with_capacity(64);
        if proto::write_request(&mut frame, req_id, &request, proto::BODY_LEN_LIMIT).is_err() {
            return NS_ERR_INVALID;
        }
        log(
            c"send",
            req_id,
            r.opcode,
            0,
            (frame.len() - crate::NS_HEADER_LEN) as u32,
        );
        if let Err(e) = c.stream.write_all(&frame) {
            return io_code(&e);
        }
        let deadline = Instant::now() + c.timeout;
        loop {
            match c.read_one(deadline) {
                Ok(Got::Response(resp, id)) if id == req_id => {
                    *out = resp;
                    // SAFETY: a response this library just made.
                    let ok = unsafe { (*resp).status } == NS_STATUS_OK;
                    return if ok { NS_OK } else { crate::NS_ERR_REFUSED };
                }
                // An answer to an earlier request given up on: not this one's.
                // SAFETY: a response this library just made and nobody else holds.
                Ok(Got::Response(other, _)) => unsafe { ns_response_free(other) },
                Ok(Got::Push) => {}
                Err(e) => return e,
            }
        }
    })
}

/// The next push: one kept while waiting for an answer, else one read within `timeout_ms`.
/// `*out` gets it (free with `ns_push_free`); `NS_ERR_TIMEOUT` when none came.
///
/// # Safety
/// `c` live; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn ns_next_push(
    c: *mut ns_conn,
    timeout_ms: u32,
    out: *mut *mut ns_push,
) -> i32 {
    guard(|| {
        // SAFETY: per the contract.
        let (Some(c), Some(out)) = (unsafe { c.as_mut() }, unsafe { out.as_mut() }) else {
            return NS_ERR_NULL;
        };
        *out = std::ptr::null_mut();
        let deadline = Instant::now() + Duration::from_millis(u64::from(timeout_ms));
        loop {
            if let Some(p) = c.pushes.pop_front() {
                *out = p;
                return NS_OK;
            }
            match c.read_one(deadline) {
                // SAFETY: a response nobody waits for, made by this library.
                Ok(Got::Response(r, _)) => unsafe { ns_response_free(r) },
                Ok(Got::Push) => {}
                Err(e) => return e,
            }
        }
    })
}

/// Waits until `fd` is ready for `events`; polls at least once, so a timeout of 0 still finds
/// an fd that is ready now.
fn wait_fd(fd: c_int, events: i16, deadline: Option<Instant>) -> i32 {
    loop {
        let ms = match deadline {
            None => -1,
            Some(d) => d
                .saturating_duration_since(Instant::now())
                .as_millis()
                .min(i32::MAX as u128) as c_int,
        };
        let mut p = libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut p, 1, ms) };
        if n > 0 {
            return NS_OK;
        }
        if n == 0 {
            return NS_ERR_TIMEOUT;
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return NS_ERR_IO;
        }
    }
}

fn deadline_of(timeout_ms: i32) -> Option<Instant> {
    (timeout_ms >= 0).then(|| Instant::now() + Duration::from_millis(timeout_ms as u64))
}

/// The loop of readn and writen: waits with poll until `fd` is ready for `events`, then moves
/// what `io` moves (the bytes done so far given), until `len` bytes are done. EINTR and EAGAIN
/// retry; `io` returning 0 is the peer closing (for reads).
fn full_io(
    fd: c_int,
    len: usize,
    events: i16,
    timeout_ms: i32,
    done: *mut usize,
    mut io: impl FnMut(usize) -> isize,
) -> i32 {
    let deadline = deadline_of(timeout_ms);
    let mut moved = 0usize;
    let result = loop {
        if moved == len {
            break NS_OK;
        }
        let w = wait_fd(fd, events, deadline);
        if w != NS_OK {
            break w;
        }
        let n = io(moved);
        if n > 0 {
            moved += n as usize;
        } else if n == 0 {
            break NS_ERR_CLOSED;
        } else {
            match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) | Some(libc::EAGAIN) => {}
                Some(libc::EPIPE) => break NS_ERR_CLOSED,
                _ => break NS_ERR_IO,
            }
        }
    };
    // SAFETY: the callers pass a writable pointer or null (their contract).
    if let Some(d) = unsafe { done.as_mut() } {
        *d = moved;
    }
    result
}

/// Reads exactly `len` bytes from `fd` (readn): continues after partial reads and EINTR, waits
/// with poll when the fd is non-blocking. `timeout_ms` < 0 waits forever. `NS_ERR_CLOSED` when
/// the peer closed first (`*done` says how much arrived), `NS_ERR_TIMEOUT`, or `NS_ERR_IO`
/// (see `errno`).
///
/// # Safety
/// `buf` points to `len` writable bytes; `done` writable or null.
#[no_mangle]
pub unsafe extern "C" fn ns_read_full(
    fd: c_int,
    buf: *mut u8,
    len: usize,
    timeout_ms: i32,
    done: *mut usize,
) -> i32 {
    guard(|| {
        if buf.is_null() && len > 0 {
            return NS_ERR_NULL;
        }
        full_io(fd, len, libc::POLLIN, timeout_ms, done, |at| {
            // SAFETY: `buf + at` has `len - at` writable bytes (contract).
            unsafe { libc::read(fd, buf.add(at).cast(), len - at) }
        })
    })
}

/// Writes exactly `len` bytes to `fd` (writen), continuing after partial writes and EINTR.
/// As `ns_read_full` otherwise (`NS_ERR_CLOSED` for EPIPE; SIGPIPE is the caller's to ignore).
///
/// # Safety
/// `buf` points to `len` readable bytes; `done` writable or null.
#[no_mangle]
pub unsafe extern "C" fn ns_write_full(
    fd: c_int,
    buf: *const u8,
    len: usize,
    timeout_ms: i32,
    done: *mut usize,
) -> i32 {
    guard(|| {
        if buf.is_null() && len > 0 {
            return NS_ERR_NULL;
        }
        full_io(fd, len, libc::POLLOUT, timeout_ms, done, |at| {
            // SAFETY: `buf + at` has `len - at` readable bytes (contract).
            unsafe { libc::write(fd, buf.add(at).cast(), len - at) }
        })
    })
}
