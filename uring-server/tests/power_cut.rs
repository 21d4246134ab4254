//! A power cut: the data directory lives on ext4 on a loop device; while clients have deposits
//! in flight, every server process is frozen (SIGSTOP) and the loop device's backing file is
//! copied. The copy holds what reached the device (what a sync pushed down, and whatever the
//! kernel happened to write back) and not what was only in the page cache: what a machine
//! whose power went at that instant would find on its disk. A server recovered from the copy
//! must show every deposit that was acknowledged before the freeze.
//!
//! The copy sees what left the page cache, not what left a disk's volatile write cache: with
//! `--journal-io direct` (O_DIRECT) writes go straight to the loop device, so the copy would hold
//! them even without the cache flush a sync sends. Each run therefore also counts the flushes
//! the loop device received while the load ran: at least one per journal sync, or a sync did not
//! reach the disk's cache-flush (both modes are run).
//!
//! Needs root, losetup and mkfs.ext4 (`.ci/run` installs them); without them it fails unless
//! NS_SKIP_POWER_CUT=1. results/without-sync.patch is the negative control: with the writer's
//! sync taken out, this test fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use proto::Status;
use test_support::*;

/// An ext4 filesystem in a file, attached to a loop device and mounted; all of it undone on
/// drop.
struct LoopFs {
    image: PathBuf,
    dev: String,
    mnt: PathBuf,
}

fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl LoopFs {
    /// A fresh filesystem of `mib` MiB in `image`.
    fn create(image: PathBuf, mib: u64) -> Result<LoopFs, String> {
        let f = std::fs::File::create(&image).map_err(|e| e.to_string())?;
        f.set_len(mib << 20).map_err(|e| e.to_string())?;
        drop(f);
        let path = image.to_str().expect("utf-8 path");
        run("mkfs.ext4", &["-q", "-F", path])?;
        Self::attach(image)
    }

    /// Attaches and mounts an existing image (ext4 replays its own journal at mount, as after
    /// a power cut).
    fn attach(image: PathBuf) -> Result<LoopFs, String> {
        let dev = run(
            "losetup",
            &["-f", "--show", image.to_str().expect("utf-8 path")],
        )?;
        let mnt = image.with_extension("mnt");
        std::fs::create_dir_all(&mnt).map_err(|e| e.to_string())?;
        let fs = LoopFs { image, dev, mnt };
        run("mount", &[&fs.dev, fs.mnt.to_str().expect("utf-8 path")])?;
        Ok(fs)
    }

    fn data_dir(&self) -> String {
        self.mnt.join("data").to_str().expect("utf-8").to_string()
    }

    /// Cache flushes the loop device has been sent (the 16th field of its block stat).
    fn flushes(&self) -> u64 {
        let dev = self.dev.trim_start_matches("/dev/");
        let stat = std::fs::read_to_string(format!("/sys/block/{dev}/stat")).expect("block stat");
        stat.split_whitespace()
            .nth(15)
            .and_then(|f| f.parse().ok())
            .expect("a flush count (Linux 5.5+)")
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let mnt = self.mnt.to_str().expect("utf-8");
        if run("umount", &[mnt]).is_err() {
            let _ = run("umount", &["-l", mnt]);
        }
        let _ = run("losetup", &["-d", &self.dev]);
        let _ = std::fs::remove_dir(&self.mnt);
        let _ = std::fs::remove_file(&self.image);
    }
}

/// Why this machine cannot run the test, if it cannot.
fn unavailable() -> Option<String> {
    // SAFETY: geteuid reads the caller's credentials and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (losetup and mount need it)".into());
    }
    for tool in ["losetup", "mkfs.ext4", "mount", "umount"] {
        if run("sh", &["-c", &format!("command -v {tool}")]).is_err() {
            return Some(format!("{tool} is missing"));
        }
    }
    if !Path::new("/dev/loop-control").exists() {
        return Some("no /dev/loop-control".into());
    }
    None
}

const USERS: usize = 4;
const PIPELINE: usize = 16;

#[test]
fn a_power_cut_loses_no_acknowledged_deposit_and_every_sync_flushed_the_disk() {
    if let Some(why) = unavailable() {
        assert!(
            std::env::var_os("NS_SKIP_POWER_CUT").is_some(),
            "the power-cut test cannot run here: {why} (NS_SKIP_POWER_CUT=1 skips it)"
        );
        return;
    }
    for io in ["buffered", "direct"] {
        power_cut(io);
    }
}

