//! Recovery: the newest checkpoint, then every journal record after it, replayed into a segment.
//!
//! A segment's records are consecutive from the LSN it is named after. They end at the end of
//! the file, or cleanly where nothing was written since the file was made or recycled (zeros of
//! a preallocated segment, or a valid record numbered below the segment's next one: a recycled
//! segment's leftover), or at a record that fails its checks. Such a record is told apart by
//! where it is:
//! - in the last segment with no valid record of this segment's after it: a torn tail (a crash
//!   cut the last write short). It was never acknowledged (an answer waits for the sync that
//!   covers it), so it is dropped, logged, and cut off the file so that appends continue after
//!   the last good record;
//! - anywhere else: corruption of records that may have been acknowledged. Recovery stops with
//!   the file and the offset; nothing is skipped silently. `--journal-truncate-corrupt` is the
//!   operator's explicit way to drop everything from that point (documented in README).
//!
//! Zeros up to the next 4 KiB block with something written there are the padding of a batch
//! written with O_DIRECT, and are stepped over (what is there is then checked like any record).
//!
//! A clean end in a segment that is not the last is where that segment stopped: the next one
//! must start at the LSN that follows (checked), or records are missing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shm::journal::Record;

use super::file;

/// What recovery found and did.
#[derive(Debug, Clone, Default)]
pub struct Recovered {
    /// The checkpoint loaded, and the LSN it covers.
    pub checkpoint: Option<(PathBuf, u64)>,
    /// Records in it.
    pub checkpoint_records: u64,
    /// Journal records replayed after it.
    pub replayed: u64,
    /// Journal segments read.
    pub segments: usize,
    /// The LSN the next record gets.
    pub next_lsn: u64,
    /// The segment appends continue in (None: start a new one at `next_lsn`) and its length.
    pub tail: Option<(PathBuf, u64)>,
    /// A torn tail dropped: file, offset, bytes cut.
    pub torn: Option<(PathBuf, u64, u64)>,
    /// Corruption the operator chose to cut off: file, offset.
    pub truncated_corruption: Option<(PathBuf, u64)>,
    /// Time taken.
    pub elapsed: Duration,
}

/// How to treat corruption in the middle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnCorruption {
    /// Stop with an error naming the file and offset.
    Stop,
    /// Cut the journal there (the operator's explicit choice; records after it are lost).
    Truncate,
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))
}

/// Rebuilds `seg` (fresh, journal off) from `dir`. Cuts a torn tail off its file.
pub fn recover(
    dir: &Path,
    seg: &shm::Segment,
    on_corruption: OnCorruption,
) -> anyhow::Result<Recovered> {
    let start = Instant::now();
    let mut out = Recovered::default();
    remove_temporaries(dir);
    let (journals, checkpoints) = file::list(dir)
        .map_err(|e| anyhow::anyhow!("listing the data directory {}: {e}", dir.display()))?;
    if let Some((lsn, path)) = checkpoints.last() {
        out.checkpoint_records = load_checkpoint(path, *lsn, seg)?;
        out.checkpoint = Some((path.clone(), *lsn));
        out.next_lsn = *lsn;
    }
    // Segments wholly below the checkpoint are skipped (their successor starts at or below it).
    let first = journals
        .iter()
        .rposition(|(l, _)| *l <= out.next_lsn)
        .unwrap_or(0);
    let live = &journals[first.min(journals.len())..];
    for (i, (first_lsn, path)) in live.iter().enumerate() {
        let last = i + 1 == live.len();
        let bytes = read(path)?;
        out.segments += 1;
        if *first_lsn > out.next_lsn {
            anyhow::bail!(
                "journal {} starts at record {first_lsn} but recovery is at {}: records are \
                 missing (a segment was removed?)",
                path.display(),
                out.next_lsn
            );
        }
        // The LSN this segment's next record must have: its records are consecutive from the
        // one it is named after. A valid record numbered below it is a leftover of the file's
        // previous life (a recycled segment): the data ends there.
        let mut seg_next = *first_lsn;
        let mut off = 0usize;
        let stop = loop {
            if off >= bytes.len() {
                break None;
            }
            match file::decode(&bytes[off..]) {
                Ok((lsn, _, _)) if lsn < seg_next => break Some(None),
                Ok((lsn, rec, len)) => {
                    if lsn != seg_next {
                        anyhow::bail!(
                            "journal {} at offset {off}: record {lsn} where {seg_next} was \
                             expected (records missing)",
                            path.display(),
                        );
                    }
                    if lsn >= out.next_lsn {
                        if lsn != out.next_lsn {
                            anyhow::bail!(
                                "journal {} at offset {off}: record {lsn} where {} was \
                                 expected (records missing)",
                                path.display(),
                                out.next_lsn
                            );
                        }
                        shm::ledger::replay(seg, &rec).map_err(|e| {
                            anyhow::anyhow!(
                                "journal {} at offset {off}, record {lsn}: {e}",
                                path.display()
                            )
                        })?;
                        out.replayed += 1;
                        out.next_lsn = lsn + 1;
                    }
                    seg_next = lsn + 1;
                    off += len;
                }
                Err(_) if file::unwritten_at(&bytes[off..]) => {
                    match file::after_padding(&bytes, off) {
                        Some(next) => off = next,
                        None => break Some(None),
                    }
                }
                Err(bad) => break Some(Some(bad)),
            }
        };
        // Where this segment's records end: the end of the file, or zeros and leftovers (a
        // clean end: nothing was written there since the file was made or recycled), or a
        // record that fails its checks.
        let Some(bad) = stop else {
            if last {
                out.tail = Some((path.clone(), bytes.len() as u64));
            }
            continue;
        };
        let live_after = file::live_record_in(&bytes[off..], seg_next);
        match bad {
            None if !live_after => {
                if last {
                    // Appends continue here, over the zeros and leftovers: no cut, so the
                    // segment's blocks stay allocated.
                    out.tail = Some((path.clone(), off as u64));
                }
                continue;
            }
            Some(bad) if last && !live_after => {
                tracing::warn!(
                    file = %path.display(), offset = off, bytes = bytes.len() - off,
                    why = %bad, "journal: torn tail dropped (never acknowledged)"
                );
                out.torn = Some((path.clone(), off as u64, (bytes.len() - off) as u64));
            }
            bad => {
                let why = bad.map_or_else(|| "unwritten bytes".to_string(), |b| b.to_string());
                if on_corruption == OnCorruption::Truncate {
                    tracing::error!(
                        file = %path.display(), offset = off, why = %why,
                        "journal: corrupt record; --journal-truncate-corrupt cuts the \
                         journal here: every record from this one on is lost"
                    );
                    out.truncated_corruption = Some((path.clone(), off as u64));
                    for (_, later) in &live[i + 1..] {
                        std::fs::remove_file(later)?;
                    }
                } else {
                    anyhow::bail!(corrupt_message(path, off, &why, live_after));
                }
            }
        }
        cut(path, off as u64)?;
        out.tail = Some((path.clone(), off as u64));
        out.elapsed = start.elapsed();
        return Ok(out);
    }
    out.elapsed = start.elapsed();
    Ok(out)
}

