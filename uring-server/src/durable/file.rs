//! The bytes on disk: how a record is framed in a journal segment or a checkpoint, the file
//! names, and the atomic replacement that writes a checkpoint.
//!
//! A record on disk (little-endian; the journal is read only by this program):
//!
//! ```text
//! magic u32 "NSJ1" | words u32 | lsn u64 | words × u64 (shm::journal::Record) | crc32 u32
//! ```
//!
//! The CRC-32 (crc32fast, IEEE) covers every byte before it. It is there to catch torn and
//! corrupted records, not an adversary: the data directory is the server's own, mode 0700.
//! A journal segment is named after the LSN of its first record, `journal-<lsn>.log`, and holds
//! consecutive LSNs; a checkpoint, `checkpoint-<lsn>.ckpt`, holds the state after every record
//! below `<lsn>`, its records numbered from 0 in the LSN field, between a begin and an end
//! record.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use shm::journal::{Record, WORDS};

/// The first four bytes of every record.
pub const MAGIC: u32 = u32::from_le_bytes(*b"NSJ1");
/// Bytes around a record's words: magic, word count, LSN, CRC.
pub const FRAME_OVERHEAD: usize = 4 + 4 + 8 + 4;

/// Appends `rec` with `lsn`, framed, to `out`.
pub fn encode(out: &mut Vec<u8>, lsn: u64, rec: &Record) {
    let mut w = [0u64; WORDS];
    let n = rec.to_words(&mut w);
    let start = out.len();
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&(n as u32).to_le_bytes());
    out.extend_from_slice(&lsn.to_le_bytes());
    for word in &w[..n] {
        out.extend_from_slice(&word.to_le_bytes());
    }
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// Why the bytes at an offset are not a whole, valid record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bad {
    /// The file ends inside the record (or before its header is whole).
    Truncated,
    /// Not a record's first bytes.
    Magic,
    /// The word count is impossible.
    Length(u32),
    /// The checksum does not match.
    Checksum,
    /// The checksum matches but the words are not a record this build knows.
    Decode(&'static str),
}

impl std::fmt::Display for Bad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bad::Truncated => f.write_str("record cut short by the end of the file"),
            Bad::Magic => f.write_str("no record magic"),
            Bad::Length(n) => write!(f, "impossible record length ({n} words)"),
            Bad::Checksum => f.write_str("checksum mismatch"),
            Bad::Decode(e) => write!(f, "undecodable record: {e}"),
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// Decodes the record at the start of `b`: its LSN, the record, and the bytes it took.
pub fn decode(b: &[u8]) -> Result<(u64, Record, usize), Bad> {
    if b.len() < 8 {
        return Err(if b.len() >= 4 && u32_at(b, 0) != MAGIC {
            Bad::Magic
        } else {
            Bad::Truncated
        });
    }
    if u32_at(b, 0) != MAGIC {
        return Err(Bad::Magic);
    }
    let n = u32_at(b, 4);
    if n == 0 || n as usize > WORDS {
        return Err(Bad::Length(n));
    }
    let len = FRAME_OVERHEAD + 8 * n as usize;
    if b.len() < len {
        return Err(Bad::Truncated);
    }
    let crc = u32_at(b, len - 4);
    if crc32fast::hash(&b[..len - 4]) != crc {
        return Err(Bad::Checksum);
    }
    let lsn = u64_at(b, 8);
    let words: Vec<u64> = (0..n as usize).map(|i| u64_at(b, 16 + 8 * i)).collect();
    let rec = Record::from_words(&words).map_err(Bad::Decode)?;
    Ok((lsn, rec, len))
}

/// True when a whole, valid record numbered `min_lsn` or later starts anywhere in `b` (after a
/// bad one: corruption in the middle rather than a torn tail). Records numbered below it are a
/// recycled segment's leftovers and do not count.
pub fn live_record_in(b: &[u8], min_lsn: u64) -> bool {
    let first = MAGIC.to_le_bytes()[0];
    let mut i = 0;
    while let Some(at) = b[i..].iter().position(|&c| c == first) {
        let start = i + at;
        if let Ok((lsn, _, _)) = decode(&b[start..]) {
            if lsn >= min_lsn {
                return true;
            }
        }
        i = start + 1;
    }
    false
}

/// Where the records continue after the zeros at `off` in `b` when those zeros are a batch's
/// padding: zeros up to the next [`BLOCK`] boundary, and something written there (a record, or
/// the bytes the caller then finds are not one).
pub fn after_padding(b: &[u8], off: usize) -> Option<usize> {
    let boundary = off.div_ceil(BLOCK) * BLOCK;
    if boundary == off
        || boundary >= b.len()
        || b[off..boundary].iter().any(|&c| c != 0)
        || unwritten_at(&b[boundary..])
    {
        return None;
    }
    Some(boundary)
}

/// True when `b` starts where nothing was ever written: a record's first four bytes are its
/// magic, never zero; a preallocated segment is zero-filled past its last record.
pub fn unwritten_at(b: &[u8]) -> bool {
    b.iter().take(4).all(|&c| c == 0)
}

