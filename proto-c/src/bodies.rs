#![allow(missing_debug_implementations)] // The C unions: which member is live depends on the opcode.

//! Every request, response and push body as a C struct, and the functions that encode them into
//! whole frames and decode them from frames.
//!
//! Requests decode without allocating (their strings point into the frame). Responses and
//! pushes decode into an object the library allocates (it owns a copy of the body and the
//! arrays of list entries), freed with `ns_response_free` / `ns_push_free`.

use proto::body::*;
use proto::codec::{Bytes, List, Name, Str};
use proto::{Field, Opcode, Push, Request, Response, Status};

use crate::{guard, slice, NS_ERR_BAD_BODY, NS_ERR_BUFFER_TOO_SMALL, NS_ERR_INVALID};
use crate::{NS_ERR_NULL, NS_ERR_UNKNOWN_OPCODE, NS_OK};

/// Bytes and their length. Strings are UTF-8 and never NUL-terminated.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ns_bytes {
    /// The first byte (may be null when `len` is 0).
    pub ptr: *const u8,
    /// How many.
    pub len: usize,
}

impl ns_bytes {
    fn of(b: &[u8]) -> ns_bytes {
        ns_bytes {
            ptr: b.as_ptr(),
            len: b.len(),
        }
    }

    fn empty() -> ns_bytes {
        ns_bytes {
            ptr: std::ptr::null(),
            len: 0,
        }
    }

    /// # Safety
    /// `ptr` must point to `len` readable bytes for `'a`.
    unsafe fn get<'a>(&self) -> Result<&'a [u8], i32> {
        // SAFETY: per the contract.
        unsafe { slice(self.ptr, self.len) }.ok_or(NS_ERR_NULL)
    }

    /// # Safety
    /// As [`ns_bytes::get`].
    unsafe fn str<'a>(&self) -> Result<&'a str, i32> {
        // SAFETY: per the contract.
        std::str::from_utf8(unsafe { self.get() }?).map_err(|_| NS_ERR_INVALID)
    }
}

fn field<T, E>(r: Result<T, E>) -> Result<T, i32> {
    r.map_err(|_| NS_ERR_INVALID)
}

/// A 32-byte SCRAM key, proof or signature.
pub type ns_key = [u8; 32];

/// HELLO.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ns_hello_req {
    /// Client software, 0..=64 bytes.
    pub client: ns_bytes,
}
/// LOGIN.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ns_login_req {
    /// 1..=32 bytes.
    pub username: ns_bytes,
    /// 16..=64 random bytes.
    pub client_nonce: ns_bytes,
}
/// HEARTBEAT.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ns_heartbeat_req {
    /// The client's clock, echoed.
    pub client_time_ms: u64,
}
/// LOGIN_PROOF.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ns_login_proof_req {
    /// ClientProof.
    pub client_proof: ns_key,
}
/// REGISTER.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ns_register_req {
    /// 1..=32 bytes.
    pub username: ns_bytes,
    /// 16..=64 bytes.
    pub salt: ns_bytes,
    /// PBKDF2 iterations.
    pub iterations: u32,
    /// SHA-256(ClientKey).
    pub stored_key: ns_key,
    /// HMAC(SaltedPassword, "Server Key").
    pub server_key: ns_key,
}
/// JOIN_ROOM.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ns_join_room_req {
    /// Room name, 1..=32 bytes.
    pub room: ns_bytes,
}
/// LEAVE_ROOM.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ns_leave_room_req {
    /// Room id.
    pub room_id: u32,
}
/// CHAT_SEND.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ns_chat_send_req {
    /// Room id.
    pub room_id: u32,
    /// 1..=4000 bytes.
    pub text: ns_bytes,
}
/// DIRECT_SEND.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ns_direct_send_req {
    /// Recipient's name.
    pub to: ns_bytes,
    /// 1..=4000 bytes.
    pub text: ns_bytes,
}
/// LIST_USERS and LIST_ROOMS.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ns_page_req {
    /// Start after this id.
    pub after_id: u32,
    /// Most entries.
    pub limit: u16,
}
/// ROOM_HISTORY.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ns_room_history_req {
    /// Room id.
    pub room_id: u32,
    /// Messages after this seq.
    pub after_seq: u64,
    /// Most messages.
    pub limit: u16,
}
/// DEPOSIT and WITHDRAW.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ns_amount_req {
    /// Minor units, > 0.
    pub amount: u64,
}
/// TRANSFER: to a user by name when `to_name.len` > 0, else by `to_id`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ns_transfer_req {
    /// Recipient id (when no name is given).
    pub to_id: u32,
    /// Recipient name.
    pub to_name: ns_bytes,
    /// Minor units, > 0.
    pub amount: u64,
}
/// TXN_HISTORY.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ns_txn_history_req {
    /// Transactions below this id (0: the newest).
    pub before_txn_id: u64,
    /// Most entries.
    pub limit: u16,
}

/// USER_NAMES: up to 100 user ids. Encode only: `ns_decode_request` refuses this opcode
/// (`NS_ERR_UNKNOWN_OPCODE`), as a server written in C has no users table to answer from.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ns_user_names_req {
    /// The ids.
    pub ids: *const u32,
    /// How many.
    pub len: usize,
}

/// A request body; `opcode` says which member is used (LOGOUT and BALANCE use none).
#[repr(C)]
#[derive(Clone, Copy)]
pub union ns_request_body {
    /// HELLO.
    pub hello: ns_hello_req,
    /// LOGIN.
    pub login: ns_login_req,
    /// HEARTBEAT.
    pub heartbeat: ns_heartbeat_req,
    /// LOGIN_PROOF.
    pub login_proof: ns_login_proof_req,
    /// REGISTER.
    pub register_: ns_register_req,
    /// JOIN_ROOM.
    pub join_room: ns_join_room_req,
    /// LEAVE_ROOM.
    pub leave_room: ns_leave_room_req,
    /// CHAT_SEND.
    pub chat_send: ns_chat_send_req,
    /// DIRECT_SEND.
    pub direct_send: ns_direct_send_req,
    /// LIST_USERS, LIST_ROOMS.
    pub page: ns_page_req,
    /// ROOM_HISTORY.
    pub room_history: ns_room_history_req,
    /// DEPOSIT, WITHDRAW.
    pub amount: ns_amount_req,
    /// TRANSFER.
    pub transfer: ns_transfer_req,
    /// TXN_HISTORY.
    pub txn_history: ns_txn_history_req,
    /// USER_NAMES.
    pub user_names: ns_user_names_req,
}

/// A request: its opcode (`NS_OP_*`) and body.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ns_request {
    /// Which request.
    pub opcode: u16,
    /// Its body.
    pub body: ns_request_body,
}

