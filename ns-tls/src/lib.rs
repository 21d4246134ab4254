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

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::pki_types::{ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

pub use rustls;

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

/// The crypto provider every TLS object of the workspace uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
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
    Ok(Some(Arc::new(config)))
}

/// The ALPN name of the NS protocol (offered, never required: a client without ALPN is served).
pub const ALPN: &[u8] = b"ns/1";

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

/// Whether the kernel offers TLS offload (kTLS): the `tls` upper-layer protocol in
/// `/proc/sys/net/ipv4/tcp_available_ulp`. The server logs the answer; the record layer is
/// rustls's either way (handing it to the kernel after the handshake is not built: this
/// project's kernels do not have it, so it could not be tested).
pub fn kernel_tls_available() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_ulp")
        .map(|s| s.split_whitespace().any(|u| u == "tls"))
        .unwrap_or(false)
}

/// The files `gen-cert` writes.
#[derive(Debug, Clone)]
pub struct GeneratedCerts {
    /// The CA's certificate: what clients trust (`--tls-ca`) and what `--tls-client-ca` takes.
    pub ca: PathBuf,
    /// The server's certificate chain (leaf, then the CA).
    pub cert: PathBuf,
    /// The server's private key.
    pub key: PathBuf,
    /// A client certificate signed by the same CA, for `--tls-client-ca` setups.
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
}

/// How long generated certificates are valid, or that they expired already (for tests of a
/// refused handshake).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// From yesterday for `days` days.
    Days(u32),
    /// Expired yesterday.
    Expired,
}

/// Writes a fresh CA, a server certificate for `names` (DNS names or IP addresses) and a client
/// certificate into `dir`: a test PKI, not for production.
pub fn generate(
    dir: &Path,
    names: &[String],
    validity: Validity,
) -> anyhow::Result<GeneratedCerts> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let day = time::Duration::days(1);
    let now = time::OffsetDateTime::now_utc();
    let (not_before, not_after) = match validity {
        Validity::Days(d) => (now - day, now + day * i32::try_from(d).unwrap_or(i32::MAX)),
        Validity::Expired => (now - day * 30, now - day),
    };
    let dated = |mut p: CertificateParams, cn: &str| {
        p.not_before = not_before;
        p.not_after = not_after;
        p.distinguished_name.push(DnType::CommonName, cn);
        p
    };
    let ca_key = KeyPair::generate()?;
    let mut ca_params = dated(CertificateParams::new(Vec::<String>::new())?, "NS test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf = |names: Vec<String>, cn: &str, usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate()?;
        let mut p = dated(CertificateParams::new(names)?, cn);
        p.extended_key_usages = vec![usage];
        let cert = p.signed_by(&key, &issuer)?;
        anyhow::Ok((cert, key))
    };
    let (server, server_key) = leaf(
        names.to_vec(),
        "uring-server",
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    let (client, client_key) = leaf(
        Vec::new(),
        "bench-client",
        ExtendedKeyUsagePurpose::ClientAuth,
    )?;
    let out = GeneratedCerts {
        ca: dir.join("ca.pem"),
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client-key.pem"),
    };
    let write = |path: &Path, text: String| {
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    };
    write(&out.ca, ca_cert.pem())?;
    write(&out.cert, format!("{}{}", server.pem(), ca_cert.pem()))?;
    write(&out.key, server_key.serialize_pem())?;
    write(
        &out.client_cert,
        format!("{}{}", client.pem(), ca_cert.pem()),
    )?;
    write(&out.client_key, client_key.serialize_pem())?;
    for key in [&out.key, &out.client_key] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(out)
}
