//! Byte strings stored in arrays of atomic words, so that a reader in another process never
//! races a writer on plain memory. Writers hold the owning table's lock or are publishing a
//! record nobody can reach yet; readers that may race a writer validate with a sequence word.

#![forbid(unsafe_code)]

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Stores `bytes` into `words` (which must hold them), zero-padding the last word.
pub(crate) fn store_bytes(words: &[AtomicU64], bytes: &[u8]) {
    debug_assert!(bytes.len() <= words.len() * 8);
    for (w, chunk) in words.iter().zip(bytes.chunks(8)) {
        let mut b = [0u8; 8];
        b[..chunk.len()].copy_from_slice(chunk);
        w.store(u64::from_le_bytes(b), Ordering::Relaxed);
    }
}

/// Loads `len` bytes from `words` into `out[..len]`; `len` is clamped to both capacities.
pub(crate) fn load_bytes(words: &[AtomicU64], len: usize, out: &mut [u8]) -> usize {
    let len = len.min(words.len() * 8).min(out.len());
    for (i, w) in words.iter().enumerate().take(len.div_ceil(8)) {
        let b = w.load(Ordering::Relaxed).to_le_bytes();
        let start = i * 8;
        let end = (start + 8).min(len);
        out[start..end].copy_from_slice(&b[..end - start]);
    }
    len
}

/// True when `words` holds exactly `bytes` (with `len` recorded as their length).
pub(crate) fn eq_bytes(words: &[AtomicU64], len: usize, bytes: &[u8]) -> bool {
    if len != bytes.len() || len > words.len() * 8 {
        return false;
    }
    words.iter().zip(bytes.chunks(8)).all(|(w, chunk)| {
        let b = w.load(Ordering::Relaxed).to_le_bytes();
        &b[..chunk.len()] == chunk
    })
}

/// FNV-1a, for the name indexes: short keys, no adversary can choose the table's seed, and
/// probing is bounded by the table's size, so a collision costs time, never correctness.
pub(crate) fn hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Finds a name in an open-addressing index of ids (0 marks an empty slot, the length is a
/// power of two, load at most 1/2): walks from the name's hash until `is_it(id)` or an empty
/// slot. Lock-free; the walk is bounded by the table's length.
pub(crate) fn index_find(
    index: &[AtomicU32],
    name: &[u8],
    is_it: impl Fn(u32) -> bool,
) -> Option<u32> {
    let mask = index.len() - 1;
    let mut i = hash(name) as usize & mask;
    for _ in 0..index.len() {
        match index[i].load(Ordering::Acquire) {
            0 => return None,
            id if is_it(id) => return Some(id),
            _ => i = (i + 1) & mask,
        }
    }
    None
}

/// Publishes `id` under `name` in the first empty slot from the name's hash. The caller holds
/// the table's lock and has written the record `id` names.
pub(crate) fn index_insert(index: &[AtomicU32], name: &[u8], id: u32) {
    let mask = index.len() - 1;
    let mut i = hash(name) as usize & mask;
    while index[i].load(Ordering::Relaxed) != 0 {
        i = (i + 1) & mask;
    }
    index[i].store(id, Ordering::Release);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_through_words() {
        let words: Vec<AtomicU64> = (0..4).map(|_| AtomicU64::new(u64::MAX)).collect();
        for s in [&b""[..], b"a", b"exactly8", b"nine byte", &[7u8; 32]] {
            store_bytes(&words, s);
            let mut out = [0u8; 32];
            assert_eq!(load_bytes(&words, s.len(), &mut out), s.len());
            assert_eq!(&out[..s.len()], s);
            assert!(eq_bytes(&words, s.len(), s));
        }
        store_bytes(&words, b"alice");
        assert!(!eq_bytes(&words, 5, b"alicf"));
        assert!(!eq_bytes(&words, 5, b"alic"));
    }
}
