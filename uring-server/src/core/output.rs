//! What goes back to a client: each connection's bounded output queue, and the one way
//! responses, error responses and notices are written into it (a connection whose queue would
//! pass its bound is closed as a slow consumer instead).

use proto::body::*;
use proto::{write_error, write_push, write_response, DecodeError, Push, Response, Status};

use super::{ConnState, Ctx};

/// Bytes waiting to be sent on one connection, in one buffer. Appends go to `pending`; a send
/// takes what may go ([`OutQueue::take`]) and the backend owns it until the kernel is done with
/// it, then hands it back for reuse ([`OutQueue::recycle`]): the core never holds memory an
/// operation in flight points into, so nothing the core does (growing, clearing, dropping the
/// connection) can move it.
///
/// Answers that must wait for the journal (durable mode) are held where they were written:
/// `held_from` is the offset from which nothing may be sent yet, and each mark says up to which
/// byte the bytes may go once the journal is durable up to its LSN. Once anything is held,
/// everything queued after it is held too, so the connection's frames keep their order. Held
/// bytes are copied only if a send comes while some are held and some are not (the held tail
/// stays behind); a release copies nothing.
#[derive(Debug, Default)]
pub struct OutQueue {
    pending: Vec<u8>,
    /// Bytes taken by a send and not yet reported sent (they count against the bound).
    in_flight: usize,
    /// A buffer a finished send gave back, reused as the next `pending`.
    spare: Vec<u8>,
    /// Where the held bytes of `pending` start; `None` when nothing is held.
    held_from: Option<usize>,
    /// (the `durable` the journal must reach, end in `pending` of the bytes it covers), in
    /// order and rising in both.
    marks: std::collections::VecDeque<(u64, usize)>,
}

/// Capacity a given-back buffer may keep for reuse; a larger one (a burst) is freed.
const SPARE_CAPACITY_KEEP: usize = 64 << 10;

/// Where a queue stood before a handler wrote into it (see [`OutQueue::hold_since`]).
#[derive(Debug, Clone, Copy)]
pub struct Mark {
    pending: usize,
}

impl OutQueue {
    /// Bytes not yet sent: pending (held or not) and in flight.
    pub fn len(&self) -> usize {
        self.pending.len() + self.in_flight
    }

    /// True when bytes wait for the journal.
    pub fn holding(&self) -> bool {
        self.held_from.is_some()
    }

    /// Bytes that a send may take now (not held, not in flight).
    pub fn ready(&self) -> usize {
        self.held_from.unwrap_or(self.pending.len())
    }

    /// Where appends go.
    pub(super) fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.pending
    }

    /// The queue's end now.
    pub fn mark(&self) -> Mark {
        Mark {
            pending: self.pending.len(),
        }
    }

    /// Holds what was queued since `m` until the journal is durable up to `need` (the value
    /// `shm::journal::durable` must reach).
    pub fn hold_since(&mut self, m: Mark, need: u64) {
        let end = self.pending.len();
        if end == m.pending {
            return;
        }
        if self.held_from.is_none() {
            self.held_from = Some(m.pending);
        }
        match self.marks.back_mut() {
            // Released in order anyway: a need no higher than the last mark's joins it.
            Some((n, e)) if *n >= need => *e = end,
            _ => self.marks.push_back((need, end)),
        }
    }

    /// Releases what the journal has made durable (`durable` reached); true if any was.
    pub fn release(&mut self, durable: u64) -> bool {
        let Some(from) = self.held_from else {
            return false;
        };
        let mut upto = from;
        while let Some(&(need, end)) = self.marks.front() {
            if need > durable {
                break;
            }
            upto = end;
            self.marks.pop_front();
        }
        if upto == from {
            return false;
        }
        // Bytes after the last mark (a push queued behind held answers) go with it.
        self.held_from = (!self.marks.is_empty()).then_some(upto);
        true
    }

    /// Takes every byte that may be sent for a send: the caller owns the buffer until it gives
    /// it back with [`OutQueue::recycle`] (or drops it, if the send failed). `None` when nothing
    /// may go. One send at a time: the event loop starts none while one is under way.
    pub fn take(&mut self) -> Option<Vec<u8>> {
        debug_assert_eq!(self.in_flight, 0, "one send at a time");
        let ready = self.ready();
        if ready == 0 {
            return None;
        }
        let mut rest = std::mem::take(&mut self.spare);
        if let Some(from) = self.held_from {
            // The held tail stays: copied into the next buffer, its offsets moved with it.
            rest.extend_from_slice(&self.pending[from..]);
            self.pending.truncate(from);
            self.held_from = Some(0);
            for (_, e) in self.marks.iter_mut() {
                *e -= from;
            }
        }
        self.in_flight = ready;
        Some(std::mem::replace(&mut self.pending, rest))
    }

    /// Records that `n` bytes of the taken buffer reached the kernel.
    pub fn advance(&mut self, n: usize) {
        debug_assert!(n <= self.in_flight);
        self.in_flight = self.in_flight.saturating_sub(n);
    }

    /// A finished send gives its buffer back, to be the next pending one.
    pub fn recycle(&mut self, mut buf: Vec<u8>) {
        self.in_flight = 0;
        if buf.capacity() <= SPARE_CAPACITY_KEEP && buf.capacity() > self.spare.capacity() {
            buf.clear();
            self.spare = buf;
        }
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops what is not yet being sent (a send in flight keeps its buffer until it completes).
    pub fn discard_pending(&mut self) {
        self.pending = Vec::new();
        self.held_from = None;
        self.marks.clear();
    }

    /// The peer is gone: nothing more will be sent, what was in flight included.
    pub fn clear(&mut self) {
        self.discard_pending();
        self.in_flight = 0;
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
        let buf = st.out.buf();
        let before = buf.len();
        write(buf);
        let added = buf.len() - before;
        self.metrics.bytes_out.add(added as u64);
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