impl std::fmt::Debug for ns_request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ns_request")
            .field("opcode", &self.opcode)
            .finish_non_exhaustive()
    }
}

/// The opcode of HELLO.
pub const NS_OP_HELLO: u16 = 0x0001;
/// The opcode of LOGIN.
pub const NS_OP_LOGIN: u16 = 0x0002;
/// The opcode of LOGOUT.
pub const NS_OP_LOGOUT: u16 = 0x0003;
/// The opcode of HEARTBEAT.
pub const NS_OP_HEARTBEAT: u16 = 0x0004;
/// The opcode of LOGIN_PROOF.
pub const NS_OP_LOGIN_PROOF: u16 = 0x0005;
/// The opcode of REGISTER.
pub const NS_OP_REGISTER: u16 = 0x0006;
/// The opcode of NOTICE.
pub const NS_OP_NOTICE: u16 = 0x0007;
/// The opcode of JOIN_ROOM.
pub const NS_OP_JOIN_ROOM: u16 = 0x0101;
/// The opcode of LEAVE_ROOM.
pub const NS_OP_LEAVE_ROOM: u16 = 0x0102;
/// The opcode of CHAT_SEND.
pub const NS_OP_CHAT_SEND: u16 = 0x0103;
/// The opcode of CHAT_BROADCAST.
pub const NS_OP_CHAT_BROADCAST: u16 = 0x0104;
/// The opcode of DIRECT_SEND.
pub const NS_OP_DIRECT_SEND: u16 = 0x0105;
/// The opcode of DIRECT_MESSAGE.
pub const NS_OP_DIRECT_MESSAGE: u16 = 0x0106;
/// The opcode of LIST_USERS.
pub const NS_OP_LIST_USERS: u16 = 0x0107;
/// The opcode of LIST_ROOMS.
pub const NS_OP_LIST_ROOMS: u16 = 0x0108;
/// The opcode of ROOM_HISTORY.
pub const NS_OP_ROOM_HISTORY: u16 = 0x0109;
/// The opcode of CHAT_GAP.
pub const NS_OP_CHAT_GAP: u16 = 0x010A;
/// The opcode of DEPOSIT.
pub const NS_OP_DEPOSIT: u16 = 0x0201;
/// The opcode of WITHDRAW.
pub const NS_OP_WITHDRAW: u16 = 0x0202;
/// The opcode of TRANSFER.
pub const NS_OP_TRANSFER: u16 = 0x0203;
/// The opcode of BALANCE.
pub const NS_OP_BALANCE: u16 = 0x0204;
/// The opcode of TXN_HISTORY.
pub const NS_OP_TXN_HISTORY: u16 = 0x0205;
/// USER_NAMES.
pub const NS_OP_USER_NAMES: u16 = 0x010B;
/// MONEY_RECEIVED (push).
pub const NS_OP_MONEY_RECEIVED: u16 = 0x0206;

// Literals, so that cbindgen can write them into the header; checked against the protocol.
const _: () = {
    assert!(NS_OP_HELLO == Opcode::Hello.as_u16());
    assert!(NS_OP_LOGIN == Opcode::Login.as_u16());
    assert!(NS_OP_LOGOUT == Opcode::Logout.as_u16());
    assert!(NS_OP_HEARTBEAT == Opcode::Heartbeat.as_u16());
    assert!(NS_OP_LOGIN_PROOF == Opcode::LoginProof.as_u16());
    assert!(NS_OP_REGISTER == Opcode::Register.as_u16());
    assert!(NS_OP_NOTICE == Opcode::Notice.as_u16());
    assert!(NS_OP_JOIN_ROOM == Opcode::JoinRoom.as_u16());
    assert!(NS_OP_LEAVE_ROOM == Opcode::LeaveRoom.as_u16());
    assert!(NS_OP_CHAT_SEND == Opcode::ChatSend.as_u16());
    assert!(NS_OP_CHAT_BROADCAST == Opcode::ChatBroadcast.as_u16());
    assert!(NS_OP_DIRECT_SEND == Opcode::DirectSend.as_u16());
    assert!(NS_OP_DIRECT_MESSAGE == Opcode::DirectMessage.as_u16());
    assert!(NS_OP_LIST_USERS == Opcode::ListUsers.as_u16());
    assert!(NS_OP_LIST_ROOMS == Opcode::ListRooms.as_u16());
    assert!(NS_OP_ROOM_HISTORY == Opcode::RoomHistory.as_u16());
    assert!(NS_OP_CHAT_GAP == Opcode::ChatGap.as_u16());
    assert!(NS_OP_DEPOSIT == Opcode::Deposit.as_u16());
    assert!(NS_OP_WITHDRAW == Opcode::Withdraw.as_u16());
    assert!(NS_OP_TRANSFER == Opcode::Transfer.as_u16());
    assert!(NS_OP_BALANCE == Opcode::Balance.as_u16());
    assert!(NS_OP_TXN_HISTORY == Opcode::TxnHistory.as_u16());
    assert!(NS_OP_USER_NAMES == Opcode::UserNames.as_u16());
    assert!(NS_OP_MONEY_RECEIVED == Opcode::MoneyReceived.as_u16());
};

