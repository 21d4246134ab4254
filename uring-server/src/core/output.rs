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
/// Answers that must wait are held where they were written: `held_from` is the offset from
/// which nothing may be sent yet, and each hold says up to which byte the bytes may go once its
/// gate opens: the journal durable up to an LSN (durable mode), or, on a cluster node, a
/// *slot*: the place of a CHAT_SEND answer that cannot be written until the cluster's stream has
/// ordered the message ([`OutQueue::hold_slot`], filled by [`OutQueue::fill`]). Once anything is
/// held, everything queued after it is held too, so the connection's frames keep their order.
/// Held bytes are copied only if a send comes while some are held and some are not (the held
/// tail stays behind); a release copies nothing, a fill moves only the held bytes after it.
#[derive(Debug, Default)]
pub struct OutQueue {
    pending: Vec<u8>,
    /// Bytes taken by a send and not yet reported sent (they count against the bound).
    in_flight: usize,
    /// A buffer a finished send gave back, reused as the next `pending`.
    spare: Vec<u8>,
    /// Where the held bytes of `pending` start; `None` when nothing is held.
    held_from: Option<usize>,
    /// What holds the bytes of `pending` up to each end, in order (ends rising).
    marks: std::collections::VecDeque<Hold>,
}

/// One hold: the bytes up to `end` (from the previous hold's end) go once `gate` is open.
#[derive(Debug, Clone, Copy)]
struct Hold {
    gate: Gate,
    end: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    /// Until the journal's `durable` reaches this.
    Durable(u64),
    /// Until the answer with this token is written in at `end` ([`OutQueue::fill`]).
    Slot(u32),
    /// Filled: goes with the holds before it.
    Open,
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
            // Released in order anyway: a need no higher than the last hold's joins it.
            Some(Hold {
                gate: Gate::Durable(n),
                end: e,
            }) if *n >= need => *e = end,
            _ => self.marks.push_back(Hold {
                gate: Gate::Durable(need),
                end,
            }),
        }
    }

    /// Reserves the place of an answer to be written later ([`OutQueue::fill`] with the same
    /// `token`): from here on everything queued is held until it is filled.
    pub fn hold_slot(&mut self, token: u32) {
        let end = self.pending.len();
        self.held_from.get_or_insert(end);
        self.marks.push_back(Hold {
            gate: Gate::Slot(token),
            end,
        });
    }

    /// Writes the answer of slot `token` in its place; false when there is no such slot (the
    /// connection dropped its output). [`OutQueue::release`] then lets it go.
    pub fn fill(&mut self, token: u32, frame: &[u8]) -> bool {
        let Some(i) = self.marks.iter().position(|h| h.gate == Gate::Slot(token)) else {
            return false;
        };
        let at = self.marks[i].end;
        self.pending.splice(at..at, frame.iter().copied());
        for h in self.marks.iter_mut().skip(i) {
            h.end += frame.len();
        }
        self.marks[i].gate = Gate::Open;
        true
    }

    /// Releases what may go now that the journal is durable up to `durable` (and what filled
    /// slots opened); true if any was.
    pub fn release(&mut self, durable: u64) -> bool {
        let Some(from) = self.held_from else {
            return false;
        };
        let mut upto = from;
        while let Some(&h) = self.marks.front() {
            match h.gate {
                Gate::Durable(need) if need > durable => break,
                Gate::Slot(_) => break,
                Gate::Durable(_) | Gate::Open => {}
            }
            upto = h.end;
            self.marks.pop_front();
        }
        if self.marks.is_empty() {
            // Bytes after the last hold (a push queued behind held answers) go with it.
            self.held_from = None;
            return true;
        }
        if upto == from {
            return false;
        }
        self.held_from = Some(upto);
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
            for h in self.marks.iter_mut() {
                h.end -= from;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sendable(q: &mut OutQueue) -> Vec<u8> {
        let out = q.take().unwrap_or_default();
        q.recycle(Vec::new());
        out
    }

    #[test]
    fn a_slot_holds_what_follows_it_until_filled_in_place() {
        let mut q = OutQueue::default();
        q.buf().extend_from_slice(b"a");
        q.hold_slot(7);
        q.buf().extend_from_slice(b"c");
        assert_eq!(sendable(&mut q), b"a", "what precedes the slot goes");
        assert!(q.holding());
        assert!(!q.release(u64::MAX), "an unfilled slot holds");
        assert!(!q.fill(8, b"x"), "no such slot");
        assert!(q.fill(7, b"B"));
        assert!(q.release(0));
        assert!(!q.holding());
        assert_eq!(
            sendable(&mut q),
            b"Bc",
            "the answer in its place, then what followed"
        );
    }

    #[test]
    fn slots_and_journal_holds_release_in_order() {
        let mut q = OutQueue::default();
        let m = q.mark();
        q.buf().extend_from_slice(b"1");
        q.hold_since(m, 10);
        q.hold_slot(1);
        let m = q.mark();
        q.buf().extend_from_slice(b"3");
        q.hold_since(m, 5);
        assert!(q.fill(1, b"2"));
        assert!(!q.release(9), "the first hold's journal need is not met");
        assert!(q.release(10));
        assert_eq!(sendable(&mut q), b"123");
        // A fill after part of the queue was sent.
        q.buf().extend_from_slice(b"a");
        q.hold_slot(2);
        q.buf().extend_from_slice(b"c");
        q.hold_slot(3);
        assert_eq!(sendable(&mut q), b"a");
        assert!(q.fill(3, b"D"));
        assert!(!q.release(0), "slot 2 first");
        assert!(q.fill(2, b"B"));
        assert!(q.release(0));
        assert_eq!(sendable(&mut q), b"BcD");
    }
}
