//! Segment lifecycle, users, rooms and metrics: every table filled to capacity answers its
//! error, and nothing panics.

mod common;

use std::time::Duration;

use common::{create, creds, instance, register_users, small_caps, unique_name};
use shm::rooms::{Credit, MemberInfo, Read};
use shm::users::SessionId;
use shm::{
    Capacities, LockMode, Metrics, Previous, RoomError, Rooms, Segment, ShmError, UserError, Users,
};

#[test]
fn attach_sees_what_create_wrote_and_the_name_goes_with_the_creator() {
    let name = unique_name("life");
    let path = format!("/dev/shm/ns-{name}");
    {
        let (seg, prev) = Segment::create(&name, small_caps(), LockMode::Global).expect("create");
        assert_eq!(prev, Previous::None);
        assert!(std::path::Path::new(&path).exists());
        let other = Segment::attach(&name, false).expect("attach");
        assert_eq!(other.caps(), &small_caps());
        assert_eq!(other.lock_mode(), LockMode::Global);
        assert_eq!(other.creator_pid(), std::process::id());
        assert!(!other.is_writable());
        // A live creator's segment is not replaced.
        assert!(matches!(
            Segment::create(&name, small_caps(), LockMode::Global),
            Err(ShmError::InUse { .. })
        ));
        drop(seg);
        assert!(
            !std::path::Path::new(&path).exists(),
            "creator's drop unlinks"
        );
    }
    assert!(matches!(
        Segment::attach(&name, false),
        Err(ShmError::NotFound(_))
    ));
}

