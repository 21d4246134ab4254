//! The byte stream under a client, plaintext or TLS: the workspace's one implementation, in
//! `ns-tls` (the C library's connections use it too).

pub use ns_tls::{ClientTls, Stream, TlsStream, Trust};
