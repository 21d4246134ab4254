//! TLS on the server's side: the options, the configuration every worker inherits through the
//! fork, and the kernel TLS check, on the workspace's one TLS crate (`ns-tls`). The record
//! layer itself runs in the sans-IO core (`core::tls`).

pub use ns_tls::{generate, kernel_tls_available, server_config, TlsOptions, Validity};