/// A journal segment kept for reuse after a checkpoint covered it (see the writer's module doc).
/// Not a `journal-<lsn>.log` name: recovery and listings ignore it.
pub const SPARE_NAME: &str = "journal.spare";

/// `journal-<lsn>.log`.
pub fn journal_name(first_lsn: u64) -> String {
    format!("journal-{first_lsn:020}.log")
}

/// `checkpoint-<lsn>.ckpt`.
pub fn checkpoint_name(lsn: u64) -> String {
    format!("checkpoint-{lsn:020}.ckpt")
}

/// Files named by an LSN, sorted by it.
pub type ByLsn = Vec<(u64, PathBuf)>;

/// The journal segments and checkpoints in `dir`, each sorted by LSN.
pub fn list(dir: &Path) -> std::io::Result<(ByLsn, ByLsn)> {
    let mut journals = Vec::new();
    let mut checkpoints = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let parse = |prefix: &str, suffix: &str| {
            name.strip_prefix(prefix)
                .and_then(|r| r.strip_suffix(suffix))
                .and_then(|n| n.parse::<u64>().ok())
        };
        if let Some(lsn) = parse("journal-", ".log") {
            journals.push((lsn, entry.path()));
        } else if let Some(lsn) = parse("checkpoint-", ".ckpt") {
            checkpoints.push((lsn, entry.path()));
        }
    }
    journals.sort();
    checkpoints.sort();
    Ok((journals, checkpoints))
}

/// The block a journal written with O_DIRECT aligns each batch to; the zeros between a batch's
/// last record and the next block are padding, which recovery steps over.
pub const BLOCK: usize = 4096;

/// [`open_rw`] with O_DIRECT.
pub fn open_rw_direct(path: &Path) -> std::io::Result<File> {
    open_rw_flags(path, libc::O_DIRECT)
}

/// Opens (creating, mode 0600) a file for writing, keeping what it holds.
pub fn open_rw(path: &Path) -> std::io::Result<File> {
    open_rw_flags(path, 0)
}

fn open_rw_flags(path: &Path, flags: i32) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(flags)
        .open(path)
}

/// fsyncs a directory, so that a file created, renamed or removed in it stays so.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates the data directory (mode 0700) if it is missing; refuses one others can read.
pub fn ensure_dir(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| anyhow::anyhow!("creating the data directory {}: {e}", dir.display()))?;
        // Make the creation itself durable.
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            let _ = sync_dir(parent);
        }
    }
    let meta = std::fs::metadata(dir)
        .map_err(|e| anyhow::anyhow!("data directory {}: {e}", dir.display()))?;
    anyhow::ensure!(
        meta.is_dir(),
        "--data-dir {} is not a directory",
        dir.display()
    );
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        // Money and password verifiers: the server's user only.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| {
            anyhow::anyhow!(
                "data directory {} is mode {mode:o} and cannot be made 0700: {e}",
                dir.display()
            )
        })?;
        tracing::warn!(dir = %dir.display(), was = format!("{mode:o}"), "data directory made 0700");
    }
    Ok(())
}

/// Writes a checkpoint atomically: a temporary file, fsync, rename into place, fsync of the
/// directory. `records` yields the state; the file gets begin and end records around it.
pub fn write_checkpoint(
    dir: &Path,
    next_lsn: u64,
    records: impl FnOnce(&mut dyn FnMut(&Record)),
) -> std::io::Result<(PathBuf, u64)> {
    let tmp = dir.join(format!("{}.tmp", checkpoint_name(next_lsn)));
    let dest = dir.join(checkpoint_name(next_lsn));
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut buf = Vec::with_capacity(256);
    let mut count = 0u64;
    let mut err: Option<std::io::Error> = None;
    encode(&mut buf, 0, &Record::CheckpointBegin { next_lsn });
    out.write_all(&buf)?;
    count += 1;
    records(&mut |rec: &Record| {
        if err.is_some() {
            return;
        }
        buf.clear();
        encode(&mut buf, count, rec);
        count += 1;
        if let Err(e) = out.write_all(&buf) {
            err = Some(e);
        }
    });
    if let Some(e) = err {
        return Err(e);
    }
    buf.clear();
    encode(&mut buf, count, &Record::CheckpointEnd { count });
    out.write_all(&buf)?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    let bytes = file.metadata()?.len();
    drop(file);
    std::fs::rename(&tmp, &dest)?;
    sync_dir(dir)?;
    Ok((dest, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_decodes_whole_and_every_cut_is_truncated() {
        let mut b = Vec::new();
        encode(&mut b, 7, &Record::CheckpointEnd { count: 3 });
        let (lsn, rec, len) = decode(&b).expect("a whole record decodes");
        assert_eq!(
            (lsn, rec, len),
            (7, Record::CheckpointEnd { count: 3 }, b.len())
        );
        for cut in 0..b.len() {
            assert_eq!(
                decode(&b[..cut]).expect_err("a cut record"),
                Bad::Truncated,
                "cut at {cut}"
            );
        }
        for bit in 0..b.len() * 8 {
            let mut c = b.clone();
            c[bit / 8] ^= 1 << (bit % 8);
            assert!(decode(&c).is_err(), "bit {bit} flipped still decodes");
        }
    }
}
