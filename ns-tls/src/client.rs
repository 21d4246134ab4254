//! The client's side: whom it trusts, and the configuration its connections share.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

use crate::{load_certs, load_key, load_roots, provider, ALPN};

/// Where the client's trust comes from.
#[derive(Debug, Clone)]
pub enum Trust {
    /// The CAs in this PEM file (`--tls-ca`).
    Ca(PathBuf),
    /// The system's CA bundle (/etc/ssl/certs/ca-certificates.crt).
    System,
    /// No verification of the server's certificate at all (`--tls-insecure`): for tests and
    /// self-signed setups only; the handshake's signatures are still checked.
    Insecure,
}

/// The system CA bundle's path on Debian and its relatives.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// What a client needs to open TLS connections: the configuration and the name the server's
/// certificate must carry.
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// The rustls configuration (shared by every connection).
    pub config: Arc<ClientConfig>,
    /// The DNS name or IP address the certificate is checked against.
    pub server_name: ServerName<'static>,
}

impl ClientTls {
    /// A client that trusts `trust`, expects `server_name` (a DNS name or an IP address) on the
    /// server's certificate, and presents `client_cert` (chain PEM, key PEM) if the server asks.
    pub fn new(
        trust: &Trust,
        server_name: &str,
        client_cert: Option<(&Path, &Path)>,
    ) -> anyhow::Result<ClientTls> {
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(rustls::ALL_VERSIONS)
            .context("TLS protocol versions")?;
        let builder = match trust {
            Trust::Ca(path) => builder.with_root_certificates(load_roots(path)?),
            Trust::System => builder.with_root_certificates(
                load_roots(Path::new(SYSTEM_CA_BUNDLE))
                    .context("no --tls-ca given and the system CA bundle is unusable")?,
            ),
            Trust::Insecure => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider))),
        };
        let mut config = match client_cert {
            Some((cert, key)) => builder
                .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
                .context("the client certificate and key do not make a usable pair")?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![ALPN.to_vec()];
        let server_name = ServerName::try_from(server_name.to_string())
            .with_context(|| format!("{server_name:?} is not a DNS name or an IP address"))?;
        Ok(ClientTls {
            config: Arc::new(config),
            server_name,
        })
    }

    /// The same client with session resumption off: every handshake is a full one (rustls
    /// resumes by default, from tickets the server sent on earlier connections).
    pub fn without_resumption(&self) -> ClientTls {
        let mut config = (*self.config).clone();
        config.resumption = rustls::client::Resumption::disabled();
        ClientTls {
            config: Arc::new(config),
            server_name: self.server_name.clone(),
        }
    }

    /// A new client connection (its handshake not yet begun).
    pub fn connection(&self) -> Result<rustls::ClientConnection, rustls::Error> {
        rustls::ClientConnection::new(self.config.clone(), self.server_name.clone())
    }
}

/// `--tls-insecure`: any certificate is taken; the handshake's signatures are still checked
/// with the provider's algorithms, so the peer must hold the key of the certificate it sent.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
