//! `--metrics-addr`: the master answers `GET /metrics` with the Prometheus text of `stats
//! --format prometheus`, read from shared memory, so the workers are never asked anything.
//!
//! The master stays single-threaded (its forks rely on it): the listener and every scrape
//! connection are non-blocking and served from the master's own loop, which waits on them with
//! `poll` instead of sleeping. A client is bounded in what it can cost: a request head of at most
//! [`HEAD_MAX`] bytes, [`DEADLINE`] from accept to the last byte of the answer, at most
//! [`CONNS_MAX`] connections at once (the oldest is dropped for a new one), one request per
//! connection. A slow or malformed client therefore delays nobody: the master never blocks on
//! it, and it is closed at its deadline.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

/// Largest request head read (request line and headers).
pub const HEAD_MAX: usize = 8 << 10;
/// Longest a scrape connection may live.
pub const DEADLINE: Duration = Duration::from_secs(5);
/// Most scrape connections open at once.
pub const CONNS_MAX: usize = 32;

/// One scrape connection.
#[derive(Debug)]
struct Conn {
    sock: TcpStream,
    head: Vec<u8>,
    /// The answer, once the request is read, and how much of it went.
    out: Option<(Vec<u8>, usize)>,
    /// The answer went whole and our side is shut: what still arrives is read and dropped until
    /// the peer closes (closing with unread bytes would reset the connection and could destroy
    /// the answer before the peer read it: a lingering close, as nginx does).
    draining: bool,
    /// The peer closed (or failed): nothing more to do.
    gone: bool,
    deadline: Instant,
}

/// The metrics listener and its connections.
#[derive(Debug)]
pub struct MetricsServer {
    listener: TcpListener,
    conns: Vec<Conn>,
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Ask {
    Metrics,
    NotFound,
    BadMethod,
    Bad,
}

fn parse(head: &[u8]) -> Ask {
    let Some(line) = head.split(|&b| b == b'\n').next() else {
        return Ask::Bad;
    };
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Ask::Bad;
    };
    if !version.starts_with(b"HTTP/1.") {
        return Ask::Bad;
    }
    if method != b"GET" && method != b"HEAD" {
        return Ask::BadMethod;
    }
    // The path alone: Prometheus may add a query string.
    let path = target.split(|&b| b == b'?').next().unwrap_or(target);
    if path == b"/metrics" {
        Ask::Metrics
    } else {
        Ask::NotFound
    }
}

fn response(status: &str, content_type: &str, body: &str, with_body: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if with_body {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

impl MetricsServer {
    /// Listens on `addr` (port 0 picks one).
    pub fn bind(addr: SocketAddr) -> anyhow::Result<MetricsServer> {
        let listener =
            TcpListener::bind(addr).map_err(|e| anyhow::anyhow!("--metrics-addr {addr}: {e}"))?;
        listener.set_nonblocking(true)?;
        Ok(MetricsServer {
            listener,
            conns: Vec::new(),
        })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Waits up to `timeout` for the listener or a connection to be ready, then does all that
    /// can be done without blocking; `render` makes the exposition text for a scrape.
    pub fn serve(&mut self, timeout: Duration, render: impl Fn() -> String) {
        self.wait(timeout);
        self.accept();
        let now = Instant::now();
        for c in &mut self.conns {
            Self::progress(c, &render);
        }
        self.conns.retain(|c| !c.gone && now < c.deadline);
    }

    fn wait(&self, timeout: Duration) {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let mut fds = vec![PollFd::new(self.listener.as_fd(), PollFlags::POLLIN)];
        for c in &self.conns {
            let ev = if c.out.is_some() && !c.draining {
                PollFlags::POLLOUT
            } else {
                PollFlags::POLLIN
            };
            fds.push(PollFd::new(c.sock.as_fd(), ev));
        }
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        // An error (EINTR from a signal) only ends the wait early.
        let _ = poll(&mut fds, PollTimeout::from(ms));
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((sock, _)) => {
                    if sock.set_nonblocking(true).is_err() {
                        continue;
                    }
                    if self.conns.len() >= CONNS_MAX {
                        // The oldest goes: a flood of idle connections cannot lock scrapes out.
                        self.conns.remove(0);
                    }
                    self.conns.push(Conn {
                        sock,
                        head: Vec::new(),
                        out: None,
                        draining: false,
                        gone: false,
                        deadline: Instant::now() + DEADLINE,
                    });
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // Out of fds and the like: try again at the next turn.
                Err(_) => return,
            }
        }
    }

    /// Reads the head, answers once it is whole, writes as far as the socket takes.
    fn progress(c: &mut Conn, render: &impl Fn() -> String) {
        if c.draining {
            let mut buf = [0u8; 4096];
            loop {
                match c.sock.read(&mut buf) {
                    Ok(0) => {
                        c.gone = true;
                        return;
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => {
                        c.gone = true;
                        return;
                    }
                }
            }
        }
        if c.out.is_none() {
            let mut buf = [0u8; 2048];
            loop {
                match c.sock.read(&mut buf) {
                    Ok(0) => {
                        // Closed before a whole request: drop it at once.
                        c.gone = true;
                        return;
                    }
                    Ok(n) => c.head.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => {
                        c.gone = true;
                        return;
                    }
                }
                if c.head.len() > HEAD_MAX {
                    break;
                }
            }
            let whole = c.head.windows(4).any(|w| w == b"\r\n\r\n");
            if c.head.len() > HEAD_MAX {
                c.out = Some((
                    response(
                        "431 Request Header Fields Too Large",
                        "text/plain",
                        "request head too large\n",
                        true,
                    ),
                    0,
                ));
            } else if whole {
                let head_only = c.head.starts_with(b"HEAD ");
                let out = match parse(&c.head) {
                    Ask::Metrics => response(
                        "200 OK",
                        "text/plain; version=0.0.4; charset=utf-8",
                        &render(),
                        !head_only,
                    ),
                    Ask::NotFound => {
                        response("404 Not Found", "text/plain", "try /metrics\n", !head_only)
                    }
                    Ask::BadMethod => response(
                        "405 Method Not Allowed",
                        "text/plain",
                        "GET /metrics\n",
                        true,
                    ),
                    Ask::Bad => response("400 Bad Request", "text/plain", "bad request\n", true),
                };
                c.out = Some((out, 0));
            } else {
                return;
            }
        }
        if let Some((out, sent)) = &mut c.out {
            while *sent < out.len() {
                match c.sock.write(&out[*sent..]) {
                    Ok(0) => break,
                    Ok(n) => *sent += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => {
                        c.gone = true;
                        return;
                    }
                }
            }
            if *sent == out.len() {
                let _ = c.sock.shutdown(std::net::Shutdown::Write);
                c.draining = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_are_told_apart() {
        assert_eq!(
            parse(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Ask::Metrics
        );
        assert_eq!(parse(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"), Ask::Metrics);
        assert_eq!(parse(b"HEAD /metrics HTTP/1.1\r\n\r\n"), Ask::Metrics);
        assert_eq!(parse(b"GET / HTTP/1.1\r\n\r\n"), Ask::NotFound);
        assert_eq!(parse(b"POST /metrics HTTP/1.1\r\n\r\n"), Ask::BadMethod);
        assert_eq!(parse(b"GET /metrics\r\n\r\n"), Ask::Bad);
        assert_eq!(parse(b"\x16\x03\x01\x00\x05hello\r\n\r\n"), Ask::Bad);
        assert_eq!(parse(b"GET /metrics SPDY/3\r\n\r\n"), Ask::Bad);
    }
}
