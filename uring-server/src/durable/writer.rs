//! The journal writer: a process the master forks (and restarts, like a worker) that copies the
//! shared ring's records to the journal on disk through its own io_uring, one write linked to
//! one fdatasync per batch, and then tells the workers how far the disk has them.
//!
//! Group commit without a timer: while one write+fdatasync is in flight, appenders keep filling
//! the ring; the next batch is everything appended meanwhile. When the disk is idle the first
//! record goes out at once (the writer sleeps on a futex the appender wakes).
//!
//! Writes land on allocated blocks: a segment is zero-filled ahead of its end
//! ([`ZERO_CHUNK`] at a time, a write of its own while batches go on below it), and a segment a
//! checkpoint covered is kept as the spare the next rotation renames into place instead of
//! being removed. A synced overwrite has no file size or block map to commit, so it is one data
//! write and a cache flush where an append also commits ext4's metadata journal
//! (results/journal-prealloc.txt). Recovery stops cleanly at the zeros or at a recycled
//! segment's older records (see `recover`).
//!
//! The writer keeps a private copy of the ledger (a segment of its own, fed every record it
//! writes), exact at the last LSN written. A checkpoint forks: the child writes the copy out
//! while the writer goes on (the copy-on-write snapshot Redis's BGSAVE uses), and the segments
//! it covers are removed once it is in place.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue, types, IoUring};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
use shm::journal::Record;

use super::file;
use super::recover::{recover, OnCorruption};

/// The writer's settings.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// The data directory.
    pub dir: PathBuf,
    /// Journal bytes after which a checkpoint is written and older segments removed.
    pub checkpoint_bytes: u64,
    /// How a batch is made durable.
    pub sync: SyncMethod,
    /// Whether segments are zero-filled ahead and reused.
    pub prealloc: Prealloc,
    /// Whether the journal bypasses the page cache.
    pub io: JournalIo,
}

/// How the writer's writes reach the disk (`--journal-io`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum JournalIo {
    /// O_DIRECT: each batch is padded to a whole block and written from an aligned buffer;
    /// io_uring issues it from the writer itself (no io-wq thread, no page-cache copy). Falls
    /// back to buffered, with a log line, where the filesystem refuses O_DIRECT.
    Direct,
    /// Through the page cache.
    Buffered,
}

/// Whether the writer writes over allocated blocks (`--journal-prealloc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Prealloc {
    /// Zero-fill each segment ahead of its last write; keep a covered segment as the spare.
    On,
    /// Every batch appends to its segment; covered segments are removed.
    Off,
}

/// How the writer makes a batch durable (`--journal-sync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SyncMethod {
    /// A write linked to an fdatasync (two operations in the ring, one submission).
    Fdatasync,
    /// One write flagged RWF_DSYNC (durable when it completes).
    Dsync,
}

/// Most records written by one write+fdatasync.
const BATCH_MAX: usize = 8192;
/// How long the writer sleeps when nothing is appended (it is woken at once by an append).
const IDLE_WAIT: Duration = Duration::from_millis(100);
/// Bytes by which a segment is zero-filled ahead of the last batch written.
pub const ZERO_CHUNK: usize = 2 << 20;
/// What a zero-fill writes: a static, so no write in flight can outlive it; block-aligned for
/// O_DIRECT.
#[repr(C, align(4096))]
struct Zeros([u8; ZERO_CHUNK]);
static ZEROS: Zeros = Zeros([0; ZERO_CHUNK]);
/// The block O_DIRECT writes are aligned and padded to (file::BLOCK).
const BLOCK: usize = file::BLOCK;
/// user_data of the writes in the writer's ring.
const UD_WRITE: u64 = 1;
const UD_SYNC: u64 = 2;
const UD_ZEROS: u64 = 3;
/// How long it waits before retrying a failed write.
const RETRY_AFTER: Duration = Duration::from_millis(100);

