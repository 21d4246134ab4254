//! `bench-client chat`: a line-oriented client for people. Commands are read from standard
//! input; responses and pushes (room messages, direct messages, notices) are printed as they
//! arrive, from a reader thread. The threads share the one stream (plaintext or TLS) behind a
//! lock; the reader holds it for at most a short read timeout at a time.

use std::collections::HashMap;
use std::io::{BufRead, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::body::*;
use proto::codec::{List, Name};
use proto::{write_request, FrameDecoder, Opcode, Push, Reply, Request, Response, BODY_LEN_LIMIT};

use crate::client::{Client, ClientError};

const HELP: &str =
    "commands: /join ROOM  /leave ROOM  /say ROOM TEXT (or just TEXT to the last room)  \
/dm USER TEXT  /users  /rooms  /history ROOM [N]  /deposit N  /withdraw N  /transfer USER N  \
/balance  /txns  /quit";

/// Rooms joined, by name and id, shared with the reader thread (it names rooms in pushes).
type Rooms = Arc<Mutex<HashMap<u32, String>>>;

/// Logs in (registering first if asked) and runs the prompt until /quit or end of input.
pub fn run(
    addr: SocketAddr,
    tls: Option<&crate::ClientTls>,
    user: &str,
    password: &str,
    register: bool,
) -> anyhow::Result<()> {
    let mut c = Client::connect_with(addr, Duration::from_secs(10), tls)?;
    let hello = c.hello("bench-client chat")?;
    if register {
        match c.register(user, password) {
            Ok(id) => println!("registered {user} (id {id})"),
            Err(ClientError::Refused(proto::Status::ErrAlreadyExists, _)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let id = c.login(user, password)?;
    println!(
        "logged in as {user} (id {id}) on worker {}; {HELP}",
        hello.worker_id
    );
    // Go on counting above the user's high-water mark (PROTOCOL.md 8.4): a second session of
    // the same user must not reuse the first one's req_ids.
    let req_id = Arc::new(AtomicU64::new(c.last_req_id()));
    // One stream (a TLS connection cannot be split into a read and a write half) shared by
    // the reader, the heartbeat and the prompt; the reader takes it for at most READ_SLICE.
    let stream = c.into_stream();
    stream.tcp().set_read_timeout(Some(READ_SLICE))?;
    let shared = Shared(Arc::new(Mutex::new(stream)));
    let rooms: Rooms = Arc::new(Mutex::new(HashMap::new()));
    let reader_rooms = Arc::clone(&rooms);
    let heartbeat_ms = u64::from(hello.heartbeat_interval_ms.max(1000));
    let mut view = View {
        rooms: reader_rooms,
        names: HashMap::from([(id, user.to_string())]),
        me: id,
        unnamed: Vec::new(),
        out: shared.clone(),
        req_id: Arc::clone(&req_id),
    };
    let reader = shared.clone();
    std::thread::spawn(move || read_loop(reader, &mut view));
    let mut writer = shared.clone();
    // Keep the session alive while the person is quiet.
    let mut hb = shared;
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(heartbeat_ms));
        let mut out = Vec::new();
        let req = Request::Heartbeat(HeartbeatRequest { client_time_ms: 0 });
        if write_request(&mut out, 0, &req, BODY_LEN_LIMIT).is_err() || hb.write_all(&out).is_err()
        {
            return;
        }
    });
    let mut last_room: Option<String> = None;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line == "/quit" {
            break;
        }
        let req = match parse(line, &rooms, &mut last_room) {
            Ok(r) => r,
            Err(msg) => {
                println!("! {msg}");
                continue;
            }
        };
        let id = req_id.fetch_add(1, Ordering::Relaxed) + 1;
        let mut out = Vec::new();
        match req.encode(id, &mut out) {
            Ok(()) => writer.write_all(&out)?,
            Err(msg) => println!("! {msg}"),
        }
    }
    let mut out = Vec::new();
    let _ = write_request(
        &mut out,
        req_id.fetch_add(1, Ordering::Relaxed) + 1,
        &Request::Logout(Empty {}),
        BODY_LEN_LIMIT,
    );
    let _ = writer.write_all(&out);
    Ok(())
}

/// A parsed command, owning its strings until it is encoded.
enum Cmd {
    Join(String),
    Leave(u32),
    Say(u32, String),
    Dm(String, String),
    Users,
    Rooms,
    History(u32, u16),
    Deposit(u64),
    Withdraw(u64),
    Transfer(String, u64),
    Balance,
    Txns,
}

