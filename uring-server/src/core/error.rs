//! Why a handler refused a request: a typed error with one mapping to the status the client
//! gets, and a message for a person to read.

use std::borrow::Cow;

use proto::Status;
use shm::ledger::LedgerError;
use shm::{RoomError, UserError};

use crate::status::HasStatus;

/// A refusal. Handlers return it; the dispatcher answers it with [`HandlerError::status`] and
/// the error's text.
#[derive(Debug)]
pub enum HandlerError {
    /// The ledger refused.
    Ledger(LedgerError),
    /// The users table refused.
    User(UserError),
    /// The rooms refused.
    Room(RoomError),
    /// A rule of the handler's own, with its status.
    Refused(Status, Cow<'static, str>),
}

impl HandlerError {
    /// A refusal with `status` and `message`.
    pub fn new(status: Status, message: impl Into<Cow<'static, str>>) -> HandlerError {
        HandlerError::Refused(status, message.into())
    }

    /// The status the client is answered with.
    pub fn status(&self) -> Status {
        match self {
            HandlerError::Ledger(e) => e.status(),
            HandlerError::User(e) => e.status(),
            HandlerError::Room(e) => e.status(),
            HandlerError::Refused(status, _) => *status,
        }
    }
}

impl std::fmt::Display for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandlerError::Ledger(e) => e.fmt(f),
            HandlerError::User(e) => e.fmt(f),
            HandlerError::Room(e) => e.fmt(f),
            HandlerError::Refused(_, message) => f.write_str(message),
        }
    }
}

impl From<LedgerError> for HandlerError {
    fn from(e: LedgerError) -> Self {
        HandlerError::Ledger(e)
    }
}

impl From<UserError> for HandlerError {
    fn from(e: UserError) -> Self {
        HandlerError::User(e)
    }
}

impl From<RoomError> for HandlerError {
    fn from(e: RoomError) -> Self {
        HandlerError::Room(e)
    }
}

impl From<proto::BodyError> for HandlerError {
    /// A body the server built did not fit its own bounds: a bug, answered ERR_INTERNAL.
    fn from(e: proto::BodyError) -> Self {
        HandlerError::Refused(Status::ErrInternal, e.to_string().into())
    }
}

/// Handlers respond themselves on success, or return why they refused.
pub type Handled = Result<(), HandlerError>;