fn corrupt_message(path: &Path, off: usize, bad: &str, live_after: bool) -> String {
    let follow = if live_after {
        "valid records follow"
    } else {
        "a later segment follows"
    };
    format!(
        "journal {} is corrupt at offset {off} ({bad}) and {follow}: refusing to start rather \
         than skip acknowledged money. Restore the file, or start with \
         --journal-truncate-corrupt to drop every record from that offset on",
        path.display()
    )
}

/// Cuts `path` to `len` bytes, durably.
fn cut(path: &Path, len: u64) -> anyhow::Result<()> {
    let f = file::open_rw(path)?;
    f.set_len(len)?;
    f.sync_all()?;
    Ok(())
}

fn load_checkpoint(path: &Path, lsn: u64, seg: &shm::Segment) -> anyhow::Result<u64> {
    let bytes = read(path)?;
    let mut off = 0usize;
    let mut n = 0u64;
    let bad = |off: usize, why: String| {
        anyhow::anyhow!(
            "checkpoint {} is corrupt at offset {off}: {why}. Checkpoints are written to a \
             temporary file, synced and renamed, so this is damage after the fact: restore it \
             (older journal segments were removed once it was in place)",
            path.display()
        )
    };
    loop {
        let (idx, rec, len) = file::decode(&bytes[off..]).map_err(|e| bad(off, e.to_string()))?;
        if idx != n {
            return Err(bad(off, format!("record {idx} where {n} was expected")));
        }
        match (&rec, n) {
            (Record::CheckpointBegin { next_lsn }, 0) if *next_lsn == lsn => {}
            (_, 0) => return Err(bad(off, "does not begin with its header".into())),
            (Record::CheckpointEnd { count }, _) if *count == n => {
                if off + len != bytes.len() {
                    return Err(bad(off + len, "bytes after the end record".into()));
                }
                return Ok(n + 1);
            }
            _ => shm::ledger::replay(seg, &rec).map_err(|e| bad(off, e))?,
        }
        n += 1;
        off += len;
    }
}

/// Removes checkpoint temporaries a crash left (a checkpoint counts only once renamed).
fn remove_temporaries(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name()
            .to_str()
            .is_some_and(|n| n.ends_with(".ckpt.tmp"))
        {
            tracing::info!(file = %e.path().display(), "removing an unfinished checkpoint");
            let _ = std::fs::remove_file(e.path());
        }
    }
}
