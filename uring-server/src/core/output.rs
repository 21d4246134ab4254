//! What goes back to a client: each connection's bounded output queue, and the one way
//! responses, error responses and notices are written into it (a connection whose queue would
//! pass its bound is closed as a slow consumer instead).

use proto::body::*;
use proto::{write_error, write_push, write_response, DecodeError, Push, Response, Status};

use super::{ConnState, Ctx};

/// Bytes waiting to be sent on one connection. Appends go to `pending`; a send in flight reads
/// `sending`, which does not move or grow until the send completes (io_uring holds a pointer).
#[derive(Debug, Default)]
pub struct OutQueue {
    pending: Vec<u8>,
    sending: Vec<u8>,
    sent: usize,
}

impl OutQueue {
    /// Bytes not yet sent.
    pub fn len(&self) -> usize {
        self.pending.len() + self.sending.len() - self.sent
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The next bytes to send: the rest of `sending`, refilled from `pending` when empty.
    pub fn chunk(&mut self) -> &[u8] {
        if self.sent == self.sending.len() {
            self.sending.clear();
            self.sent = 0;
            std::mem::swap(&mut self.sending, &mut self.pending);
        }
        &self.sending[self.sent..]
    }

    /// Drops what is not yet being sent (a send in flight keeps its buffer until it completes).
    pub fn discard_pending(&mut self) {
        self.pending = Vec::new();
    }

    /// Records that `n` bytes of the last chunk were sent.
    pub fn advance(&mut self, n: usize) {
        debug_assert!(self.sent + n <= self.sending.len());
        self.sent = (self.sent + n).min(self.sending.len());
    }
}

impl Ctx<'_> {
    /// Queues bytes written by `write` unless that would pass the connection's bound, in which
    /// case the connection is closed as a slow consumer.
    pub(super) fn queue(
        &mut self,
        st: &mut ConnState,
        frame_len: usize,
        write: impl FnOnce(&mut Vec<u8>),
    ) {
        if st.closing {
            return;
        }
        if st.out.len() + frame_len > self.cfg.out_max_bytes {
            // The peer does not read: waiting to flush could take forever, so its queued output
            // is dropped and the connection closed at once (Redis's and NATS's policy).
            tracing::info!(
                conn = st.id,
                queued = st.out.len(),
                "slow consumer: disconnecting"
            );
            self.metrics.slow_consumer_disconnects.add(1);
            st.closing = true;
            st.abort = true;
            st.out.discard_pending();
            return;
        }
        let before = st.out.pending.len();
        write(&mut st.out.pending);
        self.metrics
            .bytes_out
            .add((st.out.pending.len() - before) as u64);
    }

    pub(super) fn respond(&mut self, st: &mut ConnState, req_id: u64, resp: &Response<'_>) {
        self.metrics.statuses[0].add(1);
        let body_len_max = proto::BODY_LEN_LIMIT;
        self.queue(st, proto::HEADER_LEN + resp.encoded_len(), |out| {
            // Bodies the handlers build are bounded well below the limit.
            let _ = write_response(out, req_id, resp, body_len_max);
        });
    }

    pub(super) fn error(
        &mut self,
        st: &mut ConnState,
        req_id: u64,
        opcode: u16,
        status: Status,
        msg: &str,
    ) {
        self.metrics.statuses[status.as_u16() as usize].add(1);
        tracing::debug!(
            conn = st.id,
            req_id,
            opcode,
            status = status.name(),
            msg,
            "error response"
        );
        self.queue(st, proto::HEADER_LEN + 2 + msg.len().min(256), |out| {
            write_error(out, req_id, opcode, status, msg)
        });
    }

    pub(super) fn notice(&mut self, st: &mut ConnState, code: u16, text: &str) {
        let Ok(text) = Message::new(text) else {
            return;
        };
        let push = Push::Notice(NoticePush { code, text });
        self.queue(st, proto::HEADER_LEN + push.encoded_len(), |out| {
            let _ = write_push(out, &push, proto::BODY_LEN_LIMIT);
        });
    }

    /// A frame the decoder refused: answer it, and close if the stream is lost.
    pub(super) fn bad_frame(&mut self, st: &mut ConnState, e: &DecodeError) {
        self.metrics.bad_frames.add(1);
        let (req_id, opcode) = e.header().map_or((0, 0), |h| (h.req_id, h.opcode));
        tracing::debug!(conn = st.id, error = %e, "bad frame");
        self.error(st, req_id, opcode, e.status(), &e.to_string());
        if e.is_fatal() {
            st.closing = true;
        }
    }
}
