//! Property tests: every body type round-trips, alone and inside a frame, and the decoder yields
//! the same frames and errors however a stream is split.

use proptest::prelude::*;

use proto::body::*;
use proto::codec::{List, Name};
use proto::frame::write_frame_with;
use proto::{
    write_push, write_request, write_response, DecodeError, Field, Flags, FrameDecoder, FrameHead,
    Header, Opcode, Status, BODY_LEN_LIMIT, HEADER_LEN,
};

fn name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_.-]{1,32}"
}

fn text() -> impl Strategy<Value = String> {
    // Any Unicode, multibyte included, kept within TEXT_LEN_MAX bytes.
    prop_oneof![
        "\\PC{1,64}",
        proptest::collection::vec(any::<char>(), 1..1000).prop_map(|v| v.into_iter().collect()),
    ]
    .prop_filter("fits TEXT_LEN_MAX bytes", |s: &String| {
        !s.is_empty() && s.len() <= TEXT_LEN_MAX
    })
}

fn message() -> impl Strategy<Value = String> {
    "\\PC{0,80}".prop_filter("fits", |s: &String| s.len() <= MESSAGE_LEN_MAX)
}

fn label() -> impl Strategy<Value = String> {
    "[ -~]{0,64}"
}

fn nonce() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), NONCE_LEN_MIN..=NONCE_LEN_MAX)
}

fn salt() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), SALT_LEN_MIN..=SALT_LEN_MAX)
}

fn n(s: &str) -> Name<'_> {
    Name::new(s).expect("strategy makes valid names")
}

fn t(s: &str) -> Text<'_> {
    Text::new(s).expect("strategy makes valid texts")
}

/// A body alone: encoded length matches, decode gives back the value, and every strict prefix
/// is refused.
fn round_trip<'a, T>(value: &T, buf: &'a mut Vec<u8>) -> Result<(), TestCaseError>
where
    T: Field<'a> + PartialEq + std::fmt::Debug,
{
    buf.clear();
    value.write(buf);
    prop_assert_eq!(buf.len(), value.encoded_len());
    let bytes: &'a [u8] = buf;
    prop_assert_eq!(&T::decode(bytes)?, value);
    if !bytes.is_empty() {
        prop_assert!(T::decode(&bytes[..bytes.len() - 1]).is_err());
    }
    Ok(())
}

/// A request inside a frame, through the decoder and the opcode dispatch.
fn request_frame(req: &Request<'_>, req_id: u64) -> Result<(), TestCaseError> {
    let mut out = Vec::new();
    write_request(&mut out, req_id, req, BODY_LEN_LIMIT).expect("fits");
    let mut dec = FrameDecoder::new(BODY_LEN_LIMIT);
    let (used, res) = dec.decode(&out);
    prop_assert_eq!(used, out.len());
    let frame = res.expect("valid").expect("whole");
    prop_assert_eq!(frame.header.req_id, req_id);
    prop_assert!(!frame.header.flags.is_response());
    prop_assert_eq!(&frame.request()?, req);
    Ok(())
}

/// An OK response inside a frame.
fn response_frame(resp: &Response<'_>, req_id: u64) -> Result<(), TestCaseError> {
    let mut out = Vec::new();
    write_response(&mut out, req_id, resp, BODY_LEN_LIMIT).expect("fits");
    let mut dec = FrameDecoder::new(BODY_LEN_LIMIT);
    let frame = dec.decode(&out).1.expect("valid").expect("whole");
    prop_assert_eq!(frame.header.req_id, req_id);
    prop_assert!(frame.header.flags.is_response());
    prop_assert_eq!(frame.reply()?, Reply::Ok(resp.clone()));
    Ok(())
}

