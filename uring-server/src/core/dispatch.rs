//! From a verified frame to its handler: the checks every request passes first (a request, no
//! unsupported flag, a well-formed body, logged in where it must be, a session still current),
//! then one handler per request, and every refusal answered the same way.

use proto::body::*;
use proto::{Frame, FrameKind, Request, Response, Status};
use shm::ledger::LedgerError;

use super::error::{Handled, HandlerError};
use super::{ConnState, Ctx, Session};
use crate::status::opcode_index;

impl Ctx<'_> {
    /// Answers one verified frame.
    pub(super) fn handle(&mut self, st: &mut ConnState, frame: &Frame<'_>) {
        let h = frame.header;
        let op = h.opcode;
        self.metrics.requests[opcode_index(op)].add(1);
        if h.kind() != FrameKind::Request {
            return self.error(
                st,
                h.req_id,
                op.as_u16(),
                Status::ErrBadPacket,
                "only requests may be sent to the server",
            );
        }
        if h.flags.is_encrypted() || h.flags.is_compressed() {
            return self.error(
                st,
                h.req_id,
                op.as_u16(),
                Status::ErrUnsupported,
                "encrypted and compressed bodies are not supported",
            );
        }
        let req = match frame.request() {
            Ok(r) => r,
            Err(e) => {
                return self.error(
                    st,
                    h.req_id,
                    op.as_u16(),
                    Status::ErrBadPacket,
                    &e.to_string(),
                )
            }
        };
        let logged_in = match st.session {
            Session::LoggedIn { user_id } => Some(user_id),
            _ => None,
        };
        if logged_in.is_some() && self.superseded(st) {
            // A newer login took the session: nothing this connection sends is executed any
            // more, even if its bytes were read before the newer login's worker told us.
            self.error(
                st,
                h.req_id,
                op.as_u16(),
                Status::ErrSessionSuperseded,
                &LedgerError::SessionSuperseded.to_string(),
            );
            return self.kick_superseded(st);
        }
        if logged_in.is_none() && !op.allowed_before_login() {
            return self.error(
                st,
                h.req_id,
                op.as_u16(),
                Status::ErrUnauthorized,
                "log in first",
            );
        }
        tracing::trace!(
            conn = st.id,
            req_id = h.req_id,
            opcode = op.name(),
            "request"
        );
        let id = h.req_id;
        self.hold_until = None;
        let mark = st.out.mark();
        let result = match (req, logged_in) {
            (Request::Hello(_), _) => {
                let resp = self.hello();
                self.respond(st, id, &resp);
                Ok(())
            }
            (Request::Heartbeat(hb), _) => {
                let resp = Response::Heartbeat(HeartbeatResponse {
                    client_time_ms: hb.client_time_ms,
                    server_time_ms: self.wall_ms,
                });
                self.respond(st, id, &resp);
                Ok(())
            }
            (Request::Register(r), None) => self.register(st, id, &r),
            (Request::Login(l), None) => self.login(st, id, &l),
            (Request::LoginProof(p), None) => self.login_proof(st, id, &p),
            (Request::Register(_) | Request::Login(_) | Request::LoginProof(_), Some(_)) => {
                Err(HandlerError::new(Status::ErrBadState, "already logged in"))
            }
            (Request::Logout(_), Some(_)) => {
                self.end_session(st);
                st.session = Session::Connected;
                self.respond(st, id, &Response::Logout(Empty {}));
                Ok(())
            }
            (req, Some(user)) => self.operation(st, user, id, req),
            (_, None) => Err(HandlerError::new(Status::ErrUnauthorized, "log in first")),
        };
        let mut hold_until = self.hold_until.take();
        if let Err(e) = result {
            let status = e.status();
            // "Not applied: the journal cannot write" rests on nothing the disk must hold.
            if status == Status::ErrStorageUnavailable {
                hold_until = None;
            }
            self.error(st, id, op.as_u16(), status, &e.to_string());
            if status == Status::ErrSessionSuperseded {
                self.kick_superseded(st);
            }
        }
        // The handler said what its answer rests on (a record of its own, or what a read saw);
        // the answer goes out once the journal is durable that far.
        if let Some(need) = hold_until.filter(|_| self.journal_on) {
            if need > shm::journal::durable(self.seg) {
                // A connection joins the holding list when its queue starts holding; while it
                // holds it is listed already (no search on this path).
                let was_holding = st.out.holding();
                st.out.hold_since(mark, need);
                if !was_holding && st.out.holding() {
                    self.holding.push(st.key);
                }
            }
        }
    }

    /// Requests of a logged-in user, each to the handler of its concern.
    fn operation(&mut self, st: &mut ConnState, user: u32, id: u64, req: Request<'_>) -> Handled {
        match req {
            Request::Deposit(a) => self.one_account(st, user, id, a.amount, false),
            Request::Withdraw(a) => self.one_account(st, user, id, a.amount, true),
            Request::Transfer(t) => self.transfer(st, user, id, &t),
            Request::Balance(_) => self.balance(st, user, id),
            Request::TxnHistory(q) => self.txn_history(st, user, id, &q),
            Request::ListUsers(q) => self.list_users(st, id, &q),
            Request::UserNames(q) => self.user_names(st, id, &q),
            Request::DirectSend(d) => self.direct_send(st, user, id, &d),
            Request::JoinRoom(j) => self.join_room(st, user, id, &j),
            Request::LeaveRoom(l) => self.leave_room(st, user, id, l.room_id),
            Request::ChatSend(c) => self.chat_send(st, user, id, &c),
            Request::ListRooms(q) => self.list_rooms(st, id, &q),
            Request::RoomHistory(q) => self.room_history(st, id, &q),
            _ => Err(HandlerError::new(Status::ErrBadPacket, "not an operation")),
        }
    }
}