/// The writer's life after the fork. Never returns.
pub fn run(
    seg: &shm::Segment,
    cfg: WriterConfig,
    wake_fds: Option<&shm::wake::WakeFds>,
    master: u32,
) -> ! {
    let code = match run_inner(seg, &cfg, wake_fds, master) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "journal writer failed");
            1
        }
    };
    std::process::exit(code)
}

struct Writer<'a> {
    seg: &'a shm::Segment,
    private: shm::Segment,
    cfg: &'a WriterConfig,
    ring: IoUring,
    file: std::fs::File,
    /// The segment is open with O_DIRECT: writes are whole blocks at block offsets.
    direct: bool,
    offset: u64,
    /// Bytes of the segment that are allocated and were written (records, zeros, or a recycled
    /// segment's old records): a batch below this overwrites.
    allocated: u64,
    /// A zero-fill in flight: where it starts (batches stay below it until it completes).
    zeroing: Option<u64>,
    /// Zero-filling failed in this segment (a full disk): not tried again until the next one.
    zeroing_failed: bool,
    /// A zero-filled range not yet joined to `allocated` (it completed before the batch
    /// written just below it did).
    zeroed_range: Option<(u64, u64)>,
    /// Records below this are written and synced.
    written: u64,
    /// A checkpoint being written by a child: its pid and LSN.
    child: Option<(Pid, u64)>,
    /// The newest checkpoint in place.
    checkpoint_lsn: u64,
    bytes_since_checkpoint: u64,
    failing: Option<i32>,
    /// This process's pid (a checkpoint child checks its parent is still it).
    pid: u32,
}