/// A push inside a frame.
fn push_frame(push: &Push<'_>) -> Result<(), TestCaseError> {
    let mut out = Vec::new();
    write_push(&mut out, push, BODY_LEN_LIMIT).expect("fits");
    let mut dec = FrameDecoder::new(BODY_LEN_LIMIT);
    let frame = dec.decode(&out).1.expect("valid").expect("whole");
    prop_assert_eq!(frame.header.kind(), proto::FrameKind::Push);
    prop_assert_eq!(frame.header.req_id, 0);
    prop_assert_eq!(&frame.push()?, push);
    Ok(())
}

proptest! {
    #[test]
    fn session_bodies_round_trip(
        client in label(), server in label(), worker_id: u16, body_len_max: u32,
        hb: u32, idle: u32, time: u64, user in name(), cn in nonce(), sn in nonce(),
        s in salt(), iterations: u32, proof: [u8; 32], sig: [u8; 32], user_id: u32,
        msg in message(), code: u16, req_id: u64,
    ) {
        let mut buf = Vec::new();
        let hello = HelloRequest { client: Label::new(&client)? };
        round_trip(&hello, &mut buf)?;
        request_frame(&Request::Hello(hello), req_id)?;
        let hello_r = HelloResponse {
            server: Label::new(&server)?, worker_id, body_len_max,
            heartbeat_interval_ms: hb, idle_timeout_ms: idle, server_time_ms: time,
        };
        round_trip(&hello_r, &mut buf)?;
        response_frame(&Response::Hello(hello_r), req_id)?;
        let login = LoginRequest { username: n(&user), client_nonce: Nonce::new(&cn)? };
        round_trip(&login, &mut buf)?;
        request_frame(&Request::Login(login), req_id)?;
        let login_r = LoginResponse {
            salt: Salt::new(&s)?, iterations, server_nonce: Nonce::new(&sn)?,
        };
        round_trip(&login_r, &mut buf)?;
        response_frame(&Response::Login(login_r), req_id)?;
        let lp = LoginProofRequest { client_proof: proof };
        round_trip(&lp, &mut buf)?;
        request_frame(&Request::LoginProof(lp), req_id)?;
        let lp_r = LoginProofResponse {
            server_signature: sig,
            user_id,
            req_id_hw: req_id ^ 0x5555,
            req_id_window: user_id ^ 7,
        };
        round_trip(&lp_r, &mut buf)?;
        response_frame(&Response::LoginProof(lp_r), req_id)?;
        let reg = RegisterRequest {
            username: n(&user), salt: Salt::new(&s)?, iterations, stored_key: proof, server_key: sig,
        };
        round_trip(&reg, &mut buf)?;
        request_frame(&Request::Register(reg), req_id)?;
        let reg_r = RegisterResponse { user_id };
        round_trip(&reg_r, &mut buf)?;
        response_frame(&Response::Register(reg_r), req_id)?;
        let hb_q = HeartbeatRequest { client_time_ms: time };
        round_trip(&hb_q, &mut buf)?;
        request_frame(&Request::Heartbeat(hb_q), req_id)?;
        let hb_r = HeartbeatResponse { client_time_ms: time, server_time_ms: time ^ 1 };
        round_trip(&hb_r, &mut buf)?;
        response_frame(&Response::Heartbeat(hb_r), req_id)?;
        round_trip(&Empty {}, &mut buf)?;
        request_frame(&Request::Logout(Empty {}), req_id)?;
        response_frame(&Response::Logout(Empty {}), req_id)?;
        let notice = NoticePush { code, text: Message::new(&msg)? };
        round_trip(&notice, &mut buf)?;
        push_frame(&Push::Notice(notice))?;
        let err = ErrorBody { message: Message::new(&msg)? };
        round_trip(&err, &mut buf)?;
    }

    #[test]
    fn chat_bodies_round_trip(
        room in name(), user in name(), txt in text(), room_id: u32, seq: u64, members: u32,
        sender_id: u32, time: u64, after: u32, limit: u16, req_id: u64,
        users in proptest::collection::vec((any::<u32>(), name()), 0..20),
        rooms in proptest::collection::vec((any::<u32>(), any::<u32>(), any::<u64>(), name()), 0..20),
        history in proptest::collection::vec((any::<u64>(), any::<u32>(), any::<u64>(), name(), text()), 0..5),
        missed: u64,
    ) {
        let mut buf = Vec::new();
        let join = JoinRoomRequest { room: n(&room) };
        round_trip(&join, &mut buf)?;
        request_frame(&Request::JoinRoom(join), req_id)?;
        let join_r = JoinRoomResponse { room_id, last_seq: seq, members };
        round_trip(&join_r, &mut buf)?;
        response_frame(&Response::JoinRoom(join_r), req_id)?;
        let leave = LeaveRoomRequest { room_id };
        round_trip(&leave, &mut buf)?;
        request_frame(&Request::LeaveRoom(leave), req_id)?;
        response_frame(&Response::LeaveRoom(Empty {}), req_id)?;
        let send = ChatSendRequest { room_id, text: t(&txt) };
        round_trip(&send, &mut buf)?;
        request_frame(&Request::ChatSend(send), req_id)?;
        let send_r = ChatSendResponse { seq };
        round_trip(&send_r, &mut buf)?;
        response_frame(&Response::ChatSend(send_r), req_id)?;
        let bc = ChatBroadcast {
            room_id,
            message: RoomMessage { seq, sender_id, time_ms: time, sender: n(&user), text: t(&txt) },
        };
        round_trip(&bc, &mut buf)?;
        push_frame(&Push::ChatBroadcast(bc))?;
        let dm = DirectSendRequest { to: n(&user), text: t(&txt) };
        round_trip(&dm, &mut buf)?;
        request_frame(&Request::DirectSend(dm), req_id)?;
        let dm_r = DirectSendResponse { to_user_id: sender_id };
        round_trip(&dm_r, &mut buf)?;
        response_frame(&Response::DirectSend(dm_r), req_id)?;
        let dmp = DirectMessage { from_id: sender_id, time_ms: time, from: n(&user), text: t(&txt) };
        round_trip(&dmp, &mut buf)?;
        push_frame(&Push::DirectMessage(dmp))?;
        let lu = PageRequest { after_id: after, limit };
        round_trip(&lu, &mut buf)?;
        request_frame(&Request::ListUsers(lu), req_id)?;
        let lu_r = ListUsersResponse {
            users: List::new(users.iter().map(|(id, nm)| UserEntry { user_id: *id, name: n(nm) }).collect())?,
        };
        round_trip(&lu_r, &mut buf)?;
        response_frame(&Response::ListUsers(lu_r), req_id)?;
        let lr = PageRequest { after_id: after, limit };
        round_trip(&lr, &mut buf)?;
        request_frame(&Request::ListRooms(lr), req_id)?;
        let lr_r = ListRoomsResponse {
            rooms: List::new(rooms.iter().map(|(id, m, s, nm)| RoomEntry {
                room_id: *id, members: *m, last_seq: *s, name: n(nm),
            }).collect())?,
        };
        round_trip(&lr_r, &mut buf)?;
        response_frame(&Response::ListRooms(lr_r), req_id)?;
        let rh = RoomHistoryRequest { room_id, after_seq: seq, limit };
        round_trip(&rh, &mut buf)?;
        request_frame(&Request::RoomHistory(rh), req_id)?;
        let rh_r = RoomHistoryResponse {
            last_seq: seq, missed,
            messages: List::new(history.iter().map(|(s, id, tm, nm, tx)| RoomMessage {
                seq: *s, sender_id: *id, time_ms: *tm, sender: n(nm), text: t(tx),
            }).collect())?,
        };
        round_trip(&rh_r, &mut buf)?;
        response_frame(&Response::RoomHistory(rh_r), req_id)?;
        let gap = ChatGap { room_id, first_seq: seq, missed };
        round_trip(&gap, &mut buf)?;
        push_frame(&Push::ChatGap(gap))?;
    }

    #[test]
    fn ledger_bodies_round_trip(
        amount: u64, balance: u64, txn_id: u64, to_id: u32, to_name in name(), by_name: bool,
        limit: u16, req_id: u64,
        txns in proptest::collection::vec(
            (any::<u64>(), 1u8..=3, any::<u32>(), any::<u32>(), any::<u64>(), any::<u64>(), any::<u64>()), 0..30),
    ) {
        let mut buf = Vec::new();
        let a = AmountRequest { amount };
        round_trip(&a, &mut buf)?;
        request_frame(&Request::Deposit(a.clone()), req_id)?;
        request_frame(&Request::Withdraw(a), req_id)?;
        let to = if by_name { Target::Name(n(&to_name)) } else { Target::Id(to_id) };
        let tr = TransferRequest { to, amount };
        round_trip(&tr, &mut buf)?;
        request_frame(&Request::Transfer(tr), req_id)?;
        let lr = LedgerResponse { balance, txn_id };
        round_trip(&lr, &mut buf)?;
        response_frame(&Response::Deposit(lr.clone()), req_id)?;
        response_frame(&Response::Withdraw(lr.clone()), req_id)?;
        response_frame(&Response::Transfer(lr), req_id)?;
        request_frame(&Request::Balance(Empty {}), req_id)?;
        let br = BalanceResponse { balance };
        round_trip(&br, &mut buf)?;
        response_frame(&Response::Balance(br), req_id)?;
        let th = TxnHistoryRequest { before_txn_id: txn_id, limit };
        round_trip(&th, &mut buf)?;
        request_frame(&Request::TxnHistory(th), req_id)?;
        let kind = |k| match k { 1 => TxnKind::Deposit, 2 => TxnKind::Withdraw, _ => TxnKind::Transfer };
        let th_r = TxnHistoryResponse {
            txns: List::new(txns.iter().map(|&(id, k, f, to, am, bal, tm)| TxnEntry {
                txn_id: id, kind: kind(k), from_id: f, to_id: to, amount: am, balance_after: bal, time_ms: tm,
            }).collect())?,
        };
        round_trip(&th_r, &mut buf)?;
        response_frame(&Response::TxnHistory(th_r), req_id)?;
        let mr = MoneyReceived { txn_id, from_id: to_id, amount, time_ms: balance, from: n(&to_name) };
        round_trip(&mr, &mut buf)?;
        push_frame(&Push::MoneyReceived(mr))?;
        let ids: Vec<u32> = txns.iter().map(|t| t.2).collect();
        let un = UserNamesRequest { ids: List::new(ids.clone())? };
        round_trip(&un, &mut buf)?;
        request_frame(&Request::UserNames(un), req_id)?;
        let un_r = UserNamesResponse {
            users: List::new(ids.iter().map(|&id| UserEntry { user_id: id, name: n(&to_name) }).collect())?,
        };
        round_trip(&un_r, &mut buf)?;
        response_frame(&Response::UserNames(un_r), req_id)?;
    }

    #[test]
    fn error_replies_round_trip_for_every_opcode_and_status(
        op_index in 0..Opcode::ALL.len(), st_index in 1..Status::ALL.len(), msg in message(), req_id: u64,
    ) {
        let op = Opcode::ALL[op_index];
        let st = Status::ALL[st_index];
        let mut out = Vec::new();
        proto::write_error(&mut out, req_id, op.as_u16(), st, &msg);
        let mut dec = FrameDecoder::new(BODY_LEN_LIMIT);
        let frame = dec.decode(&out).1.expect("valid").expect("whole");
        prop_assert_eq!(frame.header.status, st);
        let expected = Reply::Err(st, ErrorBody { message: Message::new(&msg)? });
        prop_assert_eq!(frame.reply()?, expected);
    }
}

