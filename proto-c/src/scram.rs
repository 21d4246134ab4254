//! The SCRAM-SHA-256 client steps (PROTOCOL.md 8.2): the LOGIN request with a fresh nonce, the
//! LOGIN_PROOF from the server's salt and nonce, the check of the server's signature; and the
//! verifier a REGISTER carries, computed from a password that never leaves the client.

use proto::scram::{auth_message, ClientSecret};

use crate::bodies::*;
use crate::{guard, NS_ERR_AUTH, NS_ERR_INVALID, NS_ERR_NULL, NS_OK};

/// A login in progress. Holds the user name, the password (until the proof is made) and the
/// exchange so far. Free with `ns_scram_client_free`.
pub struct ns_scram_client {
    user: Vec<u8>,
    password: Vec<u8>,
    client_nonce: [u8; 24],
    auth_message: Vec<u8>,
    secret: Option<ClientSecret>,
}

impl std::fmt::Debug for ns_scram_client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ns_scram_client").finish_non_exhaustive()
    }
}

impl Drop for ns_scram_client {
    fn drop(&mut self) {
        self.password.fill(0);
    }
}

/// Starts a login for `user` (1..=32 bytes of UTF-8) with `password`, drawing a random client
/// nonce. `*out` gets the handle.
///
/// # Safety
/// `user` and `password` valid; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn ns_scram_client_new(
    user: ns_bytes,
    password: ns_bytes,
    out: *mut *mut ns_scram_client,
) -> i32 {
    guard(|| {
        // SAFETY: per the contract.
        let (Some(u), Some(p), Some(out)) = (
            unsafe { crate::slice(user.ptr, user.len) },
            unsafe { crate::slice(password.ptr, password.len) },
            unsafe { out.as_mut() },
        ) else {
            return NS_ERR_NULL;
        };
        if u.is_empty() || u.len() > 32 || std::str::from_utf8(u).is_err() {
            return NS_ERR_INVALID;
        }
        let mut client_nonce = [0u8; 24];
        if getrandom::fill(&mut client_nonce).is_err() {
            return crate::NS_ERR_IO;
        }
        *out = Box::into_raw(Box::new(ns_scram_client {
            user: u.to_vec(),
            password: p.to_vec(),
            client_nonce,
            auth_message: Vec::new(),
            secret: None,
        }));
        NS_OK
    })
}

/// Frees a login handle (null is ignored); wipes the password it held.
///
/// # Safety
/// `c` from `ns_scram_client_new`, not used again.
#[no_mangle]
pub unsafe extern "C" fn ns_scram_client_free(c: *mut ns_scram_client) {
    if !c.is_null() {
        // SAFETY: per the contract, a Box this library leaked.
        drop(unsafe { Box::from_raw(c) });
    }
}

/// Step 1: fills `*req` with the LOGIN request (its bytes point into the handle).
///
/// # Safety
/// `c` a live handle; `req` writable.
#[no_mangle]
pub unsafe extern "C" fn ns_scram_client_login_request(
    c: *const ns_scram_client,
    req: *mut ns_request,
) -> i32 {
    guard(|| {
        // SAFETY: per the contract.
        let (Some(c), Some(req)) = (unsafe { c.as_ref() }, unsafe { req.as_mut() }) else {
            return NS_ERR_NULL;
        };
        req.opcode = NS_OP_LOGIN;
        req.body.login = ns_login_req {
            username: ns_bytes {
                ptr: c.user.as_ptr(),
                len: c.user.len(),
            },
            client_nonce: ns_bytes {
                ptr: c.client_nonce.as_ptr(),
                len: c.client_nonce.len(),
            },
        };
        NS_OK
    })
}

/// Step 2: from LOGIN's OK response (salt, iterations, server nonce), derives the key
/// (PBKDF2-HMAC-SHA-256: the slow part, by design) and fills `*req` with LOGIN_PROOF.
///
/// # Safety
/// `c` a live handle; `login` an OK LOGIN response; `req` writable.
#[no_mangle]
pub unsafe extern "C" fn ns_scram_client_proof(
    c: *mut ns_scram_client,
    login: *const ns_response,
    req: *mut ns_request,
) -> i32 {
    guard(|| {
        // SAFETY: per the contract.
        let (Some(c), Some(login), Some(req)) =
            (unsafe { c.as_mut() }, unsafe { login.as_ref() }, unsafe {
                req.as_mut()
            })
        else {
            return NS_ERR_NULL;
        };
        if login.opcode != NS_OP_LOGIN || login.status != NS_STATUS_OK {
            return NS_ERR_INVALID;
        }
        // SAFETY: an OK LOGIN response's member is `login` (checked above).
        let l = unsafe { login.body.login };
        // SAFETY: the response's bytes are valid while it is (contract).
        let (Some(salt), Some(server_nonce)) =
            (unsafe { crate::slice(l.salt.ptr, l.salt.len) }, unsafe {
                crate::slice(l.server_nonce.ptr, l.server_nonce.len)
            })
        else {
            return NS_ERR_NULL;
        };
        if !(proto::scram::ITERATIONS_MIN..=proto::scram::ITERATIONS_MAX).contains(&l.iterations) {
            return NS_ERR_INVALID;
        }
        let Ok(user) = std::str::from_utf8(&c.user) else {
            return NS_ERR_INVALID;
        };
        let secret = ClientSecret::derive(&c.password, salt, l.iterations);
        c.password.fill(0);
        c.auth_message = auth_message(user, &c.client_nonce, server_nonce, salt, l.iterations);
        req.opcode = NS_OP_LOGIN_PROOF;
        req.body.login_proof = ns_login_proof_req {
            client_proof: secret.proof(&c.auth_message),
        };
        c.secret = Some(secret);
        NS_OK
    })
}

