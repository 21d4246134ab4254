//! Chat across workers, on both backends: every member gets every message of its room once, in
//! the room's order; history, room lists, membership errors, and the flood limit.

use std::time::{Duration, Instant};

use proto::body::*;
use proto::codec::Name;
use proto::{Push, Reply, Request, Response, Status};
use test_support::*;

fn send(c: &mut Client, room_id: u32, text: &str) -> Result<u64, Status> {
    match c
        .call(&Request::ChatSend(ChatSendRequest {
            room_id,
            text: Text::new(text).expect("text"),
        }))
        .reply()
    {
        Reply::Ok(Response::ChatSend(s)) => Ok(s.seq),
        Reply::Err(st, _) => Err(st),
        other => panic!("{other:?}"),
    }
}

/// Reads until `n` CHAT_BROADCASTs arrived for `room_id`; returns their (seq, sender, text).
fn broadcasts(c: &mut Client, room_id: u32, n: usize) -> Vec<(u64, u32, String)> {
    let mut got = Vec::new();
    let mut pending = std::mem::take(&mut c.pushes);
    loop {
        for g in pending.drain(..) {
            if let Push::ChatBroadcast(b) = g.push() {
                if b.room_id == room_id {
                    got.push((
                        b.message.seq,
                        b.message.sender_id,
                        b.message.text.as_str().to_string(),
                    ));
                }
            }
        }
        if got.len() >= n {
            return got;
        }
        let g = c
            .next()
            .expect("connection closed while waiting for pushes");
        pending.push(g);
    }
}