/// One frame of a generated stream: any known opcode, any body bytes, and optionally a flipped
/// bit so recoverable errors are in the stream too.
#[derive(Debug, Clone)]
struct GenFrame {
    op_index: usize,
    response: bool,
    req_id: u64,
    body: Vec<u8>,
    corrupt_at: Option<usize>,
}

fn gen_frame() -> impl Strategy<Value = GenFrame> {
    (
        0..Opcode::ALL.len(),
        any::<bool>(),
        any::<u64>(),
        proptest::collection::vec(any::<u8>(), 0..300),
        proptest::option::weighted(0.1, any::<usize>()),
    )
        .prop_map(|(op_index, response, req_id, body, corrupt_at)| GenFrame {
            op_index,
            response,
            req_id,
            body,
            corrupt_at,
        })
}

fn build_stream(frames: &[GenFrame]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        let start = out.len();
        let head = FrameHead {
            flags: if f.response {
                Flags::RESPONSE
            } else {
                Flags::NONE
            },
            opcode: Opcode::ALL[f.op_index].as_u16(),
            status: 0,
            req_id: f.req_id,
        };
        write_frame_with(&mut out, head, f.body.len(), BODY_LEN_LIMIT, |o| {
            o.extend_from_slice(&f.body)
        })
        .expect("small body");
        if let Some(at) = f.corrupt_at {
            // Flip a bit anywhere but in the framing fields (magic, version, header_len,
            // body_len), so the frame stays framed and the error is the checksum's.
            let len = out.len() - start;
            let candidates: Vec<usize> = (10..len).collect();
            let i = start + candidates[at % candidates.len()];
            out[i] ^= 1 << (at % 8);
        }
    }
    out
}

