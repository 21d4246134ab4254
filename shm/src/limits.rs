//! The sizes shared memory is laid out for. They equal the wire protocol's bounds (the server
//! asserts so at compile time), but this crate does not depend on the protocol: it stores what it
//! is given and refuses what does not fit.

#![forbid(unsafe_code)]

/// Longest user or room name, in bytes.
pub const NAME_LEN_MAX: usize = 32;
/// Longest chat message, in bytes.
pub const TEXT_LEN_MAX: usize = 4000;
/// Shortest SCRAM salt accepted at registration, in bytes.
pub const SALT_LEN_MIN: usize = 16;
/// Longest SCRAM salt stored, in bytes.
pub const SALT_LEN_MAX: usize = 64;
/// Fewest PBKDF2 iterations accepted at registration.
pub const ITERATIONS_MIN: u32 = 4096;
/// Most PBKDF2 iterations accepted at registration.
pub const ITERATIONS_MAX: u32 = 1 << 20;