/// The request `r` describes, borrowing its bytes.
///
/// # Safety
/// Every `ns_bytes` of the member `r.opcode` selects must be valid.
pub(crate) unsafe fn to_request<'a>(r: &ns_request) -> Result<Request<'a>, i32> {
    let op = Opcode::from_u16(r.opcode).ok_or(NS_ERR_UNKNOWN_OPCODE)?;
    let b = &r.body;
    // SAFETY: the caller set the member `opcode` names (contract), whose bytes are valid.
    unsafe {
        Ok(match op {
            Opcode::Hello => Request::Hello(HelloRequest {
                client: field(Str::new(b.hello.client.str()?))?,
            }),
            Opcode::Login => Request::Login(LoginRequest {
                username: field(Name::new(b.login.username.str()?))?,
                client_nonce: field(Bytes::new(b.login.client_nonce.get()?))?,
            }),
            Opcode::Logout => Request::Logout(Empty {}),
            Opcode::Heartbeat => Request::Heartbeat(HeartbeatRequest {
                client_time_ms: b.heartbeat.client_time_ms,
            }),
            Opcode::LoginProof => Request::LoginProof(LoginProofRequest {
                client_proof: b.login_proof.client_proof,
            }),
            Opcode::Register => Request::Register(RegisterRequest {
                username: field(Name::new(b.register_.username.str()?))?,
                salt: field(Bytes::new(b.register_.salt.get()?))?,
                iterations: b.register_.iterations,
                stored_key: b.register_.stored_key,
                server_key: b.register_.server_key,
            }),
            Opcode::JoinRoom => Request::JoinRoom(JoinRoomRequest {
                room: field(Name::new(b.join_room.room.str()?))?,
            }),
            Opcode::LeaveRoom => Request::LeaveRoom(LeaveRoomRequest {
                room_id: b.leave_room.room_id,
            }),
            Opcode::ChatSend => Request::ChatSend(ChatSendRequest {
                room_id: b.chat_send.room_id,
                text: field(Str::new(b.chat_send.text.str()?))?,
            }),
            Opcode::DirectSend => Request::DirectSend(DirectSendRequest {
                to: field(Name::new(b.direct_send.to.str()?))?,
                text: field(Str::new(b.direct_send.text.str()?))?,
            }),
            Opcode::ListUsers => Request::ListUsers(page(b.page)),
            Opcode::ListRooms => Request::ListRooms(page(b.page)),
            Opcode::RoomHistory => Request::RoomHistory(RoomHistoryRequest {
                room_id: b.room_history.room_id,
                after_seq: b.room_history.after_seq,
                limit: b.room_history.limit,
            }),
            Opcode::Deposit => Request::Deposit(AmountRequest {
                amount: b.amount.amount,
            }),
            Opcode::Withdraw => Request::Withdraw(AmountRequest {
                amount: b.amount.amount,
            }),
            Opcode::Transfer => Request::Transfer(TransferRequest {
                to: if b.transfer.to_name.len > 0 {
                    Target::Name(field(Name::new(b.transfer.to_name.str()?))?)
                } else {
                    Target::Id(b.transfer.to_id)
                },
                amount: b.transfer.amount,
            }),
            Opcode::Balance => Request::Balance(Empty {}),
            Opcode::TxnHistory => Request::TxnHistory(TxnHistoryRequest {
                before_txn_id: b.txn_history.before_txn_id,
                limit: b.txn_history.limit,
            }),
            Opcode::UserNames => {
                let ids = slice(b.user_names.ids, b.user_names.len).ok_or(NS_ERR_NULL)?;
                Request::UserNames(UserNamesRequest {
                    ids: field(List::new(ids.to_vec()))?,
                })
            }
            _ => return Err(NS_ERR_UNKNOWN_OPCODE),
        })
    }
}

fn page(p: ns_page_req) -> PageRequest {
    PageRequest {
        after_id: p.after_id,
        limit: p.limit,
    }
}

fn from_request(r: &Request<'_>) -> ns_request {
    // Starts as zeros; the arm below sets the member the opcode names.
    let mut body: ns_request_body = ns_request_body {
        txn_history: ns_txn_history_req {
            before_txn_id: 0,
            limit: 0,
        },
    };
    match r {
        Request::Hello(h) => {
            body.hello = ns_hello_req {
                client: ns_bytes::of(h.client.as_str().as_bytes()),
            }
        }
        Request::Login(l) => {
            body.login = ns_login_req {
                username: ns_bytes::of(l.username.as_str().as_bytes()),
                client_nonce: ns_bytes::of(l.client_nonce.as_bytes()),
            }
        }
        // USER_NAMES is refused by the one caller before it gets here.
        Request::Logout(_) | Request::Balance(_) | Request::UserNames(_) => {}
        Request::Heartbeat(h) => {
            body.heartbeat = ns_heartbeat_req {
                client_time_ms: h.client_time_ms,
            }
        }
        Request::LoginProof(p) => {
            body.login_proof = ns_login_proof_req {
                client_proof: p.client_proof,
            }
        }
        Request::Register(x) => {
            body.register_ = ns_register_req {
                username: ns_bytes::of(x.username.as_str().as_bytes()),
                salt: ns_bytes::of(x.salt.as_bytes()),
                iterations: x.iterations,
                stored_key: x.stored_key,
                server_key: x.server_key,
            }
        }
        Request::JoinRoom(j) => {
            body.join_room = ns_join_room_req {
                room: ns_bytes::of(j.room.as_str().as_bytes()),
            }
        }
        Request::LeaveRoom(l) => body.leave_room = ns_leave_room_req { room_id: l.room_id },
        Request::ChatSend(c) => {
            body.chat_send = ns_chat_send_req {
                room_id: c.room_id,
                text: ns_bytes::of(c.text.as_str().as_bytes()),
            }
        }
        Request::DirectSend(d) => {
            body.direct_send = ns_direct_send_req {
                to: ns_bytes::of(d.to.as_str().as_bytes()),
                text: ns_bytes::of(d.text.as_str().as_bytes()),
            }
        }
        Request::ListUsers(p) | Request::ListRooms(p) => {
            body.page = ns_page_req {
                after_id: p.after_id,
                limit: p.limit,
            }
        }
        Request::RoomHistory(h) => {
            body.room_history = ns_room_history_req {
                room_id: h.room_id,
                after_seq: h.after_seq,
                limit: h.limit,
            }
        }
        Request::Deposit(a) | Request::Withdraw(a) => {
            body.amount = ns_amount_req { amount: a.amount }
        }
        Request::Transfer(t) => {
            body.transfer = match &t.to {
                Target::Id(id) => ns_transfer_req {
                    to_id: *id,
                    to_name: ns_bytes::empty(),
                    amount: t.amount,
                },
                Target::Name(n) => ns_transfer_req {
                    to_id: 0,
                    to_name: ns_bytes::of(n.as_str().as_bytes()),
                    amount: t.amount,
                },
            }
        }
        Request::TxnHistory(h) => {
            body.txn_history = ns_txn_history_req {
                before_txn_id: h.before_txn_id,
                limit: h.limit,
            }
        }
    }
    ns_request {
        opcode: r.opcode().as_u16(),
        body,
    }
}

