//! Durability: the journal on disk (`file`), its writer process (`writer`), and the recovery
//! that rebuilds the segment from the newest checkpoint and the journal after it (`recover`).
//! The shared-memory half (the ring, the records, the LSNs) is `shm::journal`.

pub mod file;
pub mod recover;
pub mod writer;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

/// The data directory's lock: held (flock) by the master, and so by every child it forks, for
/// as long as the server runs. A second server on the same directory is refused.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Takes the lock of `dir`, or says who holds it.
    pub fn take(dir: &Path) -> anyhow::Result<DirLock> {
        use std::io::{Read, Seek, Write};
        let path = dir.join("LOCK");
        let mut f =
            file::open_rw(&path).map_err(|e| anyhow::anyhow!("opening {}: {e}", path.display()))?;
        // SAFETY: flock on an fd this function owns; it reads no memory.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let mut holder = String::new();
            let _ = f.read_to_string(&mut holder);
            anyhow::bail!(
                "data directory {} is in use by another server (pid {}): two servers cannot \
                 share one journal; stop it or pick another --data-dir",
                dir.display(),
                holder.trim()
            );
        }
        f.set_len(0)?;
        f.rewind()?;
        write!(f, "{}", std::process::id())?;
        Ok(DirLock { _file: f })
    }
}