type Outcome = Result<(Header, Vec<u8>), DecodeError>;

/// Decodes `stream` delivered in chunks of the given sizes (cycled), collecting every outcome.
fn decode_split(stream: &[u8], sizes: &[usize]) -> Vec<Outcome> {
    let mut dec = FrameDecoder::new(BODY_LEN_LIMIT);
    let mut out = Vec::new();
    let mut pos = 0;
    let mut i = 0;
    while pos < stream.len() {
        let size = sizes[i % sizes.len()].max(1).min(stream.len() - pos);
        i += 1;
        let mut input = &stream[pos..pos + size];
        pos += size;
        loop {
            let (used, res) = dec.decode(input);
            assert!(used <= input.len());
            input = &input[used..];
            match res {
                Ok(Some(f)) => out.push(Ok((f.header, f.body.to_vec()))),
                Ok(None) => break,
                Err(e) => out.push(Err(e)),
            }
        }
    }
    assert!(
        dec.is_idle(),
        "a stream of whole frames leaves nothing buffered"
    );
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn any_split_of_a_stream_yields_the_same_frames(
        frames in proptest::collection::vec(gen_frame(), 1..40),
        sizes in proptest::collection::vec(1usize..200, 1..20),
    ) {
        let stream = build_stream(&frames);
        let whole = decode_split(&stream, &[stream.len()]);
        prop_assert_eq!(whole.len(), frames.len());
        for (got, want) in whole.iter().zip(&frames) {
            match got {
                Ok((h, body)) => {
                    prop_assert_eq!(h.req_id, want.req_id);
                    prop_assert_eq!(h.opcode, Opcode::ALL[want.op_index]);
                    prop_assert_eq!(body, &want.body);
                }
                Err(e) => {
                    prop_assert!(want.corrupt_at.is_some(), "clean frame refused: {}", e);
                    let is_checksum = matches!(e, DecodeError::BadChecksum { .. });
                    prop_assert!(is_checksum, "unexpected error {}", e);
                }
            }
        }
        prop_assert_eq!(&decode_split(&stream, &sizes), &whole);
        prop_assert_eq!(&decode_split(&stream, &[1]), &whole);
        prop_assert_eq!(&decode_split(&stream, &[HEADER_LEN - 1, 1, HEADER_LEN + 1]), &whole);
    }
}