thread_local! {
    /// Each thread's encode buffer, reused: encoding allocates nothing once it has grown.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Encodes with `write` into the thread's scratch buffer, then copies the frame out.
///
/// # Safety
/// As [`emit`].
unsafe fn encode_with(
    write: impl FnOnce(&mut Vec<u8>) -> Result<(), i32>,
    out: *mut u8,
    cap: usize,
    written: *mut usize,
) -> i32 {
    SCRATCH.with(|cell| {
        let Ok(mut frame) = cell.try_borrow_mut() else {
            return crate::NS_ERR_PANIC;
        };
        frame.clear();
        if let Err(e) = write(&mut frame) {
            return e;
        }
        // SAFETY: per the contract.
        unsafe { emit(&frame, out, cap, written) }
    })
}

/// Copies `bytes` into `out` (capacity `cap`); `*written` gets the frame's length either way.
///
/// # Safety
/// `out` must point to `cap` writable bytes; `written` writable.
unsafe fn emit(bytes: &[u8], out: *mut u8, cap: usize, written: *mut usize) -> i32 {
    // SAFETY: per the contract.
    let Some(w) = (unsafe { written.as_mut() }) else {
        return NS_ERR_NULL;
    };
    *w = bytes.len();
    if bytes.len() > cap {
        return NS_ERR_BUFFER_TOO_SMALL;
    }
    if out.is_null() {
        return NS_ERR_NULL;
    }
    // SAFETY: `out` holds `cap` >= len writable bytes (contract) and does not overlap `bytes`,
    // which this library owns.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), out, bytes.len()) };
    NS_OK
}

/// Encodes request `*req` as a whole frame (header, checksum, body) with `req_id` into `out`
/// (`cap` bytes). `*written` gets the frame's length; `NS_ERR_BUFFER_TOO_SMALL` when it does not
/// fit (call again with a buffer that large). `NS_ERR_INVALID` for a field out of its bounds.
///
/// # Safety
/// `req` readable, with valid `ns_bytes` in the member its opcode selects; `out` `cap` writable
/// bytes; `written` writable.
#[no_mangle]
pub unsafe extern "C" fn ns_encode_request(
    req_id: u64,
    req: *const ns_request,
    out: *mut u8,
    cap: usize,
    written: *mut usize,
) -> i32 {
    guard(|| {
        // SAFETY: per the contract.
        let Some(r) = (unsafe { req.as_ref() }) else {
            return NS_ERR_NULL;
        };
        // SAFETY: per the contract.
        let request = match unsafe { to_request(r) } {
            Ok(x) => x,
            Err(e) => return e,
        };
        let write = |frame: &mut Vec<u8>| {
            proto::write_request(frame, req_id, &request, proto::BODY_LEN_LIMIT)
                .map_err(|_| NS_ERR_INVALID)
        };
        // SAFETY: per the contract.
        unsafe { encode_with(write, out, cap, written) }
    })
}

/// Decodes a request frame's body into `*out`, whose `ns_bytes` point into `frame->body`
/// (valid as long as it is). For servers written in C.
///
/// # Safety
/// `frame` readable with a valid body; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn ns_decode_request(
    frame: *const crate::ns_frame,
    out: *mut ns_request,
) -> i32 {
    guard(|| {
        // SAFETY: per the contract.
        let (Some(f), Some(out)) = (unsafe { frame.as_ref() }, unsafe { out.as_mut() }) else {
            return NS_ERR_NULL;
        };
        // SAFETY: per the contract.
        let Some((op, _, body)) = (unsafe { f.parts() }) else {
            return NS_ERR_NULL;
        };
        match Request::decode(op, body) {
            Ok(Request::UserNames(_)) => NS_ERR_UNKNOWN_OPCODE,
            Ok(r) => {
                *out = from_request(&r);
                NS_OK
            }
            Err(_) => NS_ERR_BAD_BODY,
        }
    })
}

// ---- Responses ----

/// HELLO's answer.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ns_hello_resp {
    /// Server software.
    pub server: ns_bytes,
    /// The worker serving this connection.
    pub worker_id: u16,
    /// Largest request body the server accepts.
    pub body_len_max: u32,
    /// Send a frame at least this often.
    pub heartbeat_interval_ms: u32,
    /// Idle connections close after this.
    pub idle_timeout_ms: u32,
    /// The server's clock.
    pub server_time_ms: u64,
}
/// LOGIN's answer.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ns_login_resp {
    /// The user's salt.
    pub salt: ns_bytes,
    /// PBKDF2 iterations.
    pub iterations: u32,
    /// The server's nonce part.
    pub server_nonce: ns_bytes,
}
/// HEARTBEAT's answer.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ns_heartbeat_resp {
    /// Echoed.
    pub client_time_ms: u64,
    /// The server's clock.
    pub server_time_ms: u64,
}
/// LOGIN_PROOF's answer.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ns_login_proof_resp {
    /// ServerSignature: check it (`ns_scram_client_verify`).
    pub server_signature: ns_key,
    /// The user's id.
    pub user_id: u32,
    /// Highest ledger req_id decided for the user (continue above it).
    pub req_id_hw: u64,
    /// Outcomes kept per user.
    pub req_id_window: u32,
}
/// REGISTER's answer.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ns_register_resp {
    /// The new user's id.
    pub user_id: u32,
}
/// JOIN_ROOM's answer.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ns_join_room_resp {
    /// Room id.
    pub room_id: u32,
    /// Its last message's seq.
    pub last_seq: u64,
    /// Members now.
    pub members: u32,
}
/// CHAT_SEND's answer.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ns_chat_send_resp {
    /// The message's seq in its room.
    pub seq: u64,
}
/// DIRECT_SEND's answer.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ns_direct_send_resp {
    /// Recipient's id.
    pub to_user_id: u32,
}
/// One user in LIST_USERS.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ns_user_entry {
    /// Id.
    pub user_id: u32,
    /// Name.
    pub name: ns_bytes,
}
/// LIST_USERS' answer.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ns_list_users_resp {
    /// Entries.
    pub items: *const ns_user_entry,
    /// How many.
    pub len: usize,
}
/// One room in LIST_ROOMS.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ns_room_entry {
    /// Id.
    pub room_id: u32,
    /// Members.
    pub members: u32,
    /// Last seq.
    pub last_seq: u64,
    /// Name.
    pub name: ns_bytes,
}
/// LIST_ROOMS' answer.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ns_list_rooms_resp {
    /// Entries.
    pub items: *const ns_room_entry,
    /// How many.
    pub len: usize,
}
/// A room message (history and CHAT_BROADCAST).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ns_room_message {
    /// Seq in its room.
    pub seq: u64,
    /// Sender's id.
    pub sender_id: u32,
    /// When sent.
    pub time_ms: u64,
    /// Sender's name.
    pub sender: ns_bytes,
    /// Text.
    pub text: ns_bytes,
}
/// ROOM_HISTORY's answer.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ns_room_history_resp {
    /// The room's last seq.
    pub last_seq: u64,
    /// Messages asked for that the ring no longer holds.
    pub missed: u64,
    /// Messages.
    pub items: *const ns_room_message,
    /// How many.
    pub len: usize,
}
/// DEPOSIT, WITHDRAW and TRANSFER's answer.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ns_ledger_resp {
    /// The caller's balance after it.
    pub balance: u64,
    /// Its transaction id.
    pub txn_id: u64,
}
/// BALANCE's answer.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ns_balance_resp {
    /// Balance.
    pub balance: u64,
}
/// One transaction in TXN_HISTORY.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ns_txn_entry {
    /// Id.
    pub txn_id: u64,
    /// 1 deposit, 2 withdraw, 3 transfer.
    pub kind: u8,
    /// Debited (0 for a deposit).
    pub from_id: u32,
    /// Credited (0 for a withdrawal).
    pub to_id: u32,
    /// Amount.
    pub amount: u64,
    /// The caller's balance after it.
    pub balance_after: u64,
    /// When.
    pub time_ms: u64,
}
/// TXN_HISTORY's answer.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ns_txn_history_resp {
    /// Entries, newest first.
    pub items: *const ns_txn_entry,
    /// How many.
    pub len: usize,
}

