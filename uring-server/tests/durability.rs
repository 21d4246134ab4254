//! The durable ledger, with real processes (PROTOCOL.md 8.5, DESIGN.md §7): what survives a
//! full crash (SIGKILL to every process, shared memory removed as after a reboot), a torn or
//! corrupt journal, a disk that refuses writes, checkpoints, and what a second server is refused.
//! Outcomes are read back over the wire and compared with what the client sent and was told.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use proto::body::*;
use proto::{Request, Status};
use test_support::*;
use uring_server::durable::file;

/// A data directory of this test's own, removed on drop.
struct DataDir(PathBuf);

impl DataDir {
    fn new(tag: &str) -> DataDir {
        let d = std::env::temp_dir().join(format!("ns-test-{}", unique_name(tag)));
        let _ = std::fs::remove_dir_all(&d);
        DataDir(d)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 temp path")
    }

    /// The journal segments, oldest first.
    fn journals(&self) -> Vec<PathBuf> {
        file::list(&self.0)
            .expect("list")
            .0
            .into_iter()
            .map(|j| j.1)
            .collect()
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// SIGKILL to the master, every worker and the journal writer, by pid; waits until they are
/// gone and removes the shared memory, as a reboot would (the launcher's `crash`).
fn crash_everything(server: &mut Server) {
    let json = server.stats_json();
    let writer = json["journal"]["writer_pid"].as_u64().expect("writer pid") as u32;
    assert!(writer > 1, "a journal writer runs: {json}");
    let killed = server.inner.crash().expect("crash the server");
    assert!(
        killed.contains(&writer) && killed.contains(&server.master_pid()),
        "{killed:?}"
    );
    assert!(killed.iter().all(|&p| p > 1));
}

fn args<'a>(io: &'a str, dir: &'a DataDir) -> Vec<&'a str> {
    vec!["--io", io, "-w", "2", "--data-dir", dir.path()]
}

#[test]
fn users_balances_history_and_retries_survive_kill_9_of_every_process() {
    for io in BACKENDS {
        let dir = DataDir::new("restart");
        let name = unique_name("restart");
        let mut server = Server::start_named_logged(&name, &args(io, &dir), &[]);
        let mut a = server.client();
        a.join_as("alice");
        let mut b = server.client();
        b.join_as("bob");
        let (_, t1) = a.ledger(&deposit(1000)).expect("deposit");
        let (after, t2) = a.ledger(&transfer_to("bob", 300)).expect("transfer");
        assert_eq!(after, 700);
        assert_eq!(b.ledger(&withdraw(100)).expect("withdraw").0, 200);
        // Answered, but as if the answer were lost: its retry must get the same answer.
        let lost_id = a.next_req_id();
        let lost = a.ledger_with_id(lost_id, &deposit(50)).expect("deposit");
        assert_eq!(lost.0, 750);
        let refused_id = a.next_req_id();
        assert_eq!(
            a.ledger_with_id(refused_id, &withdraw(1_000_000)),
            Err(Status::ErrInsufficientFunds)
        );
        crash_everything(&mut server);
        drop(server);

        let mut server = Server::start_named_logged(&name, &args(io, &dir), &[]);
        let mut a = server.client();
        assert_eq!(
            a.login_with("alice", secret()),
            Status::Ok,
            "{io}: alice logs in"
        );
        assert_eq!(
            a.req_id_hw, refused_id,
            "{io}: the high-water mark survived"
        );
        assert_eq!(
            a.ledger_with_id(lost_id, &deposit(50)),
            Ok(lost),
            "{io}: a retry gets the first answer, applied once"
        );
        assert_eq!(
            a.ledger_with_id(refused_id, &withdraw(1_000_000)),
            Err(Status::ErrInsufficientFunds),
            "{io}: a refusal is kept too"
        );
        assert_eq!(a.balance(), 750, "{io}");
        a.next_id_at_least(a.req_id_hw);
        let (after, t4) = a.ledger(&deposit(1)).expect("a new deposit");
        assert_eq!(after, 751);
        assert!(t4 > lost.1, "{io}: txn ids continue after the restart");
        assert_eq!(
            history(&mut a),
            vec![
                (t4, TxnKind::Deposit, 1),
                (lost.1, TxnKind::Deposit, 50),
                (t2, TxnKind::Transfer, 300),
                (t1, TxnKind::Deposit, 1000),
            ],
            "{io}: the history survived"
        );
        let mut b = server.client();
        assert_eq!(b.login_with("bob", secret()), Status::Ok);
        assert_eq!(b.balance(), 200, "{io}");
        let (code, out) = server.tool(&["audit"]);
        assert_eq!(code, 0, "{io}: {out}");
        let log = server.stop_and_stderr();
        assert!(
            log.contains("recovered: checkpoint + journal replayed, audit clean"),
            "{log}"
        );
    }
}

/// Starts a server on `dir`, has alice deposit 1, 2 and 4 (so her balance tells which records
/// were replayed), and crashes it: the journal's last record is the deposit of 4.
fn journal_of_three_deposits(dir: &DataDir) -> String {
    let name = unique_name("journal");
    let mut server = Server::start_named_logged(&name, &["-w", "1", "--data-dir", dir.path()], &[]);
    let mut a = server.client();
    a.join_as("alice");
    for amount in [1, 2, 4] {
        a.ledger(&deposit(amount)).expect("deposit");
    }
    crash_everything(&mut server);
    name
}

/// Where each record of `bytes` starts and ends, stepping over the padding of batches written
/// with O_DIRECT, up to the segment's zero-filled rest.
fn boundaries(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut at = Vec::new();
    let mut off = 0;
    while off < bytes.len() {
        if file::unwritten_at(&bytes[off..]) {
            match file::after_padding(bytes, off) {
                Some(n) => off = n,
                None => break,
            }
        }
        let (_, _, len) = file::decode(&bytes[off..]).expect("a whole journal");
        at.push((off, off + len));
        off += len;
    }
    at
}

/// A fresh segment shaped like the test servers', not in /dev/shm.
fn scratch_segment() -> shm::Segment {
    let caps = shm::Capacities {
        users: 4096,
        rooms: 64,
        members_per_room: 256,
        txn_log: 65536,
        workers: 3,
        ..shm::Capacities::default()
    };
    shm::Segment::private(caps, shm::LockMode::Account).expect("segment")
}

#[test]
fn a_torn_tail_is_dropped_at_every_cut_inside_the_last_record() {
    let dir = DataDir::new("torn");
    let name = journal_of_three_deposits(&dir);
    let journals = dir.journals();
    assert_eq!(journals.len(), 1, "{journals:?}");
    let whole = std::fs::read(&journals[0]).expect("read");
    let at = boundaries(&whole);
    assert_eq!(at.len(), 4, "user, three deposits: {at:?}");
    let (last_start, end) = at[3];
    // Every cut inside the last record, through the real recovery code: the record is dropped,
    // the three before it replayed, and the file cut back to where it began.
    for cut in last_start + 1..end {
        let copy = DataDir::new("torn-copy");
        std::fs::create_dir_all(&copy.0).expect("mkdir");
        let path = copy.0.join(journals[0].file_name().expect("name"));
        std::fs::write(&path, &whole[..cut]).expect("write");
        let seg = scratch_segment();
        let r = uring_server::durable::recover::recover(
            &copy.0,
            &seg,
            uring_server::durable::recover::OnCorruption::Stop,
        )
        .unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        assert_eq!(r.replayed, 3, "cut at {cut}");
        assert_eq!(r.next_lsn, 3, "cut at {cut}");
        let torn = r.torn.expect("a torn tail reported");
        assert_eq!(
            (torn.1, torn.2),
            (last_start as u64, (cut - last_start) as u64)
        );
        assert_eq!(
            std::fs::metadata(&path).expect("stat").len(),
            last_start as u64
        );
        assert_eq!(shm::ledger::balance(&seg, 1), Ok(3), "cut at {cut}");
    }
    // And the real server, on a cut in the middle of the last record.
    let f = file::open_rw(&journals[0]).expect("open");
    f.set_len(((last_start + end) / 2) as u64).expect("cut");
    drop(f);
    let mut server = Server::start_named_logged(&name, &["-w", "1", "--data-dir", dir.path()], &[]);
    let mut a = server.client();
    assert_eq!(a.login_with("alice", secret()), Status::Ok);
    assert_eq!(
        a.balance(),
        3,
        "the torn deposit of 4 is gone, the others are not"
    );
    let log = server.stop_and_stderr();
    assert!(log.contains("torn tail dropped"), "{log}");
}

/// Recovers `dir` into a scratch segment.
fn recover_dir(dir: &DataDir) -> anyhow::Result<uring_server::durable::recover::Recovered> {
    uring_server::durable::recover::recover(
        &dir.0,
        &scratch_segment(),
        uring_server::durable::recover::OnCorruption::Stop,
    )
}

#[test]
fn preallocated_and_recycled_segments_end_cleanly_and_a_segment_missing_after_one_is_refused() {
    let dir = DataDir::new("prealloc");
    journal_of_three_deposits(&dir);
    let journals = dir.journals();
    assert_eq!(journals.len(), 1, "{journals:?}");
    let whole = std::fs::read(&journals[0]).expect("read");
    let at = boundaries(&whole);
    let records = at[3].1;
    assert!(
        whole.len() > records && whole[records..].iter().all(|&b| b == 0),
        "the server's segment is zero-filled past its records ({} of {} bytes)",
        records,
        whole.len()
    );
    // The real segment: four records, then zeros: a clean end, nothing torn, nothing cut.
    let r = recover_dir(&dir).expect("recover");
    assert_eq!((r.replayed, r.next_lsn), (4, 4));
    assert!(r.torn.is_none(), "zeros are not a torn tail: {:?}", r.torn);
    assert_eq!(r.tail, Some((journals[0].clone(), records as u64)));
    assert_eq!(
        std::fs::metadata(&journals[0]).expect("stat").len(),
        whole.len() as u64,
        "the allocated rest is kept for the next writes"
    );
    let record = |i: usize| &whole[at[i].0..at[i].1];
    // A recycled segment: records 0..=2, then an older life's record 0 (numbered below the
    // next one): the data ends there, cleanly.
    let copy = DataDir::new("prealloc-recycled");
    std::fs::create_dir_all(&copy.0).expect("mkdir");
    let mut bytes = [record(0), record(1), record(2), record(0), record(1)].concat();
    bytes.extend_from_slice(&[0xAB; 7]);
    std::fs::write(copy.0.join(file::journal_name(0)), &bytes).expect("write");
    let r = recover_dir(&copy).expect("recover a recycled segment");
    assert_eq!((r.replayed, r.next_lsn), (3, 3));
    assert!(r.torn.is_none(), "{:?}", r.torn);
    // A clean end in a segment that is not the last, and the next one starting after it.
    let copy = DataDir::new("prealloc-two");
    std::fs::create_dir_all(&copy.0).expect("mkdir");
    let first = [record(0), record(1), &[0u8; 4096][..]].concat();
    let second = [record(2), record(3), &[0u8; 4096][..]].concat();
    std::fs::write(copy.0.join(file::journal_name(0)), &first).expect("write");
    std::fs::write(copy.0.join(file::journal_name(2)), &second).expect("write");
    let r = recover_dir(&copy).expect("recover two segments");
    assert_eq!((r.replayed, r.next_lsn, r.segments), (4, 4, 2));
    // ... but when the next one starts later, the records between are missing: refused.
    std::fs::remove_file(copy.0.join(file::journal_name(2))).expect("rm");
    std::fs::write(
        copy.0.join(file::journal_name(3)),
        [record(3), &[0u8; 64][..]].concat(),
    )
    .expect("write");
    let err = recover_dir(&copy).expect_err("a segment is missing");
    assert!(
        format!("{err:#}").contains("records are missing"),
        "{err:#}"
    );
    // Zeros in the middle of a segment with its records after them: corruption, not an end.
    let copy = DataDir::new("prealloc-hole");
    std::fs::create_dir_all(&copy.0).expect("mkdir");
    let holed = [record(0), record(1), &[0u8; 512][..], record(2), record(3)].concat();
    std::fs::write(copy.0.join(file::journal_name(0)), &holed).expect("write");
    let err = recover_dir(&copy).expect_err("a hole before valid records");
    assert!(
        format!("{err:#}").contains("valid records follow"),
        "{err:#}"
    );
}

/// Runs `uring-server ARGS` expecting it to refuse to start; returns its stderr.
fn refused_start(args: &[&str]) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_uring-server"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(
                !status.success(),
                "the server was expected to refuse: {args:?}"
            );
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the server started, expected a refusal: {args:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err)
        .expect("read");
    err
}

