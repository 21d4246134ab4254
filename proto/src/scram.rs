//! The login math: SCRAM-SHA-256 (RFC 5802, RFC 7677), with the AuthMessage encoded in the
//! protocol's own binary form instead of SCRAM's text attributes.
//!
//! The password never crosses the wire, and the server stores only `StoredKey` and `ServerKey`,
//! from which one cannot log in: a proof needs `ClientKey`, and `StoredKey` is its SHA-256.
//!
//! ```text
//! SaltedPassword  = PBKDF2-HMAC-SHA-256(password, salt, iterations, 32 bytes)
//! ClientKey       = HMAC-SHA-256(SaltedPassword, "Client Key")
//! StoredKey       = SHA-256(ClientKey)
//! ServerKey       = HMAC-SHA-256(SaltedPassword, "Server Key")
//! ClientSignature = HMAC-SHA-256(StoredKey, AuthMessage)
//! ClientProof     = ClientKey XOR ClientSignature
//! ServerSignature = HMAC-SHA-256(ServerKey, AuthMessage)
//! ```

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::body::Key;

/// The fewest PBKDF2 iterations a server should accept (RFC 7677's minimum).
pub const ITERATIONS_MIN: u32 = 4096;
/// The iterations a client picks when it registers, unless told otherwise.
pub const ITERATIONS_DEFAULT: u32 = 4096;
/// The most iterations a server should accept, so a registration cannot make every later login
/// of that user cost the server seconds of CPU.
pub const ITERATIONS_MAX: u32 = 1 << 20;

/// The first bytes of every AuthMessage: names the scheme and protocol version.
pub const AUTH_MESSAGE_PREFIX: &[u8] = b"NS1 SCRAM-SHA-256";

fn hmac(key: &[u8], data: &[u8]) -> Key {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn sha256(data: &[u8]) -> Key {
    Sha256::digest(data).into()
}

fn xor(a: &Key, b: &Key) -> Key {
    let mut out = [0u8; 32];
    for (o, (x, y)) in out.iter_mut().zip(a.iter().zip(b)) {
        *o = x ^ y;
    }
    out
}

/// What a server stores for a user (with the salt and iterations), as REGISTER carries it.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredCredentials {
    /// SHA-256(ClientKey).
    pub stored_key: Key,
    /// HMAC(SaltedPassword, "Server Key").
    pub server_key: Key,
}

impl core::fmt::Debug for StoredCredentials {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Keys are secrets of a sort: keep them out of logs.
        f.write_str("StoredCredentials { .. }")
    }
}

/// The client's secret for one login: the keys derived from the password.
#[derive(Clone)]
pub struct ClientSecret {
    client_key: Key,
    server_key: Key,
}

impl core::fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("ClientSecret { .. }")
    }
}

impl ClientSecret {
    /// Runs PBKDF2 on the password; costs `iterations` HMACs.
    pub fn derive(password: &[u8], salt: &[u8], iterations: u32) -> ClientSecret {
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut salted);
        ClientSecret {
            client_key: hmac(&salted, b"Client Key"),
            server_key: hmac(&salted, b"Server Key"),
        }
    }

    /// What REGISTER sends and the server stores.
    pub fn stored(&self) -> StoredCredentials {
        StoredCredentials {
            stored_key: sha256(&self.client_key),
            server_key: self.server_key,
        }
    }

    /// The proof LOGIN_PROOF sends.
    pub fn proof(&self, auth_message: &[u8]) -> Key {
        let stored_key = sha256(&self.client_key);
        xor(&self.client_key, &hmac(&stored_key, auth_message))
    }

    /// True when the server's signature proves it holds this user's ServerKey.
    pub fn verify_server(&self, auth_message: &[u8], server_signature: &Key) -> bool {
        server_signature_of(&self.server_key, auth_message)
            .ct_eq(server_signature)
            .into()
    }
}

/// The AuthMessage both sides sign: the prefix, then the user name, client nonce, server nonce
/// and salt each as a u16 length and bytes, then the iterations as a u32, all big-endian.
pub fn auth_message(
    username: &str,
    client_nonce: &[u8],
    server_nonce: &[u8],
    salt: &[u8],
    iterations: u32,
) -> Vec<u8> {
    let parts: [&[u8]; 4] = [username.as_bytes(), client_nonce, server_nonce, salt];
    let mut out = Vec::with_capacity(
        AUTH_MESSAGE_PREFIX.len() + parts.iter().map(|p| 2 + p.len()).sum::<usize>() + 4,
    );
    out.extend_from_slice(AUTH_MESSAGE_PREFIX);
    for part in parts {
        // Every part is bounded by its body field far below 64 KiB; saturate rather than wrap
        // so a misuse can only fail the login, never alias two messages.
        let len = u16::try_from(part.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(part);
    }
    out.extend_from_slice(&iterations.to_be_bytes());
    out
}

/// Server side: true when `proof` shows knowledge of the ClientKey behind `stored_key`.
pub fn verify_client_proof(stored_key: &Key, auth_message: &[u8], proof: &Key) -> bool {
    let client_key = xor(proof, &hmac(stored_key, auth_message));
    sha256(&client_key).ct_eq(stored_key).into()
}

/// Server side: the signature LOGIN_PROOF's response carries.
pub fn server_signature_of(server_key: &Key, auth_message: &[u8]) -> Key {
    hmac(server_key, auth_message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_correct_password_logs_in_and_a_wrong_one_does_not() {
        let salt = [7u8; 16];
        let stored = ClientSecret::derive(b"pencil", &salt, ITERATIONS_MIN).stored();
        let am = auth_message("alice", &[1; 16], &[2; 16], &salt, ITERATIONS_MIN);

        let good = ClientSecret::derive(b"pencil", &salt, ITERATIONS_MIN);
        assert!(verify_client_proof(
            &stored.stored_key,
            &am,
            &good.proof(&am)
        ));
        let sig = server_signature_of(&stored.server_key, &am);
        assert!(good.verify_server(&am, &sig));

        let bad = ClientSecret::derive(b"pencil2", &salt, ITERATIONS_MIN);
        assert!(!verify_client_proof(
            &stored.stored_key,
            &am,
            &bad.proof(&am)
        ));
        assert!(!bad.verify_server(&am, &sig));
    }

    #[test]
    fn a_proof_is_bound_to_its_auth_message() {
        let salt = [9u8; 16];
        let secret = ClientSecret::derive(b"pw", &salt, ITERATIONS_MIN);
        let stored = secret.stored();
        let am1 = auth_message("bob", &[1; 16], &[2; 16], &salt, ITERATIONS_MIN);
        let am2 = auth_message("bob", &[1; 16], &[3; 16], &salt, ITERATIONS_MIN);
        // A proof replayed against a new server nonce fails.
        assert!(!verify_client_proof(
            &stored.stored_key,
            &am2,
            &secret.proof(&am1)
        ));
        // Knowing only what the server stores is not enough: StoredKey used as a ClientKey fails.
        let forged = xor(&stored.stored_key, &hmac(&stored.stored_key, &am1));
        assert!(!verify_client_proof(&stored.stored_key, &am1, &forged));
    }

    #[test]
    fn pbkdf2_matches_the_published_vector() {
        // RFC 7914 section 11: PBKDF2-HMAC-SHA256("passwd", "salt", 1, 64), first 32 bytes.
        let mut out = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(b"passwd", b"salt", 1, &mut out);
        assert_eq!(out[..8], [0x55, 0xac, 0x04, 0x6e, 0x56, 0xe3, 0x08, 0x9f]);
    }
}