/// An OK response's body; `opcode` says which member (LOGOUT and LEAVE_ROOM use none).
#[repr(C)]
#[derive(Clone, Copy)]
pub union ns_response_body {
    /// HELLO.
    pub hello: ns_hello_resp,
    /// LOGIN.
    pub login: ns_login_resp,
    /// HEARTBEAT.
    pub heartbeat: ns_heartbeat_resp,
    /// LOGIN_PROOF.
    pub login_proof: ns_login_proof_resp,
    /// REGISTER.
    pub register_: ns_register_resp,
    /// JOIN_ROOM.
    pub join_room: ns_join_room_resp,
    /// CHAT_SEND.
    pub chat_send: ns_chat_send_resp,
    /// DIRECT_SEND.
    pub direct_send: ns_direct_send_resp,
    /// LIST_USERS.
    pub list_users: ns_list_users_resp,
    /// USER_NAMES (the same type as LIST_USERS, at the same place: either name reads it).
    pub user_names: ns_list_users_resp,
    /// LIST_ROOMS.
    pub list_rooms: ns_list_rooms_resp,
    /// ROOM_HISTORY.
    pub room_history: ns_room_history_resp,
    /// DEPOSIT, WITHDRAW, TRANSFER.
    pub ledger: ns_ledger_resp,
    /// BALANCE.
    pub balance: ns_balance_resp,
    /// TXN_HISTORY.
    pub txn_history: ns_txn_history_resp,
}

/// A response: opcode, req_id, status (`NS_STATUS_OK` or an error, whose text is
/// `error_message`), and the OK body.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ns_response {
    /// The request's opcode.
    pub opcode: u16,
    /// The protocol status (0: OK; `ns_status_name` names it).
    pub status: u16,
    /// The request's id.
    pub req_id: u64,
    /// The error's text when `status` is not OK.
    pub error_message: ns_bytes,
    /// The body when `status` is OK.
    pub body: ns_response_body,
}

impl std::fmt::Debug for ns_response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ns_response")
            .field("opcode", &self.opcode)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// The OK status.
pub const NS_STATUS_OK: u16 = 0;

/// A decoded response and everything its pointers point to. `resp` comes first: a pointer to
/// it is a pointer to the whole, which `ns_response_free` takes back.
#[repr(C)]
struct OwnedResponse {
    resp: ns_response,
    _body: Vec<u8>,
    _users: Vec<ns_user_entry>,
    _rooms: Vec<ns_room_entry>,
    _messages: Vec<ns_room_message>,
    _txns: Vec<ns_txn_entry>,
}

fn user_entries(users: &[UserEntry<'_>]) -> Vec<ns_user_entry> {
    users
        .iter()
        .map(|u| ns_user_entry {
            user_id: u.user_id,
            name: ns_bytes::of(u.name.as_str().as_bytes()),
        })
        .collect()
}

fn room_message(m: &RoomMessage<'_>) -> ns_room_message {
    ns_room_message {
        seq: m.seq,
        sender_id: m.sender_id,
        time_ms: m.time_ms,
        sender: ns_bytes::of(m.sender.as_str().as_bytes()),
        text: ns_bytes::of(m.text.as_str().as_bytes()),
    }
}

fn decode_response(
    op: Opcode,
    status: Status,
    req_id: u64,
    body: Vec<u8>,
) -> Result<Box<OwnedResponse>, i32> {
    let mut o = Box::new(OwnedResponse {
        resp: ns_response {
            opcode: op.as_u16(),
            status: status.as_u16(),
            req_id,
            error_message: ns_bytes::empty(),
            body: ns_response_body {
                balance: ns_balance_resp { balance: 0 },
            },
        },
        _body: body,
        _users: Vec::new(),
        _rooms: Vec::new(),
        _messages: Vec::new(),
        _txns: Vec::new(),
    });
    // The body's bytes live in the box (a Vec's heap buffer does not move with it).
    let bytes: &[u8] = &o._body;
    // SAFETY: (lifetime) the pointers made below point into `o._body` and the entry vectors,
    // which the box owns until `ns_response_free`.
    let bytes: &'static [u8] = unsafe { std::mem::transmute::<&[u8], &'static [u8]>(bytes) };
    if !status.is_ok() {
        let e = ErrorBody::decode(bytes).map_err(|_| NS_ERR_BAD_BODY)?;
        o.resp.error_message = ns_bytes::of(e.message.as_str().as_bytes());
        return Ok(o);
    }
    let r = Response::decode(op, bytes).map_err(|_| NS_ERR_BAD_BODY)?;
    let b = &mut o.resp.body;
    match r {
        Response::Hello(h) => {
            b.hello = ns_hello_resp {
                server: ns_bytes::of(h.server.as_str().as_bytes()),
                worker_id: h.worker_id,
                body_len_max: h.body_len_max,
                heartbeat_interval_ms: h.heartbeat_interval_ms,
                idle_timeout_ms: h.idle_timeout_ms,
                server_time_ms: h.server_time_ms,
            }
        }
        Response::Login(l) => {
            b.login = ns_login_resp {
                salt: ns_bytes::of(l.salt.as_bytes()),
                iterations: l.iterations,
                server_nonce: ns_bytes::of(l.server_nonce.as_bytes()),
            }
        }
        Response::Logout(_) | Response::LeaveRoom(_) => {}
        Response::Heartbeat(h) => {
            b.heartbeat = ns_heartbeat_resp {
                client_time_ms: h.client_time_ms,
                server_time_ms: h.server_time_ms,
            }
        }
        Response::LoginProof(p) => {
            b.login_proof = ns_login_proof_resp {
                server_signature: p.server_signature,
                user_id: p.user_id,
                req_id_hw: p.req_id_hw,
                req_id_window: p.req_id_window,
            }
        }
        Response::Register(r) => b.register_ = ns_register_resp { user_id: r.user_id },
        Response::JoinRoom(j) => {
            b.join_room = ns_join_room_resp {
                room_id: j.room_id,
                last_seq: j.last_seq,
                members: j.members,
            }
        }
        Response::ChatSend(c) => b.chat_send = ns_chat_send_resp { seq: c.seq },
        Response::DirectSend(d) => {
            b.direct_send = ns_direct_send_resp {
                to_user_id: d.to_user_id,
            }
        }
        Response::ListUsers(ListUsersResponse { users }) => {
            o._users = user_entries(users.items());
            o.resp.body.list_users = ns_list_users_resp {
                items: o._users.as_ptr(),
                len: o._users.len(),
            }
        }
        Response::UserNames(UserNamesResponse { users }) => {
            o._users = user_entries(users.items());
            o.resp.body.user_names = ns_list_users_resp {
                items: o._users.as_ptr(),
                len: o._users.len(),
            }
        }
        Response::ListRooms(l) => {
            o._rooms = l
                .rooms
                .items()
                .iter()
                .map(|r| ns_room_entry {
                    room_id: r.room_id,
                    members: r.members,
                    last_seq: r.last_seq,
                    name: ns_bytes::of(r.name.as_str().as_bytes()),
                })
                .collect();
            o.resp.body.list_rooms = ns_list_rooms_resp {
                items: o._rooms.as_ptr(),
                len: o._rooms.len(),
            }
        }
        Response::RoomHistory(h) => {
            o._messages = h.messages.items().iter().map(room_message).collect();
            o.resp.body.room_history = ns_room_history_resp {
                last_seq: h.last_seq,
                missed: h.missed,
                items: o._messages.as_ptr(),
                len: o._messages.len(),
            }
        }
        Response::Deposit(l) | Response::Withdraw(l) | Response::Transfer(l) => {
            b.ledger = ns_ledger_resp {
                balance: l.balance,
                txn_id: l.txn_id,
            }
        }
        Response::Balance(x) => b.balance = ns_balance_resp { balance: x.balance },
        Response::TxnHistory(h) => {
            o._txns = h
                .txns
                .items()
                .iter()
                .map(|t| ns_txn_entry {
                    txn_id: t.txn_id,
                    kind: t.kind as u8,
                    from_id: t.from_id,
                    to_id: t.to_id,
                    amount: t.amount,
                    balance_after: t.balance_after,
                    time_ms: t.time_ms,
                })
                .collect();
            o.resp.body.txn_history = ns_txn_history_resp {
                items: o._txns.as_ptr(),
                len: o._txns.len(),
            }
        }
    }
    Ok(o)
}