impl Cmd {
    fn encode(&self, req_id: u64, out: &mut Vec<u8>) -> Result<(), String> {
        fn name(s: &str) -> Result<Name<'_>, String> {
            Name::new(s).map_err(|e| format!("{s:?}: {e}"))
        }
        fn text(s: &str) -> Result<Text<'_>, String> {
            Text::new(s).map_err(|e| format!("message: {e}"))
        }
        let req = match self {
            Cmd::Join(r) => Request::JoinRoom(JoinRoomRequest { room: name(r)? }),
            Cmd::Leave(id) => Request::LeaveRoom(LeaveRoomRequest { room_id: *id }),
            Cmd::Say(id, t) => Request::ChatSend(ChatSendRequest {
                room_id: *id,
                text: text(t)?,
            }),
            Cmd::Dm(u, t) => Request::DirectSend(DirectSendRequest {
                to: name(u)?,
                text: text(t)?,
            }),
            Cmd::Users => Request::ListUsers(PageRequest {
                after_id: 0,
                limit: 100,
            }),
            Cmd::Rooms => Request::ListRooms(PageRequest {
                after_id: 0,
                limit: 100,
            }),
            Cmd::History(id, n) => Request::RoomHistory(RoomHistoryRequest {
                room_id: *id,
                after_seq: 0,
                limit: *n,
            }),
            Cmd::Deposit(a) => Request::Deposit(AmountRequest { amount: *a }),
            Cmd::Withdraw(a) => Request::Withdraw(AmountRequest { amount: *a }),
            Cmd::Transfer(u, a) => Request::Transfer(TransferRequest {
                to: Target::Name(name(u)?),
                amount: *a,
            }),
            Cmd::Balance => Request::Balance(Empty {}),
            Cmd::Txns => Request::TxnHistory(TxnHistoryRequest {
                before_txn_id: 0,
                limit: 10,
            }),
        };
        write_request(out, req_id, &req, BODY_LEN_LIMIT).map_err(|e| e.to_string())
    }
}

fn room_id(rooms: &Rooms, name: &str) -> Result<u32, String> {
    let map = rooms.lock().map_err(|_| "internal error".to_string())?;
    map.iter()
        .find(|(_, n)| n.as_str() == name)
        .map(|(id, _)| *id)
        .ok_or_else(|| format!("not in room {name}: /join {name} first"))
}

fn amount(s: Option<&str>) -> Result<u64, String> {
    s.and_then(|v| v.parse().ok())
        .ok_or_else(|| "amount: a whole number of minor units (cents)".to_string())
}

fn parse(line: &str, rooms: &Rooms, last_room: &mut Option<String>) -> Result<Cmd, String> {
    if !line.starts_with('/') {
        let name = last_room
            .as_deref()
            .ok_or("join a room first (/join lobby)")?;
        return Ok(Cmd::Say(room_id(rooms, name)?, line.to_string()));
    }
    let mut words = line.splitn(3, ' ');
    let cmd = words.next().unwrap_or("");
    let a = words.next();
    let b = words.next();
    match cmd {
        "/join" => {
            let r = a.ok_or("/join ROOM")?.to_string();
            // The room's id arrives in the response; the reader records it.
            pending_join(rooms, &r);
            *last_room = Some(r.clone());
            Ok(Cmd::Join(r))
        }
        "/leave" => Ok(Cmd::Leave(room_id(rooms, a.ok_or("/leave ROOM")?)?)),
        "/say" => {
            let room = a.ok_or("/say ROOM TEXT")?;
            let id = room_id(rooms, room)?;
            *last_room = Some(room.to_string());
            Ok(Cmd::Say(id, b.ok_or("/say ROOM TEXT")?.to_string()))
        }
        "/dm" => Ok(Cmd::Dm(
            a.ok_or("/dm USER TEXT")?.to_string(),
            b.ok_or("/dm USER TEXT")?.to_string(),
        )),
        "/users" => Ok(Cmd::Users),
        "/rooms" => Ok(Cmd::Rooms),
        "/history" => Ok(Cmd::History(
            room_id(rooms, a.ok_or("/history ROOM [N]")?)?,
            b.and_then(|n| n.parse().ok()).unwrap_or(20),
        )),
        "/deposit" => Ok(Cmd::Deposit(amount(a)?)),
        "/withdraw" => Ok(Cmd::Withdraw(amount(a)?)),
        "/transfer" => Ok(Cmd::Transfer(
            a.ok_or("/transfer USER N")?.to_string(),
            amount(b)?,
        )),
        "/balance" => Ok(Cmd::Balance),
        "/txns" => Ok(Cmd::Txns),
        "/help" => Err(HELP.to_string()),
        other => Err(format!("unknown command {other}; {HELP}")),
    }
}

