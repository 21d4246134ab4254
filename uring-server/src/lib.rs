//! `uring-server` as a library: the master (`master`, a shell of forks, reaps and signals
//! around the decisions of `supervisor`), the worker (`worker`) and its two event loops,
//! io_uring (`uring`) and epoll (`epoll`), over its own SO_REUSEPORT listener; both loops drive
//! the same protocol logic (`core`), which works on the shared segment of the `shm` crate. The
//! binary (`main.rs`) parses the command line and calls in here; tests drive the core and the
//! supervisor directly, without sockets or processes.

#![warn(missing_docs)]

pub mod buf_ring;
pub mod chat;
pub mod cli;
pub mod clock;
pub mod config;
pub mod core;
pub mod durable;
pub mod epoll;
pub mod event_loop;
pub mod master;
pub mod metrics_http;
pub mod net;
pub mod sockets;
pub mod status;
pub mod stop;
pub mod supervisor;
pub mod tls;
pub mod tools;
pub mod uring;
pub mod uring_setup;
pub mod worker;