/// Decodes a response frame into a new `*out` that owns copies of everything it points to:
/// free it with `ns_response_free`. A non-OK status is not an error here: `(*out)->status` and
/// `error_message` carry it.
///
/// # Safety
/// `frame` readable with a valid body; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn ns_decode_response(
    frame: *const crate::ns_frame,
    out: *mut *mut ns_response,
) -> i32 {
    guard(|| {
        // SAFETY: per the contract.
        let (Some(f), Some(out)) = (unsafe { frame.as_ref() }, unsafe { out.as_mut() }) else {
            return NS_ERR_NULL;
        };
        if f.flags & crate::NS_FLAG_IS_RESPONSE == 0 {
            return NS_ERR_INVALID;
        }
        // SAFETY: per the contract.
        let Some((op, status, body)) = (unsafe { f.parts() }) else {
            return NS_ERR_NULL;
        };
        match decode_response(op, status, f.req_id, body.to_vec()) {
            Ok(o) => {
                *out = Box::into_raw(o).cast::<ns_response>();
                NS_OK
            }
            Err(e) => e,
        }
    })
}

/// Frees a response from `ns_decode_response` or `ns_call` (null is ignored).
///
/// # Safety
/// `r` must come from this library and not be used again.
#[no_mangle]
pub unsafe extern "C" fn ns_response_free(r: *mut ns_response) {
    if !r.is_null() {
        // SAFETY: `r` is the first field of a leaked `OwnedResponse` (repr(C)), per the contract.
        drop(unsafe { Box::from_raw(r.cast::<OwnedResponse>()) });
    }
}

pub(crate) fn response_from_frame(f: &proto::Frame<'_>) -> Result<*mut ns_response, i32> {
    decode_response(
        f.header.opcode,
        f.header.status,
        f.header.req_id,
        f.body.to_vec(),
    )
    .map(|o| Box::into_raw(o).cast::<ns_response>())
}

