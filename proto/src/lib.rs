//! The NS wire protocol, shared by `uring-server` and `bench-client`.
//!
//! This crate owns the bytes on the wire and nothing else: the 32-byte frame [`header`], the
//! [`codes`] (opcodes, statuses, notices), the [`body`] of every opcode built from the
//! [`codec`]'s bounded fields, whole [`frame`]s (the incremental decoder and the encoders), and
//! the [`scram`] login math. It never touches a socket, a thread or a clock, and it never panics
//! on bytes from a peer: every failure is a typed error.
//!
//! `docs/PROTOCOL.md` is the normative description; `tests/protocol_doc.rs` decodes its hex
//! dumps with this crate so the two cannot drift apart.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod body;
pub mod codec;
pub mod codes;
pub mod frame;
pub mod fuzz;
pub mod header;
pub mod scram;

pub use body::{Push, Reply, Request, Response};
pub use codec::{BodyError, Field};
pub use codes::{Opcode, Status};
pub use frame::{
    write_error, write_frame, write_push, write_request, write_response, DecodeError, EncodeError,
    Frame, FrameDecoder, FrameHead, BODY_LEN_LIMIT, BODY_LEN_MAX_DEFAULT,
};
pub use header::{Flags, FrameKind, Header, RawHeader, HEADER_LEN};