fn run_inner(
    seg: &shm::Segment,
    cfg: &WriterConfig,
    wake_fds: Option<&shm::wake::WakeFds>,
    master: u32,
) -> anyhow::Result<()> {
    // SAFETY: prctl with PR_SET_PDEATHSIG and a signal number reads nothing else.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    if nix::unistd::getppid().as_raw() as u32 != master {
        anyhow::bail!("the master died before the journal writer started");
    }
    crate::stop::install_stop_handler()?;
    // A file-size limit must fail the write with EFBIG (a status the workers report), not kill
    // the writer.
    // SAFETY: setting SIGXFSZ's disposition to ignore installs no handler code.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let span = tracing::info_span!("journal", pid = std::process::id());
    let _enter = span.enter();
    let started = Instant::now();
    // Private memory, so that a checkpoint child forked from here sees it frozen.
    let private = shm::Segment::private(*seg.caps(), seg.lock_mode())?;
    let rec = recover(&cfg.dir, &private, OnCorruption::Stop)?;
    let (path, offset) = match &rec.tail {
        Some((p, len)) => (p.clone(), *len),
        None => (cfg.dir.join(file::journal_name(rec.next_lsn)), 0),
    };
    let (file, direct) = open_segment(&path, cfg.io == JournalIo::Direct)?;
    file.sync_data()?;
    file::sync_dir(&cfg.dir)?;
    let allocated = file.metadata()?.len().max(offset);
    let mut w = Writer {
        seg,
        private,
        cfg,
        ring: IoUring::new(8)?,
        file,
        direct,
        offset,
        allocated,
        zeroing: None,
        zeroing_failed: false,
        zeroed_range: None,
        written: rec.next_lsn,
        child: None,
        checkpoint_lsn: rec.checkpoint.as_ref().map_or(0, |c| c.1),
        bytes_since_checkpoint: 0,
        failing: None,
        pid: std::process::id(),
    };
    // What a predecessor wrote (perhaps not yet synced) is synced now.
    if shm::journal::durable(seg) < w.written {
        shm::journal::set_durable(seg, w.written);
        shm::wake::notify_all(seg, wake_fds);
    }
    if w.direct && w.offset % BLOCK as u64 != 0 {
        // Recovery left the tail mid-block: O_DIRECT writes whole blocks, and rewriting the
        // block would put acknowledged records at risk, so appends go to a new segment.
        w.rotate(w.written)?;
    }
    shm::journal::set_writer_pid(seg, std::process::id());
    tracing::info!(
        next_lsn = w.written,
        direct = w.direct,
        file = %path.display(),
        ms = started.elapsed().as_millis() as u64,
        "journal writer ready"
    );
    let shutdown = crate::stop::Shutdown {
        grace: Duration::ZERO,
    };
    let mut batch: Vec<(u64, Record)> = Vec::with_capacity(BATCH_MAX);
    // Never grows past this (BATCH_MAX records of at most WORDS words, padding, alignment), so
    // the block-aligned offset found in it stays aligned.
    let mut buf: Vec<u8> = Vec::with_capacity(
        BATCH_MAX * (file::FRAME_OVERHEAD + 8 * shm::journal::WORDS) + 2 * BLOCK,
    );
    loop {
        w.reap_child(false);
        batch.clear();
        let end = shm::journal::read_pending(seg, w.written, BATCH_MAX, &mut batch);
        if batch.is_empty() {
            if shutdown.requested() {
                w.final_checkpoint()?;
                shm::journal::set_writer_pid(seg, 0);
                tracing::info!(lsn = w.written, "journal writer stopped");
                return Ok(());
            }
            shm::journal::writer_wait(seg, w.written, IDLE_WAIT);
            continue;
        }
        buf.clear();
        // O_DIRECT: the batch starts at a block boundary of the buffer and is padded with
        // zeros to whole blocks (recovery steps over the padding to the next block).
        let start = if w.direct {
            buf.as_ptr().align_offset(BLOCK)
        } else {
            0
        };
        buf.resize(start, 0);
        for (lsn, r) in &batch {
            file::encode(&mut buf, *lsn, r);
        }
        let bytes = buf.len() - start;
        if w.direct {
            buf.resize(start + bytes.div_ceil(BLOCK) * BLOCK, 0);
            debug_assert_eq!(buf[start..].as_ptr() as usize % BLOCK, 0);
        }
        let took = w.write_durably(&buf[start..]);
        w.offset += (buf.len() - start) as u64;
        w.written = end;
        shm::journal::set_durable(seg, end);
        shm::journal::note_sync(seg, batch.len() as u64, bytes as u64, took);
        shm::wake::notify_all(seg, wake_fds);
        for (lsn, r) in &batch {
            shm::ledger::replay(&w.private, r)
                .map_err(|e| anyhow::anyhow!("record {lsn} does not apply to the copy: {e}"))?;
        }
        w.bytes_since_checkpoint += bytes as u64;
        if w.bytes_since_checkpoint >= cfg.checkpoint_bytes && w.child.is_none() {
            w.start_checkpoint()?;
        }
    }
}