#[test]
fn a_flipped_bit_mid_journal_stops_the_start_naming_file_and_offset() {
    let dir = DataDir::new("flip");
    let name = journal_of_three_deposits(&dir);
    let journal = dir.journals().remove(0);
    let mut bytes = std::fs::read(&journal).expect("read");
    let at = boundaries(&bytes);
    // A bit in the payload of the first deposit: records after it are whole and valid.
    let bad = at[1].0;
    bytes[bad + 30] ^= 0x10;
    std::fs::write(&journal, &bytes).expect("write");
    let err = refused_start(&["--port", "0", "--name", &name, "--data-dir", dir.path()]);
    assert!(
        err.contains(&journal.display().to_string()) && err.contains(&format!("offset {bad}")),
        "names the file and the offset: {err}"
    );
    assert!(err.contains("checksum mismatch"), "{err}");
    assert!(
        !Path::new(&format!("/dev/shm/ns-{name}")).exists(),
        "no segment left behind"
    );
    // The operator's explicit way out: everything from the corrupt record on is dropped.
    let mut server = Server::start_named_logged(
        &name,
        &[
            "-w",
            "1",
            "--data-dir",
            dir.path(),
            "--journal-truncate-corrupt",
        ],
        &[],
    );
    let mut a = server.client();
    assert_eq!(a.login_with("alice", secret()), Status::Ok);
    assert_eq!(
        a.balance(),
        0,
        "the corrupt deposit and the ones after it are gone"
    );
    let log = server.stop_and_stderr();
    assert!(
        log.contains("--journal-truncate-corrupt cuts the journal here"),
        "{log}"
    );
}

