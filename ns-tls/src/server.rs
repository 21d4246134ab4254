//! The server's side: its options and configuration.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;

use crate::{load_certs, load_key, load_roots, provider, versions, ALPN};

/// What the server's command line says about TLS.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// The server's certificate chain (PEM, leaf first).
    pub cert: Option<PathBuf>,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM).
    pub client_ca: Option<PathBuf>,
    /// Accept TLS 1.2 as well as 1.3.
    pub allow_tls12: bool,
}

impl TlsOptions {
    /// True when the server speaks TLS.
    pub fn enabled(&self) -> bool {
        self.cert.is_some()
    }
}

/// The server's TLS configuration, or `None` when TLS is off. Errors name the file at fault, so
/// a wrong path or key stops the start with a clear message.
pub fn server_config(opts: &TlsOptions) -> anyhow::Result<Option<Arc<ServerConfig>>> {
    let (Some(cert), key) = (&opts.cert, &opts.key) else {
        if opts.key.is_some() || opts.client_ca.is_some() {
            anyhow::bail!("--tls-key and --tls-client-ca need --tls-cert");
        }
        return Ok(None);
    };
    let key = key
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("--tls-cert needs --tls-key"))?;
    let certs = load_certs(cert)?;
    let key = load_key(key)?;
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions(opts.allow_tls12))
        .context("TLS protocol versions")?;
    let builder = match &opts.client_ca {
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(load_roots(ca)?), provider)
                    .build()
                    .context("client certificate verifier")?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .context("the certificate and key do not make a usable pair")?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    // Our suite order (AES-128-GCM first, see `provider`), whatever the client prefers.
    config.ignore_client_order = true;
    Ok(Some(Arc::new(config)))
}

/// Whether the kernel offers TLS offload (kTLS): the `tls` upper-layer protocol in
/// `/proc/sys/net/ipv4/tcp_available_ulp`. The server logs the answer; the record layer is
/// rustls's either way (handing it to the kernel after the handshake is not built: this
/// project's kernels do not have it, so it could not be tested).
pub fn kernel_tls_available() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_ulp")
        .map(|s| s.split_whitespace().any(|u| u == "tls"))
        .unwrap_or(false)
}