#[test]
fn a_stale_segment_of_a_dead_creator_is_replaced() {
    let name = unique_name("stale");
    let path = format!("/dev/shm/ns-{name}");
    // A master that dies by SIGKILL leaves its segment behind.
    let master = common::Helper::spawn(&["create".to_string(), name.clone()]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !std::path::Path::new(&path).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "helper never created it"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // Wait for "ready" (the header is written), then kill it.
    while Segment::attach(&name, false).is_err() {
        assert!(std::time::Instant::now() < deadline, "never became ready");
        std::thread::sleep(Duration::from_millis(5));
    }
    let dead_pid = master.child.id();
    let _ = master.kill9();
    assert!(std::path::Path::new(&path).exists(), "left behind");
    let (seg, prev) = Segment::create(&name, small_caps(), LockMode::Account).expect("create");
    assert_eq!(prev, Previous::Stale(dead_pid));
    assert_eq!(
        seg.caps(),
        &small_caps(),
        "a new segment, not the stale one"
    );
    drop(seg);
    assert!(!std::path::Path::new(&path).exists());

    // Garbage under the name (no readable header) is replaced too.
    std::fs::write(&path, vec![0u8; 8192]).expect("write stale file");
    let (seg, prev) = Segment::create(&name, small_caps(), LockMode::Account).expect("create");
    assert_eq!(prev, Previous::Stale(0));
    drop(seg);
}

#[test]
fn a_foreign_or_half_written_segment_is_refused_with_a_reason() {
    let name = unique_name("foreign");
    let path = format!("/dev/shm/ns-{name}");
    std::fs::write(&path, vec![0xAB; 8192]).expect("write");
    let err = Segment::attach(&name, false).expect_err("foreign");
    let msg = err.to_string();
    std::fs::remove_file(&path).expect("cleanup");
    assert!(matches!(err, ShmError::Mismatch { .. }), "{msg}");
    assert!(msg.contains("magic"), "{msg}");
}

#[test]
fn bad_capacities_and_names_are_refused() {
    let mut caps = small_caps();
    caps.room_ring = 10;
    assert!(matches!(
        Segment::create(&unique_name("caps"), caps, LockMode::Account),
        Err(ShmError::BadCapacity {
            name: "room_ring",
            ..
        })
    ));
    caps = small_caps();
    caps.users = 0;
    assert!(Segment::create(&unique_name("caps"), caps, LockMode::Account).is_err());
    assert!(matches!(
        Segment::create("has/slash", small_caps(), LockMode::Account),
        Err(ShmError::BadName(_))
    ));
}

#[test]
fn users_register_look_up_and_fill_up() {
    let mut caps = small_caps();
    caps.users = 5;
    let seg = create("users", caps, LockMode::Account);
    let users = Users::of(&seg);
    let ids = register_users(&seg, 5);
    assert_eq!(ids, vec![1, 2, 3, 4, 5]);
    assert_eq!(users.lookup("u3"), Some(3));
    assert_eq!(users.lookup("nobody"), None);
    assert_eq!(users.name(4).as_deref(), Some("u4"));
    assert_eq!(users.credentials(2), Some(creds()));
    assert_eq!(users.credentials(6), None);
    assert_eq!(
        users.register("u1", &creds()),
        Err(UserError::AlreadyExists)
    );
    assert_eq!(users.register("u6", &creds()), Err(UserError::Full));
    let mut bad = creds();
    bad.iterations = 1;
    assert_eq!(
        users.register("x", &bad),
        Err(UserError::Invalid("iterations"))
    );
    assert_eq!(users.count(), 5);
}

#[test]
fn sessions_replace_and_clear_by_worker() {
    let seg = create("sess", small_caps(), LockMode::Account);
    let users = Users::of(&seg);
    register_users(&seg, 3);
    let s1 = SessionId { worker: 0, conn: 7 };
    let s2 = SessionId { worker: 1, conn: 9 };
    assert_eq!(users.set_online(1, s1), Ok(None));
    assert_eq!(users.set_online(1, s2), Ok(Some(s1)), "newer session wins");
    assert!(
        !users.set_offline(1, s1),
        "the old session cannot log the new one out"
    );
    assert_eq!(users.session(1), Some(s2));
    users.set_online(2, s2).expect("online");
    users.set_online(3, s1).expect("online");
    assert_eq!(users.online_after(0, 10), vec![1, 2, 3]);
    assert_eq!(users.clear_worker(1), 2);
    assert_eq!(users.online_after(0, 10), vec![3]);
    assert!(users.set_offline(3, s1));
    assert_eq!(users.set_online(99, s1), Err(UserError::NotFound));
}

fn member(user: u32) -> MemberInfo {
    MemberInfo {
        user,
        worker: user % 2,
        conn: u64::from(user),
    }
}

#[test]
fn rooms_join_leave_and_fill_up() {
    let seg = create("rooms", small_caps(), LockMode::Account);
    let rooms = Rooms::of(&seg);
    let j = rooms.join("lobby", member(1)).expect("join");
    assert_eq!((j.room_id, j.members, j.added), (1, 1, true));
    let again = rooms.join("lobby", member(1)).expect("join again");
    assert_eq!((again.members, again.added), (1, false));
    // Member set full at members_per_room.
    for u in 2..=16 {
        rooms.join("lobby", member(u)).expect("join");
    }
    assert_eq!(rooms.join("lobby", member(17)), Err(RoomError::Full));
    assert_eq!(rooms.leave(1, 99), Err(RoomError::NotMember));
    assert_eq!(rooms.leave(9, 1), Err(RoomError::NotFound));
    rooms.leave(1, 5).expect("leave");
    assert!(!rooms.is_member(1, 5));
    assert_eq!(rooms.join("lobby", member(17)).map(|j| j.members), Ok(16));
    // Room table full at `rooms`.
    for r in 2..=8 {
        rooms.join(&format!("r{r}"), member(1)).expect("join");
    }
    assert_eq!(rooms.join("one-too-many", member(1)), Err(RoomError::Full));
    assert_eq!(rooms.lookup("r5"), Some(5));
    // A dead worker's members leave every room.
    let removed = rooms.remove_worker(1).expect("remove");
    assert!(removed > 0);
    assert!(rooms
        .members(1)
        .expect("members")
        .iter()
        .all(|m| m.worker != 1));
    let listed = rooms.list(0, 100);
    assert_eq!(listed.len(), 8);
    assert_eq!(listed[0].name, "lobby");
    assert_eq!(
        listed[0].members as usize,
        rooms.members(1).expect("m").len()
    );
}

#[test]
fn the_ring_keeps_order_and_tells_a_late_reader_what_it_missed() {
    let seg = create("ring", small_caps(), LockMode::Account);
    let rooms = Rooms::of(&seg);
    let id = rooms.join("r", member(1)).expect("join").room_id;
    assert_eq!(rooms.read(id, 1), Ok(Read::NotYet));
    for i in 1..=40u64 {
        let seq = rooms
            .publish(id, 1, "u1", &format!("message {i}"), 1000 + i)
            .expect("publish");
        assert_eq!(seq, i);
    }
    // The ring holds 16: 25..=40.
    match rooms.read(id, 40).expect("read") {
        Read::Event(e) => {
            assert_eq!(e.text, "message 40");
            assert_eq!(e.sender_name, "u1");
            assert_eq!(e.time_ms, 1040);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(rooms.read(id, 25), Ok(Read::Event(_))));
    assert_eq!(rooms.read(id, 24), Ok(Read::Missed { oldest: 25 }));
    assert_eq!(rooms.read(id, 41), Ok(Read::NotYet));
    assert_eq!(
        rooms.publish(id, 1, "u1", "", 0),
        Err(RoomError::Invalid("text"))
    );
    assert_eq!(
        rooms.publish(id, 1, "u1", &"x".repeat(4001), 0),
        Err(RoomError::Invalid("text"))
    );
    let long = "é".repeat(2000);
    let seq = rooms.publish(id, 1, "u1", &long, 0).expect("4000 bytes");
    assert!(matches!(rooms.read(id, seq), Ok(Read::Event(e)) if e.text == long));
}

#[test]
fn worker_inboxes_are_rings_outside_the_room_id_space() {
    let seg = create("inbox", small_caps(), LockMode::Account);
    let rooms = Rooms::of(&seg);
    for w in 0..small_caps().workers {
        assert_eq!(rooms.inbox_last_seq(w), Ok(0));
    }
    assert_eq!(rooms.inbox_publish(1, 5, 9, "u5", "psst", 7), Ok(1));
    assert_eq!(rooms.inbox_publish(1, 6, 9, "u6", "hey", 8), Ok(2));
    match rooms.inbox_read(1, 1).expect("read") {
        Read::Event(e) => assert_eq!(
            (e.sender, e.target, e.text.as_str(), e.time_ms),
            (5, 9, "psst", 7)
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(rooms.inbox_last_seq(0), Ok(0), "each worker has its own");
    assert_eq!(rooms.count(), 0, "no room was created");
    assert!(rooms.list(0, 10).is_empty());
    let workers = small_caps().workers;
    assert_eq!(
        rooms.inbox_publish(workers, 5, 9, "u5", "x", 0),
        Err(RoomError::NotFound)
    );
    // The first room a client creates is room 1.
    assert_eq!(rooms.join("lobby", member(1)).expect("join").room_id, 1);
}

#[test]
fn a_credit_in_an_inbox_reads_back_with_its_amount_txn_and_lsn_between_messages() {
    let seg = create("credit", small_caps(), LockMode::Account);
    let rooms = Rooms::of(&seg);
    let credit = Credit {
        amount: u64::MAX,
        txn_id: 17,
        lsn: 4242,
    };
    assert_eq!(rooms.inbox_publish(0, 5, 9, "u5", "before", 1), Ok(1));
    assert_eq!(rooms.inbox_credit(0, 5, 9, "u5", credit, 2), Ok(2));
    assert_eq!(rooms.inbox_publish(0, 5, 9, "u5", "after", 3), Ok(3));
    let read = |seq| match rooms.inbox_read(0, seq).expect("read") {
        Read::Event(e) => e,
        other => panic!("{other:?}"),
    };
    let c = read(2);
    assert_eq!(
        (c.sender, c.target, c.time_ms, c.text.as_str()),
        (5, 9, 2, "")
    );
    assert_eq!(c.sender_name, "u5");
    assert_eq!(c.credit, Some(credit));
    // The messages on either side are messages.
    assert_eq!(read(1).credit, None);
    assert_eq!((read(3).credit, read(3).text.as_str()), (None, "after"));
}

#[test]
fn a_waiter_in_another_thread_wakes_on_notify() {
    let seg = create("wake", small_caps(), LockMode::Account);
    let seen = shm::wake::epoch(&seg).load(std::sync::atomic::Ordering::Acquire);
    std::thread::scope(|s| {
        let waiter = s.spawn(|| shm::wake::wait(&seg, seen, Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(20));
        shm::wake::notify(&seg);
        assert_eq!(waiter.join().expect("waiter"), seen + 1);
    });
    // With nothing to wake it, a wait times out and returns the unchanged epoch.
    let now = shm::wake::epoch(&seg).load(std::sync::atomic::Ordering::Acquire);
    assert_eq!(shm::wake::wait(&seg, now, Duration::from_millis(10)), now);
}

#[test]
fn eventfds_carry_a_wake_up_to_each_worker() {
    let fds = shm::wake::WakeFds::new(3).expect("eventfds");
    assert_eq!(fds.drain(1), 0, "nothing yet (non-blocking read)");
    let seg = create("efd", small_caps(), LockMode::Account);
    shm::wake::notify_all(&seg, Some(&fds));
    shm::wake::notify_all(&seg, Some(&fds));
    for i in 0..3 {
        assert_eq!(fds.drain(i), 2);
        assert_eq!(fds.drain(i), 0);
    }
    assert!(fds.fd(2).is_some() && fds.fd(3).is_none());
}

#[test]
fn ledger_slots_are_bounded_and_owned() {
    let seg = create("slots", small_caps(), LockMode::Account);
    assert!(matches!(
        shm::Ledger::attach(&seg, small_caps().workers),
        Err(ShmError::BadCapacity { name: "slot", .. })
    ));
    // A slot held by a live process is refused; once that process is dead, it can be claimed.
    let ids = register_users(&seg, 8);
    let mut mine = shm::Ledger::attach(&seg, 0).expect("attach");
    for id in ids {
        mine.deposit(id, u64::from(id), 1_000_000).expect("fund");
    }
    let args: Vec<String> = [
        "ledger",
        &instance(&seg),
        "2",
        "9",
        "1000000",
        "8",
        "2",
        "1000000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let other = common::Helper::spawn(&args);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while other.output_len() == 0 {
        assert!(std::time::Instant::now() < deadline, "helper never ran");
        std::thread::sleep(Duration::from_millis(2));
    }
    let pid = other.child.id();
    assert!(matches!(
        shm::Ledger::attach(&seg, 2),
        Err(ShmError::SlotInUse { slot: 2, pid: p }) if p == pid
    ));
    let _ = other.kill9();
    shm::Ledger::attach(&seg, 2).expect("a dead owner's slot can be claimed");
    assert!(shm::ledger::audit(&seg, Duration::from_secs(1))
        .expect("audit")
        .ok());
}

#[test]
fn metrics_blocks_are_per_worker_and_readable_read_only() {
    let seg = create("metrics", small_caps(), LockMode::Account);
    let m = Metrics::of(&seg);
    let w0 = m.worker(0).expect("worker 0");
    // Which counter means which opcode is the server's business; any index will do here.
    const TRANSFER_COUNTER: usize = 19;
    w0.requests[TRANSFER_COUNTER].add(3);
    w0.bytes_in.add(100);
    m.worker(1).expect("worker 1").bytes_in.add(5);
    assert!(m.worker(small_caps().workers as usize).is_none());
    let ro = Segment::attach(&instance(&seg), false).expect("ro");
    let r = Metrics::of(&ro);
    let total: u64 = r.workers().iter().map(|w| w.bytes_in.get()).sum();
    assert_eq!(total, 105);
    assert_eq!(r.worker(0).expect("w0").requests[TRANSFER_COUNTER].get(), 3);
    // Each block sits on its own cache lines.
    assert_eq!(core::mem::align_of::<shm::WorkerMetrics>() % 64, 0);
}

#[test]
fn default_capacities_create_and_attach() {
    let seg = create("defaults", Capacities::default(), LockMode::Account);
    assert!(seg.layout().size > 0);
    let ro = Segment::attach(&instance(&seg), false).expect("attach");
    assert_eq!(ro.layout().size, seg.layout().size);
}