fn power_cut(io: &str) {
    // Removed last (declared first): the loop devices are detached before.
    let scratch = ScratchDir::new("ns-power-cut").expect("a scratch directory");
    let base = scratch.path();
    let fs = LoopFs::create(base.join("disk.img"), 128).expect("a loop-mounted ext4");
    let data = fs.data_dir();
    let name = unique_name("power");
    let mut server = Server::start_named_logged(
        &name,
        &["-w", "2", "--data-dir", &data, "--journal-io", io],
        &[],
    );
    let mut clients: Vec<Client> = (0..USERS)
        .map(|i| {
            let mut c = server.client();
            c.join_as(&format!("user{i}"));
            c
        })
        .collect();
    // Every server process, by pid, for the freeze.
    let json = server.stats_json();
    let mut pids = server.worker_pids();
    pids.push(server.master_pid());
    pids.push(json["journal"]["writer_pid"].as_u64().expect("writer pid") as u32);
    assert!(pids.iter().all(|&p| p > 1), "{pids:?}");
    let syncs = |server: &Server| {
        server.stats_json()["journal"]["syncs"]
            .as_u64()
            .expect("syncs")
    };
    let (syncs0, flushes0) = (syncs(&server), fs.flushes());
    // The freeze comes from another thread at an instant the load does not choose, so that
    // deposits are decided, in the journal's ring, in a write, or in a sync when it comes.
    let freezer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        for &p in &pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p as i32),
                nix::sys::signal::Signal::SIGSTOP,
            );
        }
        Instant::now()
    });
    // Each user deposits 1 at a time, PIPELINE in flight: its balance after recovery must be
    // at least what was acknowledged and at most what was sent.
    let mut acked = [0u64; USERS];
    let mut sent = [0u64; USERS];
    let mut in_flight = [0usize; USERS];
    let started = Instant::now();
    'load: loop {
        for (i, c) in clients.iter_mut().enumerate() {
            while in_flight[i] < PIPELINE {
                let id = c.next_req_id();
                c.send_raw(&Client::frame(id, &deposit(1)));
                in_flight[i] += 1;
                sent[i] += 1;
            }
        }
        for (i, c) in clients.iter_mut().enumerate() {
            while in_flight[i] > 0 {
                // Answers come within milliseconds while the server runs: a second of silence
                // is the freeze (checked below).
                let Some(g) = c.read_frame_within(Duration::from_secs(1)) else {
                    if freezer.is_finished() {
                        break 'load;
                    }
                    continue;
                };
                assert!(g.is_response(), "no pushes in this test");
                assert_eq!(g.status(), Status::Ok, "deposit {i}");
                acked[i] += 1;
                in_flight[i] -= 1;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the freeze never came"
        );
    }
    let frozen_at = freezer.join().expect("freezer");
    // Whatever else was sent before the freeze is read now (no answer is sent after it).
    for (i, c) in clients.iter_mut().enumerate() {
        while in_flight[i] > 0 {
            match c.read_frame_within(Duration::from_millis(300)) {
                Some(g) => {
                    assert_eq!(g.status(), Status::Ok);
                    acked[i] += 1;
                    in_flight[i] -= 1;
                }
                None => break,
            }
        }
    }
    assert!(
        acked.iter().all(|&a| a > 100),
        "load ran before the freeze: {acked:?}"
    );
    assert!(
        in_flight.iter().any(|&n| n > 0),
        "deposits were in flight at the freeze: {in_flight:?}"
    );
    let (synced, flushed) = (syncs(&server) - syncs0, fs.flushes() - flushes0);
    eprintln!("{io}: {synced} journal syncs, {flushed} cache flushes sent to the disk");
    assert!(
        flushed >= synced && synced > 0,
        "{io}: {synced} syncs but {flushed} flushes reached the disk"
    );
    // The power goes: what the device holds now is all there is.
    let copy = base.join("after.img");
    std::fs::copy(&fs.image, &copy).expect("copy the disk");
    eprintln!(
        "{io}: power cut {:?} after the freeze; acknowledged {acked:?}, sent {sent:?}",
        frozen_at.elapsed()
    );
    server.inner.crash().expect("kill every server process");
    drop(clients);
    drop(server);
    drop(fs);
    // The reboot: the copied disk, mounted, and a server recovered from it.
    let fs = LoopFs::attach(copy).expect("mount the copy");
    let data = fs.data_dir();
    let server = Server::start_logged("power-after", &["-w", "1", "--data-dir", &data], &[]);
    let mut recovered = [0u64; USERS];
    for i in 0..USERS {
        let mut c = server.client();
        assert_eq!(
            c.login_with(&format!("user{i}"), secret()),
            Status::Ok,
            "user{i} was acknowledged registered"
        );
        let balance = c.balance();
        recovered[i] = balance;
        assert!(
            balance >= acked[i] && balance <= sent[i],
            "user{i}: balance {balance}, acknowledged {}, sent {}",
            acked[i],
            sent[i]
        );
    }
    eprintln!("{io}: recovered balances {recovered:?}");
    assert!(server.inner.audit(), "the recovered ledger audits clean");
    drop(server);
    drop(fs);
}
