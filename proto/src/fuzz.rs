//! Entry points for the fuzz targets in `fuzz/` and for the corpus replay test, kept here so
//! both run the same code and the replay needs no fuzzing toolchain.
//!
//! Each function asserts the properties a fuzzer should break if it can: no panic, decode then
//! re-encode gives back the input bytes, and the decoder's buffer stays within one frame.

use crate::body::{Push, Reply, Request};
use crate::codec::Field;
use crate::codes::Opcode;
use crate::frame::{write_frame, FrameDecoder, FrameHead, BODY_LEN_LIMIT};
use crate::header::{Flags, HEADER_LEN};

/// Body limit the decoder target uses: small, so the fuzzer reaches the limit often.
pub const FUZZ_BODY_LEN_MAX: u32 = 4096;

/// Feeds `data` to a decoder in chunks whose sizes come from the data itself, checks every
/// frame re-encodes to the bytes it came from, and that the buffer never exceeds one frame.
pub fn decoder(data: &[u8]) {
    let Some((&split_seed, stream)) = data.split_first() else {
        return;
    };
    let mut dec = FrameDecoder::new(FUZZ_BODY_LEN_MAX);
    let chunk_len = usize::from(split_seed % 64) + 1;
    let mut consumed_total = 0usize;
    let mut frames = Vec::new();
    for chunk in stream.chunks(chunk_len) {
        let mut input = chunk;
        loop {
            let (used, result) = dec.decode(input);
            assert!(used <= input.len(), "consumed more than given");
            consumed_total += used;
            input = &input[used..];
            match result {
                Ok(Some(frame)) => {
                    frames.push((frame.header, frame.body.to_vec()));
                    body_of(
                        frame.header.opcode,
                        frame.header.flags,
                        frame.header.status,
                        frame.body,
                    );
                }
                Ok(None) => {
                    assert!(input.is_empty(), "Ok(None) left input unconsumed");
                    break;
                }
                Err(e) if e.is_fatal() => {
                    assert!(input.is_empty(), "a fatal error must consume everything");
                    break;
                }
                Err(_) => {}
            }
            assert!(dec.buffered_len() <= HEADER_LEN + FUZZ_BODY_LEN_MAX as usize);
            assert!(dec.buffer_capacity() <= HEADER_LEN + FUZZ_BODY_LEN_MAX as usize);
        }
    }
    assert_eq!(consumed_total, stream.len(), "every byte is consumed");
    for (header, body) in frames {
        let mut out = Vec::new();
        let head = FrameHead {
            flags: header.flags,
            opcode: header.opcode.as_u16(),
            status: header.status.as_u16(),
            req_id: header.req_id,
        };
        write_frame(&mut out, head, &RawBody(&body), BODY_LEN_LIMIT).expect("body fit the decoder");
        let mut again = FrameDecoder::new(FUZZ_BODY_LEN_MAX);
        let (used, result) = again.decode(&out);
        assert_eq!(used, out.len());
        let frame = result
            .expect("re-encoded frame decodes")
            .expect("whole frame");
        assert_eq!(frame.header, header);
        assert_eq!(frame.body, &body[..]);
    }
}

/// Decodes `body` as every kind of body the opcode has, re-encoding whatever decodes and
/// checking it gives back exactly `body`.
fn body_of(opcode: Opcode, flags: Flags, status: crate::Status, body: &[u8]) {
    if flags.is_response() {
        if let Ok(reply) = Reply::decode(opcode, status, body) {
            let bytes = match &reply {
                Reply::Ok(r) => {
                    let mut v = Vec::new();
                    r.write(&mut v);
                    assert_eq!(v.len(), r.encoded_len());
                    v
                }
                Reply::Err(_, e) => e.to_vec(),
            };
            assert_eq!(bytes, body, "response {opcode} did not round-trip");
        }
    } else if let Ok(req) = Request::decode(opcode, body) {
        let mut v = Vec::new();
        req.write(&mut v);
        assert_eq!(v.len(), req.encoded_len());
        assert_eq!(v, body, "request {opcode} did not round-trip");
    } else if let Ok(push) = Push::decode(opcode, body) {
        let mut v = Vec::new();
        push.write(&mut v);
        assert_eq!(v.len(), push.encoded_len());
        assert_eq!(v, body, "push {opcode} did not round-trip");
    }
}

/// Every body parser on raw bytes: the first two bytes pick the opcode (modulo the known ones)
/// and whether to read it as request, response, error or push; the rest is the body.
pub fn bodies(data: &[u8]) {
    let [op_index, kind, body @ ..] = data else {
        return;
    };
    let opcode = Opcode::ALL[usize::from(*op_index) % Opcode::ALL.len()];
    let status = match kind % 3 {
        0 => crate::Status::Ok,
        1 => crate::Status::ErrNotFound,
        _ => crate::Status::ErrBadPacket,
    };
    let flags = if kind & 0x80 != 0 {
        Flags::RESPONSE
    } else {
        Flags::NONE
    };
    body_of(opcode, flags, status, body);
}

