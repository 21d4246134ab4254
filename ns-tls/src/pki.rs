//! A test PKI: what `uring-server gen-cert` writes and the tests run with.

use std::path::{Path, PathBuf};

use anyhow::Context;

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
