//! Sessions: HELLO, REGISTER, and the SCRAM-SHA-256 login (LOGIN, LOGIN_PROOF) with its lockout
//! after failed proofs (PROTOCOL.md 8.1–8.2).

use proto::body::*;
use proto::{Response, Status};

use super::error::{Handled, HandlerError};
use super::{ConnState, Ctx, Session};
use shm::ledger;

/// How long a LOGIN challenge stays valid.
const CHALLENGE_TTL_MS: u64 = 10_000;
/// Consecutive failed proofs allowed before a user's logins are refused for a while.
const LOGIN_FAILURES_FREE: u32 = 3;
/// Longest lock-out after failed logins.
const LOGIN_LOCKOUT_MAX_MS: u64 = 60_000;
/// The server's name in HELLO.
const SERVER_LABEL: &str = concat!("uring-server/", env!("CARGO_PKG_VERSION"));

impl Ctx<'_> {
    pub(super) fn hello(&self) -> Response<'static> {
        let server = Label::new(SERVER_LABEL)
            .or_else(|_| Label::new("uring-server"))
            .unwrap_or_else(|_| unreachable!("both labels are under 64 bytes"));
        Response::Hello(HelloResponse {
            server,
            worker_id: self.cfg.worker,
            body_len_max: self.cfg.body_len_max,
            heartbeat_interval_ms: (self.cfg.idle_timeout_ms / 3).min(u64::from(u32::MAX)) as u32,
            idle_timeout_ms: self.cfg.idle_timeout_ms.min(u64::from(u32::MAX)) as u32,
            server_time_ms: self.wall_ms,
        })
    }

    pub(super) fn register(
        &mut self,
        st: &mut ConnState,
        id: u64,
        r: &RegisterRequest<'_>,
    ) -> Handled {
        if !self.cfg.registration_open {
            return Err(HandlerError::new(
                Status::ErrRegistrationClosed,
                "registration is closed: ask the operator (uring-server adduser)",
            ));
        }
        let creds = shm::Credentials {
            salt: r.salt.as_bytes().to_vec(),
            iterations: r.iterations,
            stored_key: r.stored_key,
            server_key: r.server_key,
        };
        let registered = self.users.register(r.username.as_str(), &creds);
        // A registration's record is appended by the journal lock itself, with every other
        // user not yet journaled (shm::journal), so its own LSN is not known here: the answer,
        // and a refusal that rests on another registration, wait for all appended so far.
        self.hold_until = Some(shm::journal::head(self.seg));
        let user_id = registered?;
        tracing::info!(user = r.username.as_str(), user_id, "registered");
        self.respond(st, id, &Response::Register(RegisterResponse { user_id }));
        Ok(())
    }

    pub(super) fn login(&mut self, st: &mut ConnState, id: u64, l: &LoginRequest<'_>) -> Handled {
        let name = l.username.as_str();
        let user_id = self.users.lookup(name).ok_or_else(|| {
            HandlerError::new(
                Status::ErrNotFound,
                format!("no user {name}: REGISTER first"),
            )
        })?;
        let (failures, last_failure_ms) = self.users.login_failures(user_id);
        if failures >= LOGIN_FAILURES_FREE {
            let lockout =
                (1000u64 << (failures - LOGIN_FAILURES_FREE).min(16)).min(LOGIN_LOCKOUT_MAX_MS);
            let until = last_failure_ms + lockout;
            if self.wall_ms < until {
                return Err(HandlerError::new(
                    Status::ErrRateLimited,
                    format!(
                        "{failures} failed logins: retry in {} ms",
                        until - self.wall_ms
                    ),
                ));
            }
        }
        let creds = self
            .users
            .credentials(user_id)
            .ok_or_else(|| HandlerError::new(Status::ErrNotFound, format!("no user {name}")))?;
        let mut server_nonce = [0u8; 24];
        getrandom::fill(&mut server_nonce)
            .map_err(|_| HandlerError::new(Status::ErrInternal, "no randomness"))?;
        let (Ok(salt), Ok(nonce)) = (Salt::new(&creds.salt), Nonce::new(&server_nonce)) else {
            return Err(HandlerError::new(
                Status::ErrInternal,
                "stored salt out of bounds",
            ));
        };
        let resp = Response::Login(LoginResponse {
            salt,
            iterations: creds.iterations,
            server_nonce: nonce,
        });
        let auth_message = proto::scram::auth_message(
            name,
            l.client_nonce.as_bytes(),
            &server_nonce,
            &creds.salt,
            creds.iterations,
        );
        self.respond(st, id, &resp);
        st.session = Session::Challenged {
            user_id,
            auth_message,
            expires_ms: self.now_ms + CHALLENGE_TTL_MS,
        };
        Ok(())
    }

    pub(super) fn login_proof(
        &mut self,
        st: &mut ConnState,
        id: u64,
        p: &LoginProofRequest,
    ) -> Handled {
        let Session::Challenged {
            user_id,
            auth_message,
            expires_ms,
        } = std::mem::replace(&mut st.session, Session::Connected)
        else {
            return Err(HandlerError::new(Status::ErrBadState, "send LOGIN first"));
        };
        if self.now_ms > expires_ms {
            return Err(HandlerError::new(
                Status::ErrTimeout,
                "login challenge expired: LOGIN again",
            ));
        }
        let creds = self
            .users
            .credentials(user_id)
            .ok_or_else(|| HandlerError::new(Status::ErrNotFound, "user vanished"))?;
        if !proto::scram::verify_client_proof(&creds.stored_key, &auth_message, &p.client_proof) {
            let failures = self.users.note_login_failure(user_id, self.wall_ms);
            tracing::info!(user_id, failures, "failed login");
            return Err(HandlerError::new(Status::ErrUnauthorized, "wrong password"));
        }
        self.users.note_login_success(user_id);
        let sid = self.session_id(st);
        if let Ok(Some(previous)) = self.users.set_online(user_id, sid) {
            // The newer session wins; the older one's worker notices on its next sweep.
            tracing::info!(user_id, ?previous, "login replaces an older session");
        }
        st.session = Session::LoggedIn { user_id };
        st.name = self.users.name(user_id).unwrap_or_default();
        self.chat.users.insert(user_id, (st.key, st.id));
        let server_signature = proto::scram::server_signature_of(&creds.server_key, &auth_message);
        self.respond(
            st,
            id,
            &Response::LoginProof(LoginProofResponse {
                server_signature,
                user_id,
                req_id_hw: ledger::req_id_hw(self.seg, user_id).unwrap_or(0),
                req_id_window: ledger::results_per_user(self.seg),
            }),
        );
        Ok(())
    }
}