/// Bytes written as they are, for re-encoding a frame whose body is not decoded.
struct RawBody<'a>(&'a [u8]);

impl<'a> Field<'a> for RawBody<'a> {
    fn read(r: &mut crate::codec::Reader<'a>) -> Result<Self, crate::BodyError> {
        Ok(RawBody(r.take(r.remaining(), "raw body")?))
    }
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.0);
    }
    fn encoded_len(&self) -> usize {
        self.0.len()
    }
}

/// One well-formed frame per request, response and push body, plus an error response: seeds for
/// the fuzzers and the examples `docs/PROTOCOL.md` shows. Returns (label, frame bytes).
pub fn sample_frames() -> Vec<(String, Vec<u8>)> {
    use crate::body::*;
    use crate::codec::{List, Name};
    use crate::frame::{write_error, write_push, write_request, write_response};
    use crate::Response;

    let name = |s| Name::new(s).expect("sample names are valid");
    let text = |s| Text::new(s).expect("sample texts are valid");
    let nonce = |b| Nonce::new(b).expect("sample nonces are valid");
    let salt = |b| Salt::new(b).expect("sample salts are valid");
    let label = |s| Label::new(s).expect("sample labels are valid");
    let requests = vec![
        Request::Hello(HelloRequest {
            client: label("nsclient/0.1"),
        }),
        Request::Login(LoginRequest {
            username: name("alice"),
            client_nonce: nonce(b"0123456789abcdef"),
        }),
        Request::Logout(Empty {}),
        Request::Heartbeat(HeartbeatRequest {
            client_time_ms: 1_763_779_200_000,
        }),
        Request::LoginProof(LoginProofRequest {
            client_proof: [0x5A; 32],
        }),
        Request::Register(RegisterRequest {
            username: name("bob"),
            salt: salt(&[0x11; 16]),
            iterations: 4096,
            stored_key: [0x22; 32],
            server_key: [0x33; 32],
        }),
        Request::JoinRoom(JoinRoomRequest {
            room: name("lobby"),
        }),
        Request::LeaveRoom(LeaveRoomRequest { room_id: 1 }),
        Request::ChatSend(ChatSendRequest {
            room_id: 1,
            text: text("hi all"),
        }),
        Request::DirectSend(DirectSendRequest {
            to: name("bob"),
            text: text("psst"),
        }),
        Request::ListUsers(PageRequest {
            after_id: 0,
            limit: 100,
        }),
        Request::ListRooms(PageRequest {
            after_id: 0,
            limit: 100,
        }),
        Request::RoomHistory(RoomHistoryRequest {
            room_id: 1,
            after_seq: 40,
            limit: 50,
        }),
        Request::Deposit(AmountRequest { amount: 10_000 }),
        Request::Withdraw(AmountRequest { amount: 2_500 }),
        Request::Transfer(TransferRequest {
            to: Target::Name(name("bob")),
            amount: 1_250,
        }),
        Request::Transfer(TransferRequest {
            to: Target::Id(2),
            amount: 1,
        }),
        Request::Balance(Empty {}),
        Request::TxnHistory(TxnHistoryRequest {
            before_txn_id: 0,
            limit: 20,
        }),
        Request::UserNames(UserNamesRequest {
            ids: List::new(vec![1, 2]).expect("two ids"),
        }),
    ];
    let alice_and_bob = vec![
        UserEntry {
            user_id: 1,
            name: name("alice"),
        },
        UserEntry {
            user_id: 2,
            name: name("bob"),
        },
    ];
    let responses = vec![
        Response::Hello(HelloResponse {
            server: label("uring-server/0.1"),
            worker_id: 0,
            body_len_max: 65536,
            heartbeat_interval_ms: 10_000,
            idle_timeout_ms: 30_000,
            server_time_ms: 1_763_779_200_000,
        }),
        Response::Login(LoginResponse {
            salt: salt(&[0x11; 16]),
            iterations: 4096,
            server_nonce: nonce(b"fedcba9876543210"),
        }),
        Response::LoginProof(LoginProofResponse {
            server_signature: [0xA5; 32],
            user_id: 1,
            req_id_hw: 0x0203,
            req_id_window: 32,
        }),
        Response::Register(RegisterResponse { user_id: 2 }),
        Response::Heartbeat(HeartbeatResponse {
            client_time_ms: 1_763_779_200_000,
            server_time_ms: 1_763_779_200_003,
        }),
        Response::JoinRoom(JoinRoomResponse {
            room_id: 1,
            last_seq: 41,
            members: 3,
        }),
        Response::LeaveRoom(Empty {}),
        Response::ChatSend(ChatSendResponse { seq: 42 }),
        Response::DirectSend(DirectSendResponse { to_user_id: 2 }),
        Response::ListUsers(ListUsersResponse {
            users: List::new(alice_and_bob.clone()).expect("two entries"),
        }),
        Response::ListRooms(ListRoomsResponse {
            rooms: List::new(vec![RoomEntry {
                room_id: 1,
                members: 3,
                last_seq: 42,
                name: name("lobby"),
            }])
            .expect("one entry"),
        }),
        Response::RoomHistory(RoomHistoryResponse {
            last_seq: 42,
            missed: 0,
            messages: List::new(vec![RoomMessage {
                seq: 41,
                sender_id: 2,
                time_ms: 1_763_779_199_000,
                sender: name("bob"),
                text: text("hello"),
            }])
            .expect("one entry"),
        }),
        Response::UserNames(UserNamesResponse {
            users: List::new(alice_and_bob.clone()).expect("two entries"),
        }),
        Response::Deposit(LedgerResponse {
            balance: 10_000,
            txn_id: 1,
        }),
        Response::Withdraw(LedgerResponse {
            balance: 7_500,
            txn_id: 2,
        }),
        Response::Transfer(LedgerResponse {
            balance: 6_250,
            txn_id: 3,
        }),
        Response::Balance(BalanceResponse { balance: 6_250 }),
        Response::TxnHistory(TxnHistoryResponse {
            txns: List::new(vec![TxnEntry {
                txn_id: 3,
                kind: TxnKind::Transfer,
                from_id: 1,
                to_id: 2,
                amount: 1_250,
                balance_after: 6_250,
                time_ms: 1_763_779_200_000,
            }])
            .expect("one entry"),
        }),
    ];
    let pushes = vec![
        Push::ChatBroadcast(ChatBroadcast {
            room_id: 1,
            message: RoomMessage {
                seq: 42,
                sender_id: 1,
                time_ms: 1_763_779_200_000,
                sender: name("alice"),
                text: text("hi all"),
            },
        }),
        Push::DirectMessage(DirectMessage {
            from_id: 1,
            time_ms: 1_763_779_200_000,
            from: name("alice"),
            text: text("psst"),
        }),
        Push::Notice(NoticePush {
            code: crate::codes::notice::SHUTTING_DOWN,
            text: Message::new("server shutting down").expect("short"),
        }),
        Push::ChatGap(ChatGap {
            room_id: 1,
            first_seq: 43,
            missed: 7,
        }),
        Push::MoneyReceived(MoneyReceived {
            txn_id: 3,
            from_id: 1,
            amount: 1_250,
            time_ms: 1_763_779_200_000,
            from: name("alice"),
        }),
    ];
    // Request ids follow one rule so a request and its response carry the same one: the
    // opcode's number, plus 0x100 for each earlier sample with that opcode.
    let mut seen = std::collections::HashMap::new();
    let mut req_id_for = |kind: &str, op: Opcode| {
        let n = seen.entry((kind.to_string(), op)).or_insert(0u64);
        let id = u64::from(op.as_u16()) + 0x100 * *n;
        *n += 1;
        id
    };
    let mut out = Vec::new();
    for r in &requests {
        let mut f = Vec::new();
        let id = req_id_for("request", r.opcode());
        write_request(&mut f, id, r, BODY_LEN_LIMIT).expect("small body");
        out.push((format!("request-{}", r.opcode()), f));
    }
    for r in &responses {
        let mut f = Vec::new();
        let id = req_id_for("response", r.opcode());
        write_response(&mut f, id, r, BODY_LEN_LIMIT).expect("small body");
        out.push((format!("response-{}", r.opcode()), f));
    }
    for p in &pushes {
        let mut f = Vec::new();
        write_push(&mut f, p, BODY_LEN_LIMIT).expect("small body");
        out.push((format!("push-{}", p.opcode()), f));
    }
    let mut f = Vec::new();
    write_error(
        &mut f,
        u64::from(Opcode::Withdraw.as_u16()),
        Opcode::Withdraw.as_u16(),
        crate::Status::ErrInsufficientFunds,
        "balance 100, need 250",
    );
    out.push(("error-WITHDRAW".to_string(), f));
    let mut f = Vec::new();
    write_error(
        &mut f,
        0x0999,
        0x0999,
        crate::Status::ErrUnknownOpcode,
        "unknown opcode 0x0999",
    );
    out.push(("error-unknown-opcode".to_string(), f));
    let mut f = Vec::new();
    write_error(
        &mut f,
        u64::from(Opcode::Deposit.as_u16()),
        Opcode::Deposit.as_u16(),
        crate::Status::ErrStaleRequest,
        "stale req_id: older than the results kept below 1058; not applied now",
    );
    out.push(("error-stale-DEPOSIT".to_string(), f));
    let mut f = Vec::new();
    write_error(
        &mut f,
        u64::from(Opcode::Transfer.as_u16()),
        Opcode::Transfer.as_u16(),
        crate::Status::ErrSessionSuperseded,
        "session ended by a newer login: not executed",
    );
    out.push(("error-superseded-TRANSFER".to_string(), f));
    let mut f = Vec::new();
    write_error(
        &mut f,
        u64::from(Opcode::Deposit.as_u16()) + 1,
        Opcode::Deposit.as_u16(),
        crate::Status::ErrStorageUnavailable,
        "the journal cannot write (File too large): nothing applied, retry later",
    );
    out.push(("error-storage-DEPOSIT".to_string(), f));
    out
}
