//! The NS client library and load generator.
//!
//! [`client`] is a blocking client for programs and tests; [`load`] drives many connections
//! from a few threads, each with its own event loop, and measures latency with HdrHistograms.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod chaos;
pub mod cli;
pub mod client;
pub mod commands;
pub mod cpu_time;
pub mod cpus;
pub mod handshakes;
pub mod hgrm;
pub mod interactive;
pub mod load;
pub mod peers;
pub mod report;
pub mod resp;
pub mod resp_mix;
pub mod rng;
pub mod scratch;
pub mod server;
mod setup;
pub mod summary;
pub mod transport;

pub use client::{Client, ClientError, Received, Retry};
pub use transport::{ClientTls, Stream, Trust};