impl Writer<'_> {
    /// Writes `buf` at the end of the segment and fdatasyncs it, retrying (every
    /// [`RETRY_AFTER`]) until both succeed; reports failures to the workers meanwhile. Returns
    /// the nanoseconds of the successful write+sync.
    fn write_durably(&mut self, buf: &[u8]) -> u64 {
        let mut done = 0usize;
        loop {
            let t = Instant::now();
            match self.write_and_sync(buf, &mut done) {
                Ok(()) => {
                    if let Some(e) = self.failing.take() {
                        shm::journal::set_error(self.seg, 0);
                        tracing::warn!(
                            was = %std::io::Error::from_raw_os_error(e),
                            "journal writes succeed again: ledger requests are served"
                        );
                    }
                    return t.elapsed().as_nanos() as u64;
                }
                Err(e) => {
                    let errno = e.raw_os_error().unwrap_or(libc::EIO);
                    if self.failing != Some(errno) {
                        tracing::error!(
                            error = %e,
                            offset = self.offset + done as u64,
                            "journal write failed: ledger requests and REGISTER are refused \
                             (ERR_STORAGE_UNAVAILABLE) until it succeeds; retrying"
                        );
                        self.failing = Some(errno);
                        shm::journal::set_error(self.seg, errno as u32);
                    }
                    std::thread::sleep(RETRY_AFTER);
                }
            }
        }
    }

    /// One write of `buf[done..]` made durable: with [`SyncMethod::Fdatasync`] linked to an
    /// fdatasync, with [`SyncMethod::Dsync`] a single write flagged RWF_DSYNC. A short write
    /// advances `done` and is continued; a failure starts the batch over (after a failed sync
    /// the kernel may have dropped the dirty pages: PostgreSQL's "fsyncgate"). Starts the next
    /// zero-fill beside it when the batch comes near the end of what is allocated.
    fn write_and_sync(&mut self, buf: &[u8], done: &mut usize) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let fd = types::Fd(self.file.as_raw_fd());
        let linked = self.cfg.sync == SyncMethod::Fdatasync;
        let end = self.offset + buf.len() as u64;
        // Never write where zeros are being written: the two could land in either order.
        if self.zeroing.is_some_and(|at| at < end) {
            self.finish_zeroing()?;
        }
        if self.cfg.prealloc == Prealloc::On
            && !self.zeroing_failed
            && self.zeroing.is_none()
            && self.allocated < end + ZERO_CHUNK as u64 / 2
        {
            let at = self.allocated.max(end).next_multiple_of(BLOCK as u64);
            let zeros = opcode::Write::new(fd, ZEROS.0.as_ptr(), ZERO_CHUNK as u32)
                .offset(at)
                .rw_flags(libc::RWF_DSYNC)
                .build()
                .user_data(UD_ZEROS);
            // SAFETY: the write reads `ZEROS`, a static; the fd is the segment's, which the writer
            // keeps open until the write completes (rotate waits for it first).
            unsafe {
                self.ring
                    .submission()
                    .push(&zeros)
                    .map_err(|_| std::io::Error::other("sq full"))?;
            }
            self.zeroing = Some(at);
        }
        loop {
            let rest = &buf[*done..];
            let len = rest.len().min(1 << 30) as u32;
            let write = opcode::Write::new(fd, rest.as_ptr(), len)
                .offset(self.offset + *done as u64)
                .rw_flags(if linked { 0 } else { libc::RWF_DSYNC });
            let write = if linked {
                write.build().flags(squeue::Flags::IO_LINK)
            } else {
                write.build()
            }
            .user_data(UD_WRITE);
            let sync = opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build()
                .user_data(UD_SYNC);
            let want = if linked { 2 } else { 1 };
            // SAFETY: `rest` stays borrowed and unmoved until every completion is reaped below
            // (submit_and_wait, then draining the queue); the fd outlives the call.
            unsafe {
                let mut sq = self.ring.submission();
                sq.push(&write)
                    .map_err(|_| std::io::Error::other("sq full"))?;
                if linked {
                    sq.push(&sync)
                        .map_err(|_| std::io::Error::other("sq full"))?;
                }
            }
            let mut got = 0;
            let (mut wres, mut sres) = (0i32, 0i32);
            while got < want {
                for (ud, res) in self.wait_completions()? {
                    match ud {
                        UD_WRITE => wres = res,
                        UD_SYNC => sres = res,
                        _ => {
                            self.zeroed(res);
                            continue;
                        }
                    }
                    got += 1;
                }
            }
            if wres < 0 {
                *done = 0;
                return Err(std::io::Error::from_raw_os_error(-wres));
            }
            *done += wres as usize;
            self.allocated = self.allocated.max(self.offset + *done as u64);
            self.join_zeroed();
            if self.direct {
                // O_DIRECT goes on from a block boundary: the part block is written again (it
                // holds only this batch's records, none acknowledged).
                *done -= *done % BLOCK;
            }
            if (wres as u32) < len {
                continue; // Short write: the linked sync was cancelled; write the rest.
            }
            if sres < 0 {
                *done = 0;
                return Err(std::io::Error::from_raw_os_error(-sres));
            }
            if *done >= buf.len() {
                return Ok(());
            }
        }
    }

    /// The zero-fill in flight completed with `res`.
    fn zeroed(&mut self, res: i32) {
        let Some(at) = self.zeroing.take() else {
            return;
        };
        if res < 0 {
            // Not fatal: batches past the allocated end append, as without preallocation.
            self.zeroing_failed = true;
            tracing::warn!(
                error = %std::io::Error::from_raw_os_error(-res),
                "journal: zero-filling ahead failed; appending instead"
            );
        } else {
            self.zeroed_range = Some((at, at + res as u64));
            self.join_zeroed();
        }
    }

    /// Counts the zero-filled range as allocated once what is below it is.
    fn join_zeroed(&mut self) {
        if let Some((from, to)) = self.zeroed_range {
            if from <= self.allocated {
                self.allocated = self.allocated.max(to);
                self.zeroed_range = None;
            }
        }
    }

    /// Waits for the zero-fill in flight, if any.
    fn finish_zeroing(&mut self) -> std::io::Result<()> {
        while self.zeroing.is_some() {
            for (ud, res) in self.wait_completions()? {
                if ud == UD_ZEROS {
                    self.zeroed(res);
                }
            }
        }
        Ok(())
    }

    /// Submits what is queued, waits for at least one completion, and returns every completion
    /// there is as (user_data, result). An interrupted wait returns none.
    fn wait_completions(&mut self) -> std::io::Result<Vec<(u64, i32)>> {
        match self.ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        }
        Ok(self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect())
    }

    /// Starts a new segment at `written` and forks a child that writes the checkpoint of the
    /// private copy (exact at `written`).
    fn start_checkpoint(&mut self) -> anyhow::Result<()> {
        let lsn = self.written;
        self.rotate(lsn)?;
        self.bytes_since_checkpoint = 0;
        // SAFETY: the writer is single-threaded; the child only writes a file from its copy of
        // the private segment and exits without returning into the writer's code.
        match unsafe { fork() }? {
            ForkResult::Child => {
                // Dies with the writer: a checkpoint outliving it would hold the data
                // directory's lock against the next server. Its temporary file is removed at
                // the next start.
                // SAFETY: prctl with PR_SET_PDEATHSIG and a signal number reads nothing else.
                unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
                if nix::unistd::getppid().as_raw() as u32 != self.pid {
                    // SAFETY: as below.
                    unsafe { libc::_exit(1) }
                }
                let code = match self.write_checkpoint(lsn) {
                    Ok(_) => 0,
                    Err(e) => {
                        tracing::error!(error = %e, "checkpoint failed");
                        1
                    }
                };
                // SAFETY: _exit ends the child at once, running nothing of the parent's.
                unsafe { libc::_exit(code) }
            }
            ForkResult::Parent { child } => {
                tracing::debug!(lsn, pid = child.as_raw(), "checkpoint started");
                self.child = Some((child, lsn));
            }
        }
        Ok(())
    }

    /// Starts the segment for records from `lsn`: the spare renamed into place if there is
    /// one (its blocks are allocated; its old records are numbered below `lsn`, which recovery
    /// reads as the end), else an empty file.
    fn rotate(&mut self, lsn: u64) -> anyhow::Result<()> {
        if self.offset == 0 {
            return Ok(()); // The current segment is empty and already starts here.
        }
        self.finish_zeroing()?;
        let path = self.cfg.dir.join(file::journal_name(lsn));
        let spare = self.cfg.dir.join(file::SPARE_NAME);
        let recycled = self.cfg.prealloc == Prealloc::On && std::fs::rename(&spare, &path).is_ok();
        self.zeroing_failed = false;
        self.zeroed_range = None;
        (self.file, self.direct) = open_segment(&path, self.direct)?;
        if !recycled {
            self.file.set_len(0)?;
        }
        file::sync_dir(&self.cfg.dir)?;
        self.offset = 0;
        self.allocated = self.file.metadata()?.len();
        tracing::debug!(
            lsn,
            recycled,
            bytes = self.allocated,
            "journal segment started"
        );
        Ok(())
    }

    fn write_checkpoint(&self, lsn: u64) -> std::io::Result<(PathBuf, u64)> {
        file::write_checkpoint(&self.cfg.dir, lsn, |emit| {
            shm::ledger::checkpoint_records(&self.private, |r| emit(r))
        })
    }

    /// Reaps a finished checkpoint child (waiting for it if `block`); once one is in place,
    /// removes what it covers.
    fn reap_child(&mut self, block: bool) {
        let Some((pid, lsn)) = self.child else {
            return;
        };
        let flags = if block {
            None
        } else {
            Some(WaitPidFlag::WNOHANG)
        };
        match waitpid(pid, flags) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(WaitStatus::Exited(_, 0)) => {
                self.child = None;
                self.checkpoint_done(lsn);
            }
            Ok(other) => {
                self.child = None;
                tracing::error!(status = ?other, "checkpoint child failed; the journal is kept");
            }
            Err(e) => {
                self.child = None;
                tracing::error!(error = %e, "waiting for the checkpoint child");
            }
        }
    }

    /// A checkpoint covering records below `lsn` is in place: older segments and checkpoints go.
    fn checkpoint_done(&mut self, lsn: u64) {
        self.checkpoint_lsn = lsn;
        let removed = remove_covered(&self.cfg.dir, lsn, self.cfg.prealloc == Prealloc::On);
        shm::journal::note_checkpoint(self.seg, lsn, crate::clock::wall_ms());
        tracing::info!(lsn, files_removed = removed, "checkpoint in place");
    }

    /// At a graceful stop: everything is written; one checkpoint makes the next start fast.
    fn final_checkpoint(&mut self) -> anyhow::Result<()> {
        self.reap_child(true);
        if self.written == self.checkpoint_lsn {
            return Ok(());
        }
        let t = Instant::now();
        self.rotate(self.written)?;
        let (path, bytes) = self.write_checkpoint(self.written)?;
        self.checkpoint_done(self.written);
        tracing::info!(
            file = %path.display(), bytes, ms = t.elapsed().as_millis() as u64,
            "final checkpoint written"
        );
        Ok(())
    }
}

