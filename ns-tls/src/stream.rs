//! The byte stream under a client: a TCP socket, or TLS over one. Both read and write like a
//! socket, blocking or not, so a blocking client (bench-client's `Client`, the C library's
//! `ns_conn`) and the load generator's event loop use either without knowing which.
//!
//! With a non-blocking socket, a write hands its bytes to rustls (which encrypts them at once)
//! and writes as many records as the socket takes; [`Stream::wants_write`] says records are
//! still waiting, and the next write or [`Stream::flush_records`] sends them.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, BorrowedFd};

use crate::ClientTls;

/// A connection's stream: plaintext or TLS.
#[derive(Debug)]
pub enum Stream {
    /// Plaintext TCP.
    Plain(TcpStream),
    /// TLS over TCP; the handshake is done.
    Tls(Box<TlsStream>),
}

/// TLS over a TCP socket.
#[derive(Debug)]
pub struct TlsStream {
    sock: TcpStream,
    tls: rustls::ClientConnection,
}

impl Stream {
    /// Wraps a connected socket in TLS under `tls` and runs the handshake (blocking, within the
    /// socket's timeouts). A refused certificate or a server that does not speak TLS fails here,
    /// with rustls's reason.
    pub fn tls(mut sock: TcpStream, tls: &ClientTls) -> io::Result<Stream> {
        let mut conn = tls.connection().map_err(io::Error::other)?;
        while conn.is_handshaking() {
            match conn.complete_io(&mut sock) {
                Ok((0, 0)) if conn.is_handshaking() => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the server closed the connection during the TLS handshake",
                    ))
                }
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Stream::Tls(Box::new(TlsStream { sock, tls: conn })))
    }

    /// The TCP socket under it (for timeouts, socket options, shutdown).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(t) => &t.sock,
        }
    }

    /// True when this is a TLS stream.
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// TLS records encrypted and not yet taken by the socket.
    pub fn wants_write(&self) -> bool {
        match self {
            Stream::Plain(_) => false,
            Stream::Tls(t) => t.tls.wants_write(),
        }
    }

    /// Writes waiting records as far as the socket takes them (a non-blocking socket's
    /// WouldBlock is not an error here: they wait for the next call).
    pub fn flush_records(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(_) => Ok(()),
            Stream::Tls(t) => t.flush_records(),
        }
    }

    /// Sends our close_notify (TLS) and shuts the socket's write side.
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        if let Stream::Tls(t) = self {
            t.tls.send_close_notify();
            t.flush_records()?;
        }
        self.tcp().shutdown(std::net::Shutdown::Write)
    }
}

impl TlsStream {
    fn flush_records(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.sock) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let t = match self {
            Stream::Plain(s) => return s.read(buf),
            Stream::Tls(t) => t,
        };
        loop {
            match t.tls.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The peer closed without close_notify: an EOF like TCP's, for the caller to
                // judge (a cut frame is still reported as one).
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            if t.tls.read_tls(&mut t.sock)? == 0 {
                return Ok(0);
            }
            if let Err(e) = t.tls.process_new_packets() {
                // What rustls has to say about it (an alert) goes out before the error.
                let _ = t.flush_records();
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            // Key updates and session tickets may want an answer.
            t.flush_records()?;
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let t = match self {
            Stream::Plain(s) => return s.write(buf),
            Stream::Tls(t) => t,
        };
        // Records from an earlier write first, so rustls's buffer stays bounded.
        t.flush_records()?;
        if t.tls.wants_write() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = t.tls.writer().write(buf)?;
        t.flush_records()?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(t) => {
                t.flush_records()?;
                t.sock.flush()
            }
        }
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.tcp().as_fd()
    }
}