/// Step 3: `NS_OK` when LOGIN_PROOF's OK response carries the signature only a server holding
/// this user's ServerKey can make; `NS_ERR_AUTH` otherwise (do not trust that server).
///
/// # Safety
/// `c` a live handle after step 2; `proof` an OK LOGIN_PROOF response.
#[no_mangle]
pub unsafe extern "C" fn ns_scram_client_verify(
    c: *const ns_scram_client,
    proof: *const ns_response,
) -> i32 {
    guard(|| {
        // SAFETY: per the contract.
        let (Some(c), Some(p)) = (unsafe { c.as_ref() }, unsafe { proof.as_ref() }) else {
            return NS_ERR_NULL;
        };
        if p.opcode != NS_OP_LOGIN_PROOF || p.status != NS_STATUS_OK {
            return NS_ERR_INVALID;
        }
        let Some(secret) = &c.secret else {
            return NS_ERR_INVALID;
        };
        // SAFETY: an OK LOGIN_PROOF response's member is `login_proof` (checked above).
        let sig = unsafe { p.body.login_proof.server_signature };
        if secret.verify_server(&c.auth_message, &sig) {
            NS_OK
        } else {
            NS_ERR_AUTH
        }
    })
}

/// What REGISTER carries instead of a password.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ns_scram_registration {
    /// A fresh random salt.
    pub salt: [u8; 16],
    /// PBKDF2 iterations.
    pub iterations: u32,
    /// SHA-256(ClientKey).
    pub stored_key: ns_key,
    /// HMAC(SaltedPassword, "Server Key").
    pub server_key: ns_key,
}

/// Computes the verifier for `password` with a fresh salt and `iterations` (0: the protocol's
/// default), into `*out`.
///
/// # Safety
/// `password` valid; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn ns_scram_registration_new(
    password: ns_bytes,
    iterations: u32,
    out: *mut ns_scram_registration,
) -> i32 {
    guard(|| {
        // SAFETY: per the contract.
        let (Some(p), Some(out)) = (
            unsafe { crate::slice(password.ptr, password.len) },
            unsafe { out.as_mut() },
        ) else {
            return NS_ERR_NULL;
        };
        let iterations = if iterations == 0 {
            proto::scram::ITERATIONS_DEFAULT
        } else {
            iterations
        };
        if !(proto::scram::ITERATIONS_MIN..=proto::scram::ITERATIONS_MAX).contains(&iterations) {
            return NS_ERR_INVALID;
        }
        let mut salt = [0u8; 16];
        if getrandom::fill(&mut salt).is_err() {
            return crate::NS_ERR_IO;
        }
        let stored = ClientSecret::derive(p, &salt, iterations).stored();
        *out = ns_scram_registration {
            salt,
            iterations,
            stored_key: stored.stored_key,
            server_key: stored.server_key,
        };
        NS_OK
    })
}

/// Fills `*req` with the REGISTER request for `user` and `*reg` (its bytes point into `reg`
/// and `user`).
///
/// # Safety
/// `reg` readable and alive while `req` is used; `user` valid; `req` writable.
#[no_mangle]
pub unsafe extern "C" fn ns_scram_register_request(
    reg: *const ns_scram_registration,
    user: ns_bytes,
    req: *mut ns_request,
) -> i32 {
    guard(|| {
        // SAFETY: per the contract.
        let (Some(reg), Some(req)) = (unsafe { reg.as_ref() }, unsafe { req.as_mut() }) else {
            return NS_ERR_NULL;
        };
        req.opcode = NS_OP_REGISTER;
        req.body.register_ = ns_register_req {
            username: user,
            salt: ns_bytes {
                ptr: reg.salt.as_ptr(),
                len: reg.salt.len(),
            },
            iterations: reg.iterations,
            stored_key: reg.stored_key,
            server_key: reg.server_key,
        };
        NS_OK
    })
}