/// Opens a segment for writing, with O_DIRECT when `direct` and the filesystem takes it (a
/// refusal is logged and the segment opened buffered). Returns the file and whether it is direct.
fn open_segment(path: &Path, direct: bool) -> std::io::Result<(std::fs::File, bool)> {
    if direct {
        match file::open_rw_direct(path) {
            Ok(f) => return Ok((f, true)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::warn!(
                    file = %path.display(),
                    "the filesystem refuses O_DIRECT: the journal is written through the page \
                     cache (--journal-io buffered)"
                );
            }
            Err(e) => return Err(e),
        }
    }
    Ok((file::open_rw(path)?, false))
}

/// Removes the journal segments and checkpoints wholly below `lsn`; returns how many. With
/// `keep_spare`, the newest covered segment becomes the spare instead, if there is none.
fn remove_covered(dir: &Path, lsn: u64, keep_spare: bool) -> usize {
    let Ok((journals, checkpoints)) = file::list(dir) else {
        return 0;
    };
    let mut removed = 0;
    let mut spare = !keep_spare || dir.join(file::SPARE_NAME).exists();
    // A segment is covered when the next one starts at or below `lsn`.
    for pair in journals.windows(2).rev() {
        if pair[1].0 > lsn {
            continue;
        }
        if !spare && std::fs::rename(&pair[0].1, dir.join(file::SPARE_NAME)).is_ok() {
            spare = true;
            removed += 1;
        } else if std::fs::remove_file(&pair[0].1).is_ok() {
            removed += 1;
        }
    }
    for (l, p) in &checkpoints {
        if *l < lsn && std::fs::remove_file(p).is_ok() {
            removed += 1;
        }
    }
    let _ = file::sync_dir(dir);
    removed
}