#[test]
fn every_member_on_every_worker_gets_every_message_in_order() {
    for (backend, transport) in backends_and_transports() {
        eprintln!("{backend} over {transport:?}");
        let server = Server::start_over(transport, "chat", &["-w", "2", "--io", backend]);
        // Members on both workers.
        let mut clients: Vec<Client> = Vec::new();
        let mut on = [0usize; 2];
        let mut i = 0;
        let deadline = Instant::now() + Duration::from_secs(20);
        while clients.len() < 8 || on.iter().any(|&n| n < 2) {
            assert!(
                Instant::now() < deadline,
                "SO_REUSEPORT never spread the connections"
            );
            let mut c = server.client();
            let w = c.worker() as usize;
            i += 1;
            c.join_as(&format!("m{i}"));
            on[w] += 1;
            clients.push(c);
        }
        let room = join(&mut clients[0], "lobby");
        for c in clients.iter_mut().skip(1) {
            assert_eq!(join(c, "lobby"), room);
        }
        let per = 5;
        let mut seqs = Vec::new();
        for round in 0..per {
            for (k, c) in clients.iter_mut().enumerate() {
                seqs.push(send(c, room, &format!("{k}:{round}")).expect("send"));
            }
        }
        let total = per * clients.len();
        seqs.sort_unstable();
        assert_eq!(
            seqs,
            (1..=total as u64).collect::<Vec<_>>(),
            "each send got its own seq"
        );
        for (k, c) in clients.iter_mut().enumerate() {
            let got = broadcasts(c, room, total);
            assert_eq!(got.len(), total, "client {k}: exactly every message");
            let order: Vec<u64> = got.iter().map(|g| g.0).collect();
            assert_eq!(
                order,
                (1..=total as u64).collect::<Vec<_>>(),
                "client {k}: in order"
            );
        }
        // History for a newcomer, and the room list.
        let mut late = server.client();
        late.join_as("late");
        match late
            .call(&Request::RoomHistory(RoomHistoryRequest {
                room_id: room,
                after_seq: total as u64 - 3,
                limit: 100,
            }))
            .reply()
        {
            Reply::Ok(Response::RoomHistory(h)) => {
                assert_eq!(h.last_seq, total as u64);
                assert_eq!(h.missed, 0);
                let s: Vec<u64> = h.messages.items().iter().map(|m| m.seq).collect();
                assert_eq!(s, vec![total as u64 - 2, total as u64 - 1, total as u64]);
            }
            other => panic!("{other:?}"),
        }
        match late
            .call(&Request::ListRooms(PageRequest {
                after_id: 0,
                limit: 10,
            }))
            .reply()
        {
            Reply::Ok(Response::ListRooms(l)) => {
                let r = &l.rooms.items()[0];
                assert_eq!(
                    (r.name.as_str(), r.members as usize),
                    ("lobby", clients.len())
                );
            }
            other => panic!("{other:?}"),
        }
        // Not a member, no such room.
        assert_eq!(send(&mut late, room, "hi"), Err(Status::ErrNotMember));
        assert_eq!(send(&mut late, 999, "hi"), Err(Status::ErrNotFound));
        // A member that disconnects leaves the room.
        drop(clients.pop());
        std::thread::sleep(Duration::from_millis(300));
        match late
            .call(&Request::ListRooms(PageRequest {
                after_id: 0,
                limit: 10,
            }))
            .reply()
        {
            Reply::Ok(Response::ListRooms(l)) => {
                assert_eq!(l.rooms.items()[0].members as usize, clients.len());
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn direct_messages_reach_a_user_on_any_worker() {
    for (backend, transport) in backends_and_transports() {
        eprintln!("{backend} over {transport:?}");
        let server = Server::start_over(transport, "dm", &["-w", "2", "--io", backend]);
        // One client on each worker.
        let mut a = server.client();
        let wa = a.worker();
        let mut b = client_on_worker(&server, 1 - wa);
        a.join_as("ann");
        b.join_as("ben");
        let dm = |c: &mut Client, to: &str, text: &str| {
            c.call(&Request::DirectSend(DirectSendRequest {
                to: Name::new(to).expect("name"),
                text: Text::new(text).expect("text"),
            }))
            .status()
        };
        assert_eq!(dm(&mut a, "ben", "hello ben"), Status::Ok);
        assert_eq!(dm(&mut b, "ann", "hi ann"), Status::Ok);
        let next_push = |c: &mut Client| {
            if c.pushes.is_empty() {
                c.next().expect("a push")
            } else {
                c.pushes.remove(0)
            }
        };
        let got_b = loop {
            let g = next_push(&mut b);
            if let Push::DirectMessage(m) = g.push() {
                break (m.from.as_str().to_string(), m.text.as_str().to_string());
            }
        };
        assert_eq!(got_b, ("ann".to_string(), "hello ben".to_string()));
        let got_a = loop {
            let g = next_push(&mut a);
            if let Push::DirectMessage(m) = g.push() {
                break m.text.as_str().to_string();
            }
        };
        assert_eq!(got_a, "hi ann");
        assert_eq!(dm(&mut a, "ann", "me"), Status::ErrInvalidArgument);
        assert_eq!(dm(&mut a, "nobody", "x"), Status::ErrNotFound);
        let mut c = server.client();
        c.join_as("cat");
        c.call(&Request::Logout(Empty {}));
        assert_eq!(dm(&mut a, "cat", "x"), Status::ErrUserOffline);
        // Direct messages do not live in the room id space: no room exists yet, so every
        // room id is unknown, to every request, alike.
        for room_id in [0, 1, 2, 3] {
            let g = a.call(&Request::RoomHistory(RoomHistoryRequest {
                room_id,
                after_seq: 0,
                limit: 10,
            }));
            assert_eq!(g.status(), Status::ErrNotFound, "ROOM_HISTORY {room_id}");
            let g = a.call(&Request::ChatSend(ChatSendRequest {
                room_id,
                text: Text::new("x").expect("text"),
            }));
            assert_eq!(g.status(), Status::ErrNotFound, "CHAT_SEND {room_id}");
            let g = a.call(&Request::LeaveRoom(LeaveRoomRequest { room_id }));
            assert_eq!(g.status(), Status::ErrNotFound, "LEAVE_ROOM {room_id}");
        }
        // The first room a client creates is room 1, and LIST_ROOMS shows it from the start,
        // one at a time.
        assert_eq!(join(&mut a, "lobby"), 1);
        assert_eq!(join(&mut a, "pit"), 2);
        for (after_id, want) in [(0, Some(1)), (1, Some(2)), (2, None)] {
            let g = a.call(&Request::ListRooms(PageRequest { after_id, limit: 1 }));
            match g.reply() {
                Reply::Ok(Response::ListRooms(l)) => assert_eq!(
                    l.rooms.items().first().map(|r| r.room_id),
                    want,
                    "LIST_ROOMS after {after_id} limit 1"
                ),
                other => panic!("{other:?}"),
            }
        }
    }
}

#[test]
fn the_flood_limit_answers_with_a_status() {
    for backend in BACKENDS {
        let server = Server::start(
            "flood",
            &[
                "-w",
                "1",
                "--io",
                backend,
                "--flood-burst",
                "3",
                "--flood-per-sec",
                "2",
            ],
        );
        let mut c = server.client();
        c.join_as("chatty");
        let room = join(&mut c, "r");
        for _ in 0..3 {
            send(&mut c, room, "x").expect("within the burst");
        }
        assert_eq!(send(&mut c, room, "x"), Err(Status::ErrRateLimited));
        std::thread::sleep(Duration::from_millis(600));
        send(&mut c, room, "x").expect("refilled");
    }
}
