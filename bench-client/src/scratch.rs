//! A directory of this process's own under the system's temporary directory, removed when its
//! guard is dropped, also when a test fails (a panic unwinds through the drop).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// A fresh, empty directory; removed (with what is in it) on drop.
#[derive(Debug)]
pub struct ScratchDir(PathBuf);

static NEXT: AtomicU32 = AtomicU32::new(0);

impl ScratchDir {
    /// Creates `<tmp>/<prefix>-<pid>-<n>` (emptied first if a dead run left it).
    pub fn new(prefix: &str) -> std::io::Result<ScratchDir> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("{prefix}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(ScratchDir(dir))
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// A path inside it.
    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scratch_dir_is_fresh_and_gone_after_its_guard() {
        let (a, b) = (
            ScratchDir::new("bc-scratch").expect("a"),
            ScratchDir::new("bc-scratch").expect("b"),
        );
        assert_ne!(a.path(), b.path());
        std::fs::write(a.join("f"), b"x").expect("write");
        let kept = a.path().to_path_buf();
        drop(a);
        assert!(!kept.exists());
        assert!(b.path().is_dir());
    }
}