/// The last /join's room name, until its response names the id (id 0 is never a room).
fn pending_join(rooms: &Rooms, name: &str) {
    if let Ok(mut m) = rooms.lock() {
        m.insert(0, name.to_string());
    }
}

/// The longest the reader holds the stream while nothing arrives.
const READ_SLICE: Duration = Duration::from_millis(50);

/// The stream, shared by the threads.
#[derive(Clone)]
struct Shared(Arc<Mutex<crate::Stream>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut s = self
            .0
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?;
        s.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        let mut s = self
            .0
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?;
        s.flush()
    }
}

/// What the reader thread knows to show frames with names: the rooms joined, every user name
/// a frame has told it, and a history waiting for the names of its counterparties.
struct View {
    rooms: Rooms,
    names: HashMap<u32, String>,
    me: u32,
    /// A TXN_HISTORY page held back until USER_NAMES answers for the ids it names.
    unnamed: Vec<TxnEntry>,
    /// For the USER_NAMES request the reader sends itself.
    out: Shared,
    req_id: Arc<AtomicU64>,
}

impl View {
    fn name(&self, id: u32) -> String {
        self.names
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("#{id}"))
    }

    fn learn(&mut self, id: u32, name: &str) {
        self.names.insert(id, name.to_string());
    }

    /// Shows a history page, or asks the server for the names it lacks first.
    fn txns(&mut self, o: &mut impl Write, txns: &[TxnEntry]) {
        let mut missing: Vec<u32> = txns
            .iter()
            .flat_map(|t| [t.from_id, t.to_id])
            .filter(|&id| id != 0 && !self.names.contains_key(&id))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        missing.truncate(USER_NAMES_MAX);
        if !missing.is_empty() {
            let id = self.req_id.fetch_add(1, Ordering::Relaxed) + 1;
            let mut out = Vec::new();
            let sent = List::new(missing)
                .map_err(|e| e.to_string())
                .and_then(|ids| {
                    let req = Request::UserNames(UserNamesRequest { ids });
                    write_request(&mut out, id, &req, BODY_LEN_LIMIT).map_err(|e| e.to_string())
                })
                .and_then(|()| self.out.write_all(&out).map_err(|e| e.to_string()));
            if sent.is_ok() {
                self.unnamed = txns.to_vec();
                return;
            }
        }
        self.show_txns(o, txns);
    }

    fn show_txns(&self, o: &mut impl Write, txns: &[TxnEntry]) {
        if txns.is_empty() {
            let _ = writeln!(o, "* no transactions");
        }
        for t in txns {
            let what = match t.kind {
                TxnKind::Deposit => format!("deposit {}", t.amount),
                TxnKind::Withdraw => format!("withdraw {}", t.amount),
                TxnKind::Transfer if t.from_id == self.me => {
                    format!("sent {} to {}", t.amount, self.name(t.to_id))
                }
                TxnKind::Transfer => format!("received {} from {}", t.amount, self.name(t.from_id)),
            };
            let _ = writeln!(
                o,
                "  txn {} {what} -> balance {}",
                t.txn_id, t.balance_after
            );
        }
    }
}