/// The response `r` describes (OK bodies), borrowing its bytes and arrays.
///
/// # Safety
/// Every pointer of the member `r.opcode` selects must be valid.
unsafe fn to_response<'a>(r: &ns_response) -> Result<Response<'a>, i32> {
    let op = Opcode::from_u16(r.opcode).ok_or(NS_ERR_UNKNOWN_OPCODE)?;
    let b = &r.body;
    // SAFETY: the caller set the member the opcode names, with valid pointers (contract).
    unsafe {
        Ok(match op {
            Opcode::Hello => Response::Hello(HelloResponse {
                server: field(Str::new(b.hello.server.str()?))?,
                worker_id: b.hello.worker_id,
                body_len_max: b.hello.body_len_max,
                heartbeat_interval_ms: b.hello.heartbeat_interval_ms,
                idle_timeout_ms: b.hello.idle_timeout_ms,
                server_time_ms: b.hello.server_time_ms,
            }),
            Opcode::Login => Response::Login(LoginResponse {
                salt: field(Bytes::new(b.login.salt.get()?))?,
                iterations: b.login.iterations,
                server_nonce: field(Bytes::new(b.login.server_nonce.get()?))?,
            }),
            Opcode::Logout => Response::Logout(Empty {}),
            Opcode::LeaveRoom => Response::LeaveRoom(Empty {}),
            Opcode::Heartbeat => Response::Heartbeat(HeartbeatResponse {
                client_time_ms: b.heartbeat.client_time_ms,
                server_time_ms: b.heartbeat.server_time_ms,
            }),
            Opcode::LoginProof => Response::LoginProof(LoginProofResponse {
                server_signature: b.login_proof.server_signature,
                user_id: b.login_proof.user_id,
                req_id_hw: b.login_proof.req_id_hw,
                req_id_window: b.login_proof.req_id_window,
            }),
            Opcode::Register => Response::Register(RegisterResponse {
                user_id: b.register_.user_id,
            }),
            Opcode::JoinRoom => Response::JoinRoom(JoinRoomResponse {
                room_id: b.join_room.room_id,
                last_seq: b.join_room.last_seq,
                members: b.join_room.members,
            }),
            Opcode::ChatSend => Response::ChatSend(ChatSendResponse {
                seq: b.chat_send.seq,
            }),
            Opcode::DirectSend => Response::DirectSend(DirectSendResponse {
                to_user_id: b.direct_send.to_user_id,
            }),
            Opcode::ListUsers | Opcode::UserNames => {
                let l = b.list_users;
                let items = slice(l.items, l.len).ok_or(NS_ERR_NULL)?;
                let mut v = Vec::with_capacity(items.len());
                for u in items {
                    v.push(UserEntry {
                        user_id: u.user_id,
                        name: field(Name::new(u.name.str()?))?,
                    });
                }
                if op == Opcode::UserNames {
                    Response::UserNames(UserNamesResponse {
                        users: field(List::new(v))?,
                    })
                } else {
                    Response::ListUsers(ListUsersResponse {
                        users: field(List::new(v))?,
                    })
                }
            }
            Opcode::ListRooms => {
                let l = b.list_rooms;
                let items = slice(l.items, l.len).ok_or(NS_ERR_NULL)?;
                let mut v = Vec::with_capacity(items.len());
                for r in items {
                    v.push(RoomEntry {
                        room_id: r.room_id,
                        members: r.members,
                        last_seq: r.last_seq,
                        name: field(Name::new(r.name.str()?))?,
                    });
                }
                Response::ListRooms(ListRoomsResponse {
                    rooms: field(List::new(v))?,
                })
            }
            Opcode::RoomHistory => {
                let h = b.room_history;
                let items = slice(h.items, h.len).ok_or(NS_ERR_NULL)?;
                let mut v = Vec::with_capacity(items.len());
                for m in items {
                    v.push(to_room_message(m)?);
                }
                Response::RoomHistory(RoomHistoryResponse {
                    last_seq: h.last_seq,
                    missed: h.missed,
                    messages: field(List::new(v))?,
                })
            }
            Opcode::Deposit => Response::Deposit(ledger(b.ledger)),
            Opcode::Withdraw => Response::Withdraw(ledger(b.ledger)),
            Opcode::Transfer => Response::Transfer(ledger(b.ledger)),
            Opcode::Balance => Response::Balance(BalanceResponse {
                balance: b.balance.balance,
            }),
            Opcode::TxnHistory => {
                let h = b.txn_history;
                let items = slice(h.items, h.len).ok_or(NS_ERR_NULL)?;
                let mut v = Vec::with_capacity(items.len());
                for t in items {
                    v.push(TxnEntry {
                        txn_id: t.txn_id,
                        kind: match t.kind {
                            1 => TxnKind::Deposit,
                            2 => TxnKind::Withdraw,
                            3 => TxnKind::Transfer,
                            _ => return Err(NS_ERR_INVALID),
                        },
                        from_id: t.from_id,
                        to_id: t.to_id,
                        amount: t.amount,
                        balance_after: t.balance_after,
                        time_ms: t.time_ms,
                    });
                }
                Response::TxnHistory(TxnHistoryResponse {
                    txns: field(List::new(v))?,
                })
            }
            _ => return Err(NS_ERR_UNKNOWN_OPCODE),
        })
    }
}

fn ledger(l: ns_ledger_resp) -> LedgerResponse {
    LedgerResponse {
        balance: l.balance,
        txn_id: l.txn_id,
    }
}

/// # Safety
/// The message's bytes must be valid.
unsafe fn to_room_message<'a>(m: &ns_room_message) -> Result<RoomMessage<'a>, i32> {
    // SAFETY: per the contract.
    unsafe {
        Ok(RoomMessage {
            seq: m.seq,
            sender_id: m.sender_id,
            time_ms: m.time_ms,
            sender: field(Name::new(m.sender.str()?))?,
            text: field(Str::new(m.text.str()?))?,
        })
    }
}

/// Encodes response `*resp` as a whole frame (a server's side): an OK body when `status` is 0,
/// else an error frame carrying `error_message`. Sizes as `ns_encode_request`.
///
/// # Safety
/// As `ns_encode_request`, for the member `resp->opcode` selects (or `error_message`).
#[no_mangle]
pub unsafe extern "C" fn ns_encode_response(
    resp: *const ns_response,
    out: *mut u8,
    cap: usize,
    written: *mut usize,
) -> i32 {
    guard(|| {
        // SAFETY: per the contract.
        let Some(r) = (unsafe { resp.as_ref() }) else {
            return NS_ERR_NULL;
        };
        let write = |frame: &mut Vec<u8>| {
            if r.status != NS_STATUS_OK {
                let status = Status::from_u16(r.status).ok_or(crate::NS_ERR_UNKNOWN_STATUS)?;
                // SAFETY: per the contract.
                let msg = unsafe { r.error_message.str() }?;
                if msg.len() > MESSAGE_LEN_MAX {
                    return Err(NS_ERR_INVALID);
                }
                proto::write_error(frame, r.req_id, r.opcode, status, msg);
                Ok(())
            } else {
                // SAFETY: per the contract.
                let body = unsafe { to_response(r) }?;
                proto::write_response(frame, r.req_id, &body, proto::BODY_LEN_LIMIT)
                    .map_err(|_| NS_ERR_INVALID)
            }
        };
        // SAFETY: per the contract.
        unsafe { encode_with(write, out, cap, written) }
    })
}

// ---- Pushes ----

/// NOTICE.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ns_notice_push {
    /// `NS_NOTICE_*`.
    pub code: u16,
    /// Text for people.
    pub text: ns_bytes,
}
/// CHAT_BROADCAST.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ns_chat_push {
    /// Room id.
    pub room_id: u32,
    /// The message.
    pub message: ns_room_message,
}
/// DIRECT_MESSAGE.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ns_direct_push {
    /// Sender's id.
    pub from_id: u32,
    /// When sent.
    pub time_ms: u64,
    /// Sender's name.
    pub from: ns_bytes,
    /// Text.
    pub text: ns_bytes,
}
/// CHAT_GAP.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ns_gap_push {
    /// Room id.
    pub room_id: u32,
    /// First seq missed.
    pub first_seq: u64,
    /// How many.
    pub missed: u64,
}

/// MONEY_RECEIVED.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ns_money_push {
    /// The transfer's txn id.
    pub txn_id: u64,
    /// Sender's id.
    pub from_id: u32,
    /// Minor units received.
    pub amount: u64,
    /// When applied.
    pub time_ms: u64,
    /// Sender's name.
    pub from: ns_bytes,
}

/// A push body; `opcode` says which member.
#[repr(C)]
#[derive(Clone, Copy)]
pub union ns_push_body {
    /// NOTICE.
    pub notice: ns_notice_push,
    /// CHAT_BROADCAST.
    pub chat: ns_chat_push,
    /// DIRECT_MESSAGE.
    pub direct: ns_direct_push,
    /// CHAT_GAP.
    pub gap: ns_gap_push,
    /// MONEY_RECEIVED.
    pub money: ns_money_push,
}

