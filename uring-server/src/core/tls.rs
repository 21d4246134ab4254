//! TLS inside the core. A connection accepted on a TLS listener carries a rustls
//! `ServerConnection` between the backend's bytes and the protocol: ciphertext in, records
//! decrypted, plaintext into the frame decoder; the plaintext output queue (answers held for the
//! journal and all) encrypted at each send into a second queue of records, which is what the
//! backend sends from and owns while the kernel reads it. Nothing here does IO, so both backends
//! keep their one loop and the tests drive it byte by byte.
//!
//! A connection's memory stays bounded: rustls's own buffers are bounded (records of at most
//! 16 KiB + overhead, handshake messages at most 64 KiB), plaintext waits in the output queue
//! under `--out-max-bytes`, and the records of one send are at most what that queue held.

use std::io::{Read, Write};
use std::sync::Arc;

use super::{Conn, ConnState, Ctx, OutQueue};

/// One connection's TLS state.
#[derive(Debug)]
pub(super) struct Tls {
    conn: rustls::ServerConnection,
    /// Records waiting for a send, or in flight.
    records: OutQueue,
    /// When the connection opened: its handshake must finish within the timeout.
    opened_ms: u64,
    /// Our close_notify is queued.
    close_sent: bool,
}

/// Largest plaintext read out of rustls at once.
pub(super) const PLAINTEXT_CHUNK: usize = 16 << 10;

impl Tls {
    /// A server side connection under `config`, opened now.
    pub(super) fn new(
        config: &Arc<rustls::ServerConfig>,
        now_ms: u64,
    ) -> Result<Tls, rustls::Error> {
        let mut conn = rustls::ServerConnection::new(config.clone())?;
        // Plaintext written before the handshake ends (a shutdown notice) waits in rustls; the
        // output queue's bound applies before it gets there.
        conn.set_buffer_limit(None);
        Ok(Tls {
            conn,
            records: OutQueue::default(),
            opened_ms: now_ms,
            close_sent: false,
        })
    }

    /// Records (or handshake messages, alerts) wait to be sent.
    pub(super) fn has_output(&self) -> bool {
        self.conn.wants_write() || self.records.ready() > 0
    }

    /// True while the handshake is not done and began more than `timeout_ms` ago.
    pub(super) fn handshake_overdue(&self, now_ms: u64, timeout_ms: u64) -> bool {
        self.conn.is_handshaking() && now_ms.saturating_sub(self.opened_ms) > timeout_ms
    }

    /// Encrypts what `st` may send now (and, on a closing connection whose output is all out,
    /// our close_notify), then takes every record for one send.
    pub(super) fn take(&mut self, st: &mut ConnState) -> Option<Vec<u8>> {
        if let Some(plain) = st.out.take() {
            // No buffer limit is set: rustls takes all of it (into records once the handshake
            // is done, else into its plaintext buffer until then).
            let _ = self.conn.writer().write_all(&plain);
            st.out.advance(plain.len());
            st.out.recycle(plain);
        }
        if st.closing && !self.close_sent && st.out.is_empty() && !self.conn.is_handshaking() {
            self.conn.send_close_notify();
            self.close_sent = true;
        }
        while self.conn.wants_write() {
            // Writing into a Vec does not fail.
            let _ = self.conn.write_tls(self.records.buf());
        }
        self.records.take()
    }

    /// `n` bytes of the records taken reached the kernel.
    pub(super) fn sent(&mut self, n: usize) {
        self.records.advance(n);
    }

    /// A finished send's buffer back, for reuse.
    pub(super) fn recycle(&mut self, buf: Vec<u8>) {
        self.records.recycle(buf);
    }

    /// The peer is gone: nothing more will be sent.
    pub(super) fn clear(&mut self) {
        self.records.clear();
    }
}

/// Ciphertext received on `conn`: decrypted record by record, each record's plaintext handed to
/// `plain` (the frame path) at once. A TLS error (a plaintext client, garbage, a refused
/// certificate, an alert from the peer) is counted and closes the connection after rustls's
/// alert went out; a close_notify from the peer closes it like a FIN.
pub(super) fn on_ciphertext(
    ctx: &mut Ctx<'_>,
    conn: &mut Conn,
    scratch: &mut [u8],
    data: &[u8],
    mut plain: impl FnMut(&mut Ctx<'_>, &mut super::Conn, &[u8]),
) {
    let mut input = data;
    while !input.is_empty() && !conn.st.closing {
        let Some(tls) = conn.tls.as_mut() else {
            return;
        };
        let handshaking = tls.conn.is_handshaking();
        if let Err(e) = tls.conn.read_tls(&mut input) {
            // Only a full buffer of undecoded records, which process_new_packets empties.
            tracing::debug!(conn = conn.st.id, error = %e, "TLS read");
            failed(ctx, &mut conn.st, "TLS buffer");
            return;
        }
        let state = match tls.conn.process_new_packets() {
            Ok(state) => state,
            Err(e) => {
                tracing::debug!(conn = conn.st.id, error = %e, "TLS error: closing");
                failed(ctx, &mut conn.st, "TLS");
                return;
            }
        };
        if handshaking && !tls.conn.is_handshaking() {
            ctx.metrics.tls_handshakes.add(1);
            tracing::debug!(
                conn = conn.st.id,
                version = ?tls.conn.protocol_version(),
                suite = ?tls.conn.negotiated_cipher_suite().map(|s| s.suite()),
                "TLS handshake done"
            );
        }
        let mut left = state.plaintext_bytes_to_read();
        let closed = state.peer_has_closed();
        while left > 0 {
            let Some(tls) = conn.tls.as_mut() else {
                return;
            };
            let got = match tls.conn.reader().read(scratch) {
                Ok(0) | Err(_) => break,
                Ok(got) => got,
            };
            left = left.saturating_sub(got);
            plain(ctx, conn, &scratch[..got]);
        }
        if closed {
            conn.st.closing = true;
        }
    }
}

/// A TLS failure: counted, and the connection closes once rustls's alert is out.
fn failed(ctx: &mut Ctx<'_>, st: &mut ConnState, what: &str) {
    ctx.metrics.tls_errors.add(1);
    tracing::debug!(conn = st.id, what, "closing a connection on a TLS error");
    st.out.discard_pending();
    st.closing = true;
}
