//! TLS for the NS protocol, with rustls, in one place for the server, the bench client and the
//! tests: the server's and the client's configurations from PEM files (the client verifies the
//! server's certificate unless told not to), a test certificate authority (`uring-server
//! gen-cert`), and the kernel TLS check.
//!
//! The server runs the record layer inside its sans-IO core (`uring-server`'s `core::tls`): the
//! backends still move only bytes, now ciphertext, so io_uring and epoll keep one loop each.
//! rustls's buffered connections are used over in-memory reads and writes (as sans-IO as the
//! unbuffered API, and the state machine rustls tests most); the crypto provider is
//! rustls's default, aws-lc-rs (AES-GCM and ChaCha20-Poly1305 in assembly, X25519MLKEM768
//! key exchange preferred; *ring*'s provider is deprecated for lacking post-quantum groups).

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

pub use rustls;

mod client;
mod pki;
mod server;
mod stream;

pub use client::{ClientTls, Trust, SYSTEM_CA_BUNDLE};
pub use pki::{generate, GeneratedCerts, Validity};
pub use server::{kernel_tls_available, server_config, TlsOptions};
pub use stream::{Stream, TlsStream};

/// The ALPN name of the NS protocol (offered, never required: a client without ALPN is served).
pub const ALPN: &[u8] = b"ns/1";

/// The crypto provider every TLS object of the workspace uses: aws-lc-rs, with AES-128-GCM
/// suites preferred to AES-256-GCM (rustls's default order puts AES-256 first). AES-128 is the
/// 128-bit security level the key exchange and the P-256 certificates give anyway, its records
/// take 10 AES rounds instead of 14, and its key schedule runs on SHA-256, which this kind of
/// CPU has instructions for, instead of SHA-384 (results/tls-suites.txt measures the
/// difference). Both sides use it; the server also applies its own order (`ignore_client_order`).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    p.cipher_suites.sort_by_key(|s| match s.suite() {
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        | rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        | rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 0,
        _ => 1,
    });
    Arc::new(p)
}

/// The protocol versions allowed: TLS 1.3, and 1.2 when asked.
pub fn versions(allow_tls12: bool) -> &'static [&'static rustls::SupportedProtocolVersion] {
    static TLS13_ONLY: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
    if allow_tls12 {
        rustls::ALL_VERSIONS
    } else {
        &TLS13_ONLY
    }
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path)
        .with_context(|| format!("reading the private key in {}", path.display()))
}

/// Every certificate in a PEM file.
pub fn load_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading certificates from {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing certificates in {}", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{} holds no certificate", path.display());
    }
    Ok(certs)
}

/// A CA file's certificates as a root store.
pub fn load_roots(path: &Path) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .with_context(|| format!("a CA certificate in {}", path.display()))?;
    }
    Ok(roots)
}