/// A push: its opcode and body.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ns_push {
    /// Which push.
    pub opcode: u16,
    /// Its body.
    pub body: ns_push_body,
}

impl std::fmt::Debug for ns_push {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ns_push")
            .field("opcode", &self.opcode)
            .finish_non_exhaustive()
    }
}

#[repr(C)]
struct OwnedPush {
    push: ns_push,
    _body: Vec<u8>,
}

pub(crate) fn push_from(op: Opcode, body: Vec<u8>) -> Result<*mut ns_push, i32> {
    let mut o = Box::new(OwnedPush {
        push: ns_push {
            opcode: op.as_u16(),
            body: ns_push_body {
                gap: ns_gap_push {
                    room_id: 0,
                    first_seq: 0,
                    missed: 0,
                },
            },
        },
        _body: body,
    });
    let bytes: &[u8] = &o._body;
    // SAFETY: (lifetime) the pointers made below point into `o._body`, owned by the box until
    // `ns_push_free`; the Vec's heap buffer does not move with the box.
    let bytes: &'static [u8] = unsafe { std::mem::transmute::<&[u8], &'static [u8]>(bytes) };
    let p = Push::decode(op, bytes).map_err(|_| NS_ERR_BAD_BODY)?;
    o.push.body = match p {
        Push::Notice(n) => ns_push_body {
            notice: ns_notice_push {
                code: n.code,
                text: ns_bytes::of(n.text.as_str().as_bytes()),
            },
        },
        Push::ChatBroadcast(c) => ns_push_body {
            chat: ns_chat_push {
                room_id: c.room_id,
                message: room_message(&c.message),
            },
        },
        Push::DirectMessage(d) => ns_push_body {
            direct: ns_direct_push {
                from_id: d.from_id,
                time_ms: d.time_ms,
                from: ns_bytes::of(d.from.as_str().as_bytes()),
                text: ns_bytes::of(d.text.as_str().as_bytes()),
            },
        },
        Push::ChatGap(g) => ns_push_body {
            gap: ns_gap_push {
                room_id: g.room_id,
                first_seq: g.first_seq,
                missed: g.missed,
            },
        },
        Push::MoneyReceived(m) => ns_push_body {
            money: ns_money_push {
                txn_id: m.txn_id,
                from_id: m.from_id,
                amount: m.amount,
                time_ms: m.time_ms,
                from: ns_bytes::of(m.from.as_str().as_bytes()),
            },
        },
    };
    Ok(Box::into_raw(o).cast::<ns_push>())
}

/// Decodes a push frame into a new `*out` owning copies of what it points to: free it with
/// `ns_push_free`.
///
/// # Safety
/// `frame` readable with a valid body; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn ns_decode_push(
    frame: *const crate::ns_frame,
    out: *mut *mut ns_push,
) -> i32 {
    guard(|| {
        // SAFETY: per the contract.
        let (Some(f), Some(out)) = (unsafe { frame.as_ref() }, unsafe { out.as_mut() }) else {
            return NS_ERR_NULL;
        };
        // SAFETY: per the contract.
        let Some((op, _, body)) = (unsafe { f.parts() }) else {
            return NS_ERR_NULL;
        };
        if !op.is_push() || f.flags & crate::NS_FLAG_IS_RESPONSE != 0 {
            return NS_ERR_INVALID;
        }
        match push_from(op, body.to_vec()) {
            Ok(p) => {
                *out = p;
                NS_OK
            }
            Err(e) => e,
        }
    })
}

/// Frees a push from `ns_decode_push` or `ns_next_push` (null is ignored).
///
/// # Safety
/// `p` must come from this library and not be used again.
#[no_mangle]
pub unsafe extern "C" fn ns_push_free(p: *mut ns_push) {
    if !p.is_null() {
        // SAFETY: `p` is the first field of a leaked `OwnedPush` (repr(C)), per the contract.
        drop(unsafe { Box::from_raw(p.cast::<OwnedPush>()) });
    }
}

/// Encodes push `*push` as a whole frame (a server's side). Sizes as `ns_encode_request`.
///
/// # Safety
/// As `ns_encode_request`, for the member `push->opcode` selects.
#[no_mangle]
pub unsafe extern "C" fn ns_encode_push(
    push: *const ns_push,
    out: *mut u8,
    cap: usize,
    written: *mut usize,
) -> i32 {
    guard(|| {
        // SAFETY: per the contract.
        let Some(p) = (unsafe { push.as_ref() }) else {
            return NS_ERR_NULL;
        };
        let Some(op) = Opcode::from_u16(p.opcode) else {
            return NS_ERR_UNKNOWN_OPCODE;
        };
        let b = &p.body;
        // SAFETY: the caller set the member the opcode names, with valid bytes (contract).
        let push = unsafe {
            match op {
                Opcode::Notice => b.notice.text.str().and_then(|t| {
                    Ok(Push::Notice(NoticePush {
                        code: b.notice.code,
                        text: field(Str::new(t))?,
                    }))
                }),
                Opcode::ChatBroadcast => to_room_message(&b.chat.message).map(|m| {
                    Push::ChatBroadcast(ChatBroadcast {
                        room_id: b.chat.room_id,
                        message: m,
                    })
                }),
                Opcode::DirectMessage => (|| {
                    Ok(Push::DirectMessage(DirectMessage {
                        from_id: b.direct.from_id,
                        time_ms: b.direct.time_ms,
                        from: field(Name::new(b.direct.from.str()?))?,
                        text: field(Str::new(b.direct.text.str()?))?,
                    }))
                })(),
                Opcode::ChatGap => Ok(Push::ChatGap(ChatGap {
                    room_id: b.gap.room_id,
                    first_seq: b.gap.first_seq,
                    missed: b.gap.missed,
                })),
                Opcode::MoneyReceived => (|| {
                    Ok(Push::MoneyReceived(MoneyReceived {
                        txn_id: b.money.txn_id,
                        from_id: b.money.from_id,
                        amount: b.money.amount,
                        time_ms: b.money.time_ms,
                        from: field(Name::new(b.money.from.str()?))?,
                    }))
                })(),
                _ => Err(NS_ERR_UNKNOWN_OPCODE),
            }
        };
        let push = match push {
            Ok(p) => p,
            Err(e) => return e,
        };
        let write = |frame: &mut Vec<u8>| {
            proto::write_push(frame, &push, proto::BODY_LEN_LIMIT).map_err(|_| NS_ERR_INVALID)
        };
        // SAFETY: per the contract.
        unsafe { encode_with(write, out, cap, written) }
    })
}