/// Sets the soft file-size limit of process `pid` (RLIM_INFINITY: none).
fn set_file_size_limit(pid: u32, soft: u64) {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit reads `new` and writes `old`, both valid for the call.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_FSIZE,
            std::ptr::null(),
            &mut old,
        )
    };
    assert_eq!(rc, 0, "read the writer's limit");
    let new = libc::rlimit {
        rlim_cur: soft.min(old.rlim_max),
        rlim_max: old.rlim_max,
    };
    // SAFETY: as above.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_FSIZE,
            &new,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "set the writer's limit");
}

#[test]
fn a_failing_disk_refuses_ledger_writes_keeps_chat_and_recovers_by_itself() {
    for io in BACKENDS {
        let dir = DataDir::new("efbig");
        // Every batch appends (no space reserved ahead), so the limit below fails the next one.
        let mut a_args = args(io, &dir);
        a_args.extend(["--journal-prealloc", "off"]);
        let server = Server::start_logged("efbig", &a_args, &[]);
        let mut a = server.client();
        a.join_as("alice");
        let mut b = server.client();
        b.join_as("bob");
        a.ledger(&deposit(100)).expect("deposit");
        let writer = server.stats_json()["journal"]["writer_pid"]
            .as_u64()
            .expect("writer pid") as u32;
        let journal = dir.journals().pop().expect("a journal");
        let size = std::fs::metadata(&journal).expect("stat").len();
        // The disk is "full": no write may grow the journal (EFBIG).
        set_file_size_limit(writer, size);
        let held = a.next_req_id();
        a.send_raw(&Client::frame(held, &deposit(5)));
        wait_until(
            Duration::from_secs(10),
            &format!("{io}: the writer reports the failure"),
            || server.stats_json()["journal"]["error"].as_u64() != Some(0),
        );
        // Alice's deposit is decided but not on disk: it is not acknowledged.
        a.stream().tcp().set_nonblocking(true).expect("nonblocking");
        let mut byte = [0u8; 1];
        let peek = a.stream().tcp().peek(&mut byte);
        assert!(
            matches!(&peek, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "{io}: no answer while the journal cannot write: {peek:?}"
        );
        a.stream().tcp().set_nonblocking(false).expect("blocking");
        // New ledger writes and reads are refused, nothing applied; chat goes on.
        let refused = b.next_req_id();
        assert_eq!(
            b.ledger_with_id(refused, &deposit(7)),
            Err(Status::ErrStorageUnavailable),
            "{io}"
        );
        b.expect(&Request::Balance(Empty {}), Status::ErrStorageUnavailable);
        let room = proto::codec::Name::new("durable-room").expect("name");
        b.expect(&Request::JoinRoom(JoinRoomRequest { room }), Status::Ok);
        let (_, text) = server.tool(&["stats"]);
        assert!(text.contains("FAILING: File too large"), "{io}: {text}");
        // Space comes back: the writer succeeds on its own, the held answer goes out.
        set_file_size_limit(writer, libc::RLIM_INFINITY);
        match a.response(held).reply() {
            proto::Reply::Ok(proto::Response::Deposit(r)) => assert_eq!(r.balance, 105, "{io}"),
            other => panic!("{io}: {other:?}"),
        }
        assert_eq!(
            b.ledger_with_id(refused, &deposit(7)).map(|r| r.0),
            Ok(7),
            "{io}: the refused request applies once on its retry"
        );
        assert_eq!(b.balance(), 7);
        let json = server.stats_json();
        assert_eq!(json["journal"]["error"], 0, "{io}: {json}");
        assert!(
            json["journal"]["refused"].as_u64() >= Some(1),
            "{io}: {json}"
        );
    }
}

#[test]
fn a_second_server_cannot_share_a_port_or_a_data_dir() {
    let dir = DataDir::new("shared");
    let server = Server::start("shared", &["-w", "1", "--data-dir", dir.path()]);
    let port = server.addr.port().to_string();
    let other = DataDir::new("other");
    let err = refused_start(&[
        "--port",
        &port,
        "--name",
        &unique_name("second"),
        "--data-dir",
        other.path(),
    ]);
    assert!(err.contains("already in use"), "same port: {err}");
    let err = refused_start(&[
        "--port",
        "0",
        "--name",
        &unique_name("third"),
        "--data-dir",
        dir.path(),
    ]);
    assert!(
        err.contains("in use by another server"),
        "same data dir: {err}"
    );
    // Money and password verifiers are the server's user's only.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&dir.0), 0o700);
    for j in dir.journals() {
        assert_eq!(mode(&j), 0o600, "{}", j.display());
    }
    drop(server);
}

#[test]
fn checkpoints_bound_the_journal_and_a_clean_stop_leaves_nothing_to_replay() {
    let dir = DataDir::new("checkpoint");
    let name = unique_name("checkpoint");
    // The smallest checkpoint interval (64 KiB of journal): a few thousand deposits pass it.
    let a_args = [
        "-w",
        "2",
        "--data-dir",
        dir.path(),
        "--checkpoint-bytes",
        "65536",
    ];
    let mut server = Server::start_named_logged(&name, &a_args, &[]);
    let mut a = server.client();
    a.join_as("alice");
    let mut total = 0;
    for i in 1..=1500u64 {
        a.ledger(&deposit(i)).expect("deposit");
        total += i;
    }
    wait_until(Duration::from_secs(10), "a checkpoint is written", || {
        server.stats_json()["journal"]["checkpoints"].as_u64() >= Some(1)
    });
    let (checkpoints, journals) = {
        let (j, c) = file::list(&dir.0).expect("list");
        (c, j)
    };
    assert!(!checkpoints.is_empty());
    assert!(
        journals.iter().all(|(lsn, _)| *lsn >= checkpoints[0].0),
        "segments before the checkpoint are removed: {journals:?} {checkpoints:?}"
    );
    crash_everything(&mut server);
    drop(server);
    let mut server = Server::start_named_logged(&name, &a_args, &[]);
    let mut a = server.client();
    assert_eq!(a.login_with("alice", secret()), Status::Ok);
    assert_eq!(a.balance(), total, "checkpoint + the journal after it");
    // A clean stop writes a final checkpoint: the next start replays no journal record.
    let log = server.stop_and_stderr();
    assert!(log.contains("final checkpoint written"), "{log}");
    let mut server = Server::start_named_logged(&name, &a_args, &[]);
    let mut a = server.client();
    assert_eq!(a.login_with("alice", secret()), Status::Ok);
    assert_eq!(a.balance(), total);
    let log = server.stop_and_stderr();
    assert!(log.contains("records_replayed=0"), "{log}");
}

#[test]
fn a_killed_journal_writer_is_restarted_and_nothing_acknowledged_is_lost() {
    let dir = DataDir::new("writer-kill");
    let name = unique_name("writer-kill");
    let args = ["-w", "2", "--data-dir", dir.path()];
    let mut server = Server::start_named_logged(&name, &args, &[]);
    let mut a = server.client();
    a.join_as("alice");
    let writer = |s: &Server| {
        s.stats_json()["journal"]["writer_pid"]
            .as_u64()
            .unwrap_or(0) as u32
    };
    let mut total = 0u64;
    for round in 0..3 {
        for i in 1..=50u64 {
            a.ledger(&deposit(i)).expect("deposit");
            total += i;
        }
        let old = writer(&server);
        assert!(old > 1, "a writer runs");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(old as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill the writer");
        // A deposit sent while no writer runs is answered once its successor has synced it.
        a.ledger(&deposit(1000))
            .expect("deposit across the writer's restart");
        total += 1000;
        wait_until(
            Duration::from_secs(10),
            &format!("round {round}: the writer is restarted"),
            || {
                let now = writer(&server);
                now > 1 && now != old
            },
        );
    }
    assert_eq!(a.balance(), total);
    crash_everything(&mut server);
    drop(server);
    let mut server = Server::start_named_logged(&name, &args, &[]);
    let mut a = server.client();
    assert_eq!(a.login_with("alice", secret()), Status::Ok);
    assert_eq!(a.balance(), total, "every acknowledged deposit survived");
    let log = server.stop_and_stderr();
    assert!(log.contains("recovered"), "{log}");
}

#[test]
fn durability_none_keeps_no_journal_and_says_so() {
    let dir = DataDir::new("none");
    let name = unique_name("none");
    let args = ["-w", "1", "--durability", "none", "--data-dir", dir.path()];
    let mut server = Server::start_named_logged(&name, &args, &[]);
    let mut a = server.client();
    a.join_as("alice");
    assert_eq!(a.ledger(&deposit(5)).map(|r| r.0), Ok(5));
    let json = server.stats_json();
    assert_eq!(json["journal"]["mode"], "none", "{json}");
    assert_eq!(json["journal"]["records"], 0, "{json}");
    assert_eq!(
        json["journal"]["writer_pid"], 0,
        "no writer process: {json}"
    );
    assert!(!dir.0.exists(), "no data directory is made");
    let (_, text) = server.tool(&["stats"]);
    assert!(text.contains("journal: none"), "{text}");
    let log = server.stop_and_stderr();
    assert!(log.contains("--durability none: no journal"), "{log}");
    // Nothing survives: the next start knows no alice.
    let server = Server::start_named_logged(&name, &args, &[]);
    let mut a = server.client();
    assert_eq!(a.login_with("alice", secret()), Status::ErrNotFound);
}