fn read_loop(s: Shared, view: &mut View) {
    let mut dec = FrameDecoder::new(BODY_LEN_LIMIT);
    let mut buf = [0u8; 16384];
    let out = std::io::stdout();
    loop {
        let got = match s.0.lock() {
            Ok(mut stream) => stream.read(&mut buf),
            Err(_) => return,
        };
        let n = match got {
            Ok(0) => {
                println!("* connection closed");
                std::process::exit(0);
            }
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                // Let a writer in between slices.
                std::thread::yield_now();
                continue;
            }
            Err(e) => {
                println!("* connection closed: {e}");
                std::process::exit(0);
            }
        };
        let mut input = &buf[..n];
        while !input.is_empty() {
            let (used, res) = dec.decode(input);
            input = &input[used..];
            let Ok(Some(f)) = res else { continue };
            let mut o = out.lock();
            if f.header.flags.is_response() {
                if f.header.opcode == Opcode::Heartbeat {
                    continue;
                }
                match f.reply() {
                    Ok(Reply::Ok(r)) => show_response(&mut o, &r, view),
                    Ok(Reply::Err(st, e)) => {
                        let _ = writeln!(o, "! {}: {}", st.name(), e.message.as_str());
                        if f.header.opcode == Opcode::UserNames {
                            // No names came: the held history goes out with ids.
                            let txns = std::mem::take(&mut view.unnamed);
                            view.show_txns(&mut o, &txns);
                        }
                    }
                    Err(e) => {
                        let _ = writeln!(o, "! bad response: {e}");
                    }
                }
            } else if let Ok(p) = f.push() {
                show_push(&mut o, &p, view);
            }
        }
    }
}

fn room_name(rooms: &Rooms, id: u32) -> String {
    rooms
        .lock()
        .ok()
        .and_then(|m| m.get(&id).cloned())
        .unwrap_or_else(|| format!("#{id}"))
}

fn show_response(o: &mut impl Write, r: &Response<'_>, view: &mut View) {
    let rooms = &view.rooms;
    let _ = match r {
        Response::JoinRoom(j) => {
            if let Ok(mut m) = rooms.lock() {
                if let Some(name) = m.remove(&0) {
                    m.insert(j.room_id, name);
                }
            }
            writeln!(
                o,
                "* joined {} ({} members, last message #{})",
                room_name(rooms, j.room_id),
                j.members,
                j.last_seq
            )
        }
        Response::LeaveRoom(_) => writeln!(o, "* left"),
        Response::ChatSend(_) | Response::DirectSend(_) => Ok(()),
        Response::ListUsers(l) => {
            let names: Vec<&str> = l.users.items().iter().map(|u| u.name.as_str()).collect();
            let line = writeln!(o, "* online: {}", names.join(", "));
            for u in l.users.items() {
                view.learn(u.user_id, u.name.as_str());
            }
            line
        }
        Response::UserNames(l) => {
            for u in l.users.items() {
                view.learn(u.user_id, u.name.as_str());
            }
            let txns = std::mem::take(&mut view.unnamed);
            view.show_txns(o, &txns);
            Ok(())
        }
        Response::ListRooms(l) => {
            for r in l.rooms.items() {
                let _ = writeln!(
                    o,
                    "* {} ({} members, {} messages)",
                    r.name, r.members, r.last_seq
                );
            }
            Ok(())
        }
        Response::RoomHistory(h) => {
            if h.missed > 0 {
                let _ = writeln!(o, "* ({} older messages are gone)", h.missed);
            }
            for m in h.messages.items() {
                let _ = writeln!(o, "  #{} {}: {}", m.seq, m.sender, m.text);
            }
            Ok(())
        }
        Response::Deposit(x) | Response::Withdraw(x) | Response::Transfer(x) => {
            writeln!(o, "* done (txn {}); balance {}", x.txn_id, x.balance)
        }
        Response::Balance(b) => writeln!(o, "* balance {}", b.balance),
        Response::TxnHistory(h) => {
            view.txns(o, h.txns.items());
            Ok(())
        }
        other => writeln!(o, "* {other:?}"),
    };
}

fn show_push(o: &mut impl Write, p: &Push<'_>, view: &mut View) {
    let rooms = &view.rooms;
    let _ = match p {
        Push::ChatBroadcast(b) => {
            let line = writeln!(
                o,
                "[{}] {}: {}",
                room_name(rooms, b.room_id),
                b.message.sender,
                b.message.text
            );
            view.learn(b.message.sender_id, b.message.sender.as_str());
            line
        }
        Push::DirectMessage(d) => {
            view.learn(d.from_id, d.from.as_str());
            writeln!(o, "[dm] {}: {}", d.from, d.text)
        }
        Push::MoneyReceived(m) => {
            view.learn(m.from_id, m.from.as_str());
            writeln!(o, "$ {} sent you {} (txn {})", m.from, m.amount, m.txn_id)
        }
        Push::Notice(n) => writeln!(o, "* notice: {}", n.text),
        Push::ChatGap(g) => writeln!(
            o,
            "* {} messages missed in {}",
            g.missed,
            room_name(rooms, g.room_id)
        ),
    };
}
