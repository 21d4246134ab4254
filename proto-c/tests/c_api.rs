//! The C API, called as C calls it (through the same `extern "C"` functions the header
//! declares): the incremental decoder fed every split of a stream, every check of section 4
//! answered with its code, every body kind through encode and decode, the memory and null
//! rules.

use std::ffi::CStr;

use nsproto::net::{ns_read_full, ns_write_full};
use nsproto::*;

fn name(p: *const std::ffi::c_char) -> String {
    // SAFETY: the name functions return static NUL-terminated strings.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

fn b(s: &str) -> ns_bytes {
    ns_bytes {
        ptr: s.as_ptr(),
        len: s.len(),
    }
}

/// Encodes with the C API, growing the buffer when told it is too small.
fn encode(f: impl Fn(*mut u8, usize, *mut usize) -> i32) -> Vec<u8> {
    let mut out = vec![0u8; 8];
    let mut written = 0usize;
    let rc = f(out.as_mut_ptr(), out.len(), &mut written);
    if rc == NS_ERR_BUFFER_TOO_SMALL {
        out.resize(written, 0);
        assert_eq!(f(out.as_mut_ptr(), out.len(), &mut written), NS_OK);
    } else {
        assert_eq!(rc, NS_OK, "{}", name(ns_error_name(rc)));
    }
    out.truncate(written);
    out
}

fn request(op: u16, set: impl FnOnce(&mut ns_request_body)) -> ns_request {
    let mut r = ns_request {
        opcode: op,
        body: ns_request_body {
            amount: ns_amount_req { amount: 0 },
        },
    };
    set(&mut r.body);
    r
}

fn encode_request(req_id: u64, r: &ns_request) -> Vec<u8> {
    // SAFETY: `r` and the buffers are valid for the call.
    encode(|o, c, w| unsafe { ns_encode_request(req_id, r, o, c, w) })
}

/// A stream of frames of several kinds and sizes.
fn sample_stream() -> (Vec<u8>, Vec<(u16, u64, usize)>) {
    let text = "x".repeat(3000);
    let reqs = [
        request(NS_OP_HELLO, |b| {
            b.hello = ns_hello_req {
                client: b_static("c"),
            }
        }),
        request(NS_OP_DEPOSIT, |b| b.amount = ns_amount_req { amount: 5 }),
        request(NS_OP_BALANCE, |_| {}),
        request(NS_OP_TRANSFER, |b| {
            b.transfer = ns_transfer_req {
                to_id: 0,
                to_name: b_static("bob"),
                amount: 7,
            }
        }),
        request(NS_OP_CHAT_SEND, |b| {
            b.chat_send = ns_chat_send_req {
                room_id: 1,
                text: ns_bytes {
                    ptr: text.as_ptr(),
                    len: text.len(),
                },
            }
        }),
        request(NS_OP_HEARTBEAT, |b| {
            b.heartbeat = ns_heartbeat_req { client_time_ms: 9 }
        }),
    ];
    let mut stream = Vec::new();
    let mut expect = Vec::new();
    for (i, r) in reqs.iter().enumerate() {
        let f = encode_request(100 + i as u64, r);
        expect.push((r.opcode, 100 + i as u64, f.len() - NS_HEADER_LEN));
        stream.extend_from_slice(&f);
    }
    (stream, expect)
}

fn b_static(s: &'static str) -> ns_bytes {
    b(s)
}

/// Feeds `chunks` to a decoder; returns (opcode, req_id, body_len) of every frame.
fn decode_all(chunks: &[&[u8]]) -> Vec<(u16, u64, usize)> {
    let d = ns_decoder_new(64 << 10);
    assert!(!d.is_null());
    let mut got = Vec::new();
    for chunk in chunks {
        let mut rest: &[u8] = chunk;
        loop {
            let mut used = 0usize;
            let mut f = ns_frame::default();
            // SAFETY: `d` is live, `rest` valid, outputs writable.
            let rc = unsafe { ns_decoder_decode(d, rest.as_ptr(), rest.len(), &mut used, &mut f) };
            rest = &rest[used..];
            match rc {
                1 => {
                    let mut req = request(0, |_| {});
                    // SAFETY: the frame is valid until the next call on `d`.
                    assert_eq!(unsafe { ns_decode_request(&f, &mut req) }, NS_OK);
                    assert_eq!(req.opcode, f.opcode);
                    got.push((f.opcode, f.req_id, f.body_len as usize));
                }
                0 => break,
                e => panic!("{}", name(ns_error_name(e))),
            }
            if rest.is_empty() && rc == 0 {
                break;
            }
        }
    }
    // SAFETY: from ns_decoder_new, not used again.
    unsafe { ns_decoder_free(d) };
    got
}

#[test]
fn the_decoder_gives_the_same_frames_for_every_split_of_a_stream() {
    let (stream, expect) = sample_stream();
    assert_eq!(decode_all(&[&stream]), expect, "all at once");
    let singles: Vec<&[u8]> = stream.chunks(1).collect();
    assert_eq!(decode_all(&singles), expect, "one byte at a time");
    // Every cut into two, and every cut into three at a stride.
    for cut in 0..=stream.len() {
        let (a, b) = stream.split_at(cut);
        assert_eq!(decode_all(&[a, b]), expect, "cut at {cut}");
    }
    for i in (0..stream.len()).step_by(97) {
        for j in (i..stream.len()).step_by(131) {
            let parts = [&stream[..i], &stream[i..j], &stream[j..]];
            assert_eq!(decode_all(&parts), expect, "cuts at {i} and {j}");
        }
    }
}

/// A valid DEPOSIT frame, then `mutate` applied, then the checksum recomputed if `fix_crc`.
fn frame_with(mutate: impl FnOnce(&mut Vec<u8>), fix_crc: bool) -> Vec<u8> {
    let mut f = encode_request(
        7,
        &request(NS_OP_DEPOSIT, |b| b.amount = ns_amount_req { amount: 1 }),
    );
    mutate(&mut f);
    if fix_crc {
        // SAFETY: the header and body are in `f`.
        let crc = unsafe { ns_frame_checksum(f.as_ptr(), f[32..].as_ptr(), f.len() - 32) };
        f[22..26].copy_from_slice(&crc.to_be_bytes());
    }
    f
}

fn parse(f: &[u8]) -> i32 {
    let mut out = ns_frame::default();
    let mut used = 0usize;
    // SAFETY: `f` valid; outputs writable.
    unsafe { ns_frame_parse(f.as_ptr(), f.len(), 1 << 16, &mut out, &mut used) }
}

#[test]
fn every_check_of_section_4_fails_with_its_own_code() {
    assert_eq!(parse(&frame_with(|_| {}, false)), NS_OK);
    let cases: [(&str, Vec<u8>, i32); 10] = [
        ("magic", frame_with(|f| f[0] = 0x41, true), NS_ERR_BAD_MAGIC),
        (
            "version",
            frame_with(|f| f[2] = 2, true),
            NS_ERR_BAD_VERSION,
        ),
        (
            "header_len",
            frame_with(|f| f[5] = 33, true),
            NS_ERR_BAD_HEADER_LEN,
        ),
        (
            "body_len over the limit",
            frame_with(
                |f| f[6..10].copy_from_slice(&(1u32 << 17).to_be_bytes()),
                false,
            ),
            NS_ERR_TOO_LARGE,
        ),
        (
            "checksum",
            frame_with(|f| f[33] ^= 1, false),
            NS_ERR_CHECKSUM,
        ),
        ("reserved", frame_with(|f| f[31] = 1, true), NS_ERR_RESERVED),
        ("flags", frame_with(|f| f[3] = 0x80, true), NS_ERR_BAD_FLAGS),
        (
            "opcode",
            frame_with(|f| f[10..12].copy_from_slice(&[0x7f, 0x7f]), true),
            NS_ERR_UNKNOWN_OPCODE,
        ),
        (
            "status",
            frame_with(
                |f| {
                    f[3] = NS_FLAG_IS_RESPONSE;
                    f[12..14].copy_from_slice(&[0x7f, 0x7f]);
                },
                true,
            ),
            NS_ERR_UNKNOWN_STATUS,
        ),
        (
            "status in a request",
            frame_with(|f| f[13] = 5, true),
            NS_ERR_STATUS_NOT_ZERO,
        ),
    ];
    for (what, f, code) in cases {
        assert_eq!(
            parse(&f),
            code,
            "{what}: got {}",
            name(ns_error_name(parse(&f)))
        );
        assert_ne!(name(ns_error_name(code)), "UNKNOWN");
    }
    let whole = frame_with(|_| {}, false);
    for cut in 0..whole.len() {
        assert_eq!(parse(&whole[..cut]), NS_ERR_INCOMPLETE, "cut at {cut}");
    }
    // The header alone, with its own checks.
    let mut h = ns_header::default();
    assert_eq!(
        // SAFETY: 32 readable bytes; `h` writable.
        unsafe { ns_header_decode(whole.as_ptr(), 1 << 16, &mut h) },
        NS_OK
    );
    assert_eq!(
        (h.magic, h.version, h.header_len, h.opcode, h.req_id),
        (0x4E53, 1, 32, NS_OP_DEPOSIT, 7)
    );
    let mut again = [0u8; 32];
    // SAFETY: `h` readable, 32 writable bytes.
    assert_eq!(unsafe { ns_header_encode(&h, again.as_mut_ptr()) }, NS_OK);
    assert_eq!(&again[..], &whole[..32], "header round trip");
    let bad = frame_with(|f| f[0] = 0, false);
    assert_eq!(
        // SAFETY: as above.
        unsafe { ns_header_decode(bad.as_ptr(), 1 << 16, &mut h) },
        NS_ERR_BAD_MAGIC
    );
    // A decoder that saw a framing error stays failed; a bad checksum skips only that frame.
    let d = ns_decoder_new(1 << 16);
    let mut stream = frame_with(|f| f[33] ^= 1, false);
    stream.extend(frame_with(|_| {}, false));
    let (mut used, mut f) = (0usize, ns_frame::default());
    // SAFETY: `d` live; buffers valid.
    unsafe {
        assert_eq!(
            ns_decoder_decode(d, stream.as_ptr(), stream.len(), &mut used, &mut f),
            NS_ERR_CHECKSUM
        );
        let rest = &stream[used..];
        assert_eq!(
            ns_decoder_decode(d, rest.as_ptr(), rest.len(), &mut used, &mut f),
            1
        );
        assert_eq!(f.req_id, 7);
        let junk = [0u8; 40];
        assert_eq!(
            ns_decoder_decode(d, junk.as_ptr(), junk.len(), &mut used, &mut f),
            NS_ERR_BAD_MAGIC
        );
        assert_eq!(
            ns_decoder_decode(d, rest.as_ptr(), rest.len(), &mut used, &mut f),
            NS_ERR_BAD_MAGIC
        );
        ns_decoder_free(d);
    }
}

#[test]
fn every_response_and_push_kind_round_trips_through_the_c_api() {
    let entries = [
        ns_txn_entry {
            txn_id: 9,
            kind: 3,
            from_id: 1,
            to_id: 2,
            amount: 5,
            balance_after: 10,
            time_ms: 11,
        },
        ns_txn_entry {
            txn_id: 8,
            kind: 1,
            from_id: 0,
            to_id: 1,
            amount: 15,
            balance_after: 15,
            time_ms: 12,
        },
    ];
    let users = [ns_user_entry {
        user_id: 4,
        name: b_static("dora"),
    }];
    let rooms = [ns_room_entry {
        room_id: 2,
        members: 3,
        last_seq: 4,
        name: b_static("lobby"),
    }];
    let messages = [ns_room_message {
        seq: 5,
        sender_id: 4,
        time_ms: 6,
        sender: b_static("dora"),
        text: b_static("hi"),
    }];
    let bodies: Vec<(u16, ns_response_body)> = vec![
        (
            NS_OP_HELLO,
            ns_response_body {
                hello: ns_hello_resp {
                    server: b_static("s"),
                    worker_id: 1,
                    body_len_max: 2,
                    heartbeat_interval_ms: 3,
                    idle_timeout_ms: 4,
                    server_time_ms: 5,
                },
            },
        ),
        (
            NS_OP_LOGIN,
            ns_response_body {
                login: ns_login_resp {
                    salt: b_static("0123456789abcdef"),
                    iterations: 4096,
                    server_nonce: b_static("fedcba9876543210"),
                },
            },
        ),
        (
            NS_OP_LOGOUT,
            ns_response_body {
                balance: ns_balance_resp { balance: 0 },
            },
        ),
        (
            NS_OP_HEARTBEAT,
            ns_response_body {
                heartbeat: ns_heartbeat_resp {
                    client_time_ms: 1,
                    server_time_ms: 2,
                },
            },
        ),
        (
            NS_OP_LOGIN_PROOF,
            ns_response_body {
                login_proof: ns_login_proof_resp {
                    server_signature: [7; 32],
                    user_id: 3,
                    req_id_hw: 4,
                    req_id_window: 32,
                },
            },
        ),
        (
            NS_OP_REGISTER,
            ns_response_body {
                register_: ns_register_resp { user_id: 9 },
            },
        ),
        (
            NS_OP_JOIN_ROOM,
            ns_response_body {
                join_room: ns_join_room_resp {
                    room_id: 1,
                    last_seq: 2,
                    members: 3,
                },
            },
        ),
        (
            NS_OP_LEAVE_ROOM,
            ns_response_body {
                balance: ns_balance_resp { balance: 0 },
            },
        ),
        (
            NS_OP_CHAT_SEND,
            ns_response_body {
                chat_send: ns_chat_send_resp { seq: 77 },
            },
        ),
        (
            NS_OP_DIRECT_SEND,
            ns_response_body {
                direct_send: ns_direct_send_resp { to_user_id: 8 },
            },
        ),
        (
            NS_OP_LIST_USERS,
            ns_response_body {
                list_users: ns_list_users_resp {
                    items: users.as_ptr(),
                    len: users.len(),
                },
            },
        ),
        (
            NS_OP_USER_NAMES,
            ns_response_body {
                user_names: ns_list_users_resp {
                    items: users.as_ptr(),
                    len: users.len(),
                },
            },
        ),
        (
            NS_OP_LIST_ROOMS,
            ns_response_body {
                list_rooms: ns_list_rooms_resp {
                    items: rooms.as_ptr(),
                    len: rooms.len(),
                },
            },
        ),
        (
            NS_OP_ROOM_HISTORY,
            ns_response_body {
                room_history: ns_room_history_resp {
                    last_seq: 5,
                    missed: 1,
                    items: messages.as_ptr(),
                    len: 1,
                },
            },
        ),
        (
            NS_OP_DEPOSIT,
            ns_response_body {
                ledger: ns_ledger_resp {
                    balance: 1,
                    txn_id: 2,
                },
            },
        ),
        (
            NS_OP_WITHDRAW,
            ns_response_body {
                ledger: ns_ledger_resp {
                    balance: 3,
                    txn_id: 4,
                },
            },
        ),
        (
            NS_OP_TRANSFER,
            ns_response_body {
                ledger: ns_ledger_resp {
                    balance: 5,
                    txn_id: 6,
                },
            },
        ),
        (
            NS_OP_BALANCE,
            ns_response_body {
                balance: ns_balance_resp { balance: 42 },
            },
        ),
        (
            NS_OP_TXN_HISTORY,
            ns_response_body {
                txn_history: ns_txn_history_resp {
                    items: entries.as_ptr(),
                    len: 2,
                },
            },
        ),
    ];
    for (op, body) in bodies {
        let resp = ns_response {
            opcode: op,
            status: NS_STATUS_OK,
            req_id: 5,
            error_message: ns_bytes {
                ptr: std::ptr::null(),
                len: 0,
            },
            body,
        };
        // SAFETY: `resp` and its pointers are valid for the call.
        let frame = encode(|o, c, w| unsafe { ns_encode_response(&resp, o, c, w) });
        let mut f = ns_frame::default();
        let mut used = 0;
        assert_eq!(
            // SAFETY: `frame` valid, outputs writable.
            unsafe { ns_frame_parse(frame.as_ptr(), frame.len(), 1 << 16, &mut f, &mut used) },
            NS_OK
        );
        let mut out: *mut ns_response = std::ptr::null_mut();
        assert_eq!(
            // SAFETY: `f` points into `frame`; `out` writable.
            unsafe { ns_decode_response(&f, &mut out) },
            NS_OK,
            "{}",
            name(ns_opcode_name(op))
        );
        // SAFETY: a response the library made.
        let r = unsafe { &*out };
        assert_eq!((r.opcode, r.status, r.req_id), (op, 0, 5));
        // Re-encoding the decoded response gives the same bytes: every field came through.
        // SAFETY: `r` is valid until freed below.
        let again = encode(|o, c, w| unsafe { ns_encode_response(r, o, c, w) });
        assert_eq!(again, frame, "{}", name(ns_opcode_name(op)));
        // SAFETY: from ns_decode_response, freed once.
        unsafe { ns_response_free(out) };
    }
    // An error response carries its status and message.
    let err = ns_response {
        opcode: NS_OP_TRANSFER,
        status: 5,
        req_id: 6,
        error_message: b_static("insufficient funds"),
        body: ns_response_body {
            balance: ns_balance_resp { balance: 0 },
        },
    };
    // SAFETY: as above.
    let frame = encode(|o, c, w| unsafe { ns_encode_response(&err, o, c, w) });
    let (mut f, mut used, mut out) = (ns_frame::default(), 0, std::ptr::null_mut());
    // SAFETY: as above.
    unsafe {
        assert_eq!(
            ns_frame_parse(frame.as_ptr(), frame.len(), 1 << 16, &mut f, &mut used),
            NS_OK
        );
        assert_eq!(ns_decode_response(&f, &mut out), NS_OK);
        let r = &*out;
        assert_eq!(name(ns_status_name(r.status)), "ERR_INSUFFICIENT_FUNDS");
        assert_eq!(
            std::slice::from_raw_parts(r.error_message.ptr, r.error_message.len),
            b"insufficient funds"
        );
        ns_response_free(out);
    }
    let pushes = [
        ns_push {
            opcode: NS_OP_NOTICE,
            body: ns_push_body {
                notice: ns_notice_push {
                    code: 1,
                    text: b_static("bye"),
                },
            },
        },
        ns_push {
            opcode: NS_OP_CHAT_BROADCAST,
            body: ns_push_body {
                chat: ns_chat_push {
                    room_id: 2,
                    message: messages[0],
                },
            },
        },
        ns_push {
            opcode: NS_OP_DIRECT_MESSAGE,
            body: ns_push_body {
                direct: ns_direct_push {
                    from_id: 3,
                    time_ms: 4,
                    from: b_static("eve"),
                    text: b_static("psst"),
                },
            },
        },
        ns_push {
            opcode: NS_OP_MONEY_RECEIVED,
            body: ns_push_body {
                money: ns_money_push {
                    txn_id: 7,
                    from_id: 3,
                    amount: u64::MAX,
                    time_ms: 4,
                    from: b_static("eve"),
                },
            },
        },
        ns_push {
            opcode: NS_OP_CHAT_GAP,
            body: ns_push_body {
                gap: ns_gap_push {
                    room_id: 1,
                    first_seq: 2,
                    missed: 3,
                },
            },
        },
    ];
    for p in &pushes {
        // SAFETY: `p` valid for the call.
        let frame = encode(|o, c, w| unsafe { ns_encode_push(p, o, c, w) });
        let (mut f, mut used, mut out) = (ns_frame::default(), 0, std::ptr::null_mut());
        // SAFETY: as above.
        unsafe {
            assert_eq!(
                ns_frame_parse(frame.as_ptr(), frame.len(), 1 << 16, &mut f, &mut used),
                NS_OK
            );
            assert_eq!(ns_decode_push(&f, &mut out), NS_OK);
            let again = encode(|o, c, w| ns_encode_push(out, o, c, w));
            assert_eq!(again, frame, "{}", name(ns_opcode_name(p.opcode)));
            ns_push_free(out);
        }
    }
}

/// Parses one request frame and decodes its body: the decoder's code and what it filled in.
fn decode_request(frame: &[u8]) -> (i32, ns_request) {
    let (mut f, mut used) = (ns_frame::default(), 0);
    let mut back = request(0, |_| {});
    // SAFETY: buffers valid for the calls.
    unsafe {
        assert_eq!(
            ns_frame_parse(frame.as_ptr(), frame.len(), 1 << 16, &mut f, &mut used),
            NS_OK
        );
        (ns_decode_request(&f, &mut back), back)
    }
}

#[test]
fn every_request_kind_round_trips_and_bad_arguments_are_refused() {
    let key = [3u8; 32];
    let reqs = [
        request(NS_OP_HELLO, |b| {
            b.hello = ns_hello_req {
                client: b_static("c"),
            }
        }),
        request(NS_OP_LOGIN, |b| {
            b.login = ns_login_req {
                username: b_static("al"),
                client_nonce: b_static("0123456789abcdef"),
            }
        }),
        request(NS_OP_LOGOUT, |_| {}),
        request(NS_OP_HEARTBEAT, |b| {
            b.heartbeat = ns_heartbeat_req { client_time_ms: 3 }
        }),
        request(NS_OP_LOGIN_PROOF, |b| {
            b.login_proof = ns_login_proof_req { client_proof: key }
        }),
        request(NS_OP_REGISTER, |b| {
            b.register_ = ns_register_req {
                username: b_static("al"),
                salt: b_static("0123456789abcdef"),
                iterations: 4096,
                stored_key: key,
                server_key: key,
            }
        }),
        request(NS_OP_JOIN_ROOM, |b| {
            b.join_room = ns_join_room_req {
                room: b_static("r"),
            }
        }),
        request(NS_OP_LEAVE_ROOM, |b| {
            b.leave_room = ns_leave_room_req { room_id: 2 }
        }),
        request(NS_OP_CHAT_SEND, |b| {
            b.chat_send = ns_chat_send_req {
                room_id: 2,
                text: b_static("t"),
            }
        }),
        request(NS_OP_DIRECT_SEND, |b| {
            b.direct_send = ns_direct_send_req {
                to: b_static("bo"),
                text: b_static("t"),
            }
        }),
        request(NS_OP_LIST_USERS, |b| {
            b.page = ns_page_req {
                after_id: 1,
                limit: 2,
            }
        }),
        request(NS_OP_LIST_ROOMS, |b| {
            b.page = ns_page_req {
                after_id: 3,
                limit: 4,
            }
        }),
        request(NS_OP_ROOM_HISTORY, |b| {
            b.room_history = ns_room_history_req {
                room_id: 1,
                after_seq: 2,
                limit: 3,
            }
        }),
        request(NS_OP_DEPOSIT, |b| b.amount = ns_amount_req { amount: 1 }),
        request(NS_OP_WITHDRAW, |b| b.amount = ns_amount_req { amount: 2 }),
        request(NS_OP_TRANSFER, |b| {
            b.transfer = ns_transfer_req {
                to_id: 9,
                to_name: ns_bytes {
                    ptr: std::ptr::null(),
                    len: 0,
                },
                amount: 3,
            }
        }),
        request(NS_OP_BALANCE, |_| {}),
        request(NS_OP_TXN_HISTORY, |b| {
            b.txn_history = ns_txn_history_req {
                before_txn_id: 4,
                limit: 5,
            }
        }),
    ];
    for r in &reqs {
        let frame = encode_request(11, r);
        let (code, back) = decode_request(&frame);
        assert_eq!(code, NS_OK);
        assert_eq!(
            encode_request(11, &back),
            frame,
            "{}",
            name(ns_opcode_name(r.opcode))
        );
    }
    // USER_NAMES encodes (a client asks for names) and is the frame the Rust side makes; a
    // C server cannot decode one (it has no users to answer from).
    let ids = [4u32, 9];
    let names = request(NS_OP_USER_NAMES, |b| {
        b.user_names = ns_user_names_req {
            ids: ids.as_ptr(),
            len: ids.len(),
        }
    });
    let frame = encode_request(12, &names);
    let want = proto::body::UserNamesRequest {
        ids: proto::codec::List::new(ids.to_vec()).expect("two ids"),
    };
    let mut rust = Vec::new();
    proto::write_request(
        &mut rust,
        12,
        &proto::Request::UserNames(want),
        proto::BODY_LEN_LIMIT,
    )
    .expect("encode");
    assert_eq!(frame, rust);
    assert_eq!(decode_request(&frame).0, NS_ERR_UNKNOWN_OPCODE);
    // Out-of-bounds fields, unknown opcodes, nulls, a small buffer: codes, never a crash.
    let long_name = "n".repeat(33);
    let room = b(&long_name);
    let bad = request(NS_OP_JOIN_ROOM, |x| x.join_room = ns_join_room_req { room });
    let mut buf = [0u8; 256];
    let mut w = 0usize;
    // SAFETY: every pointer valid (or deliberately null where the API checks).
    unsafe {
        assert_eq!(
            ns_encode_request(1, &bad, buf.as_mut_ptr(), buf.len(), &mut w),
            NS_ERR_INVALID
        );
        let unknown = request(0x7777, |_| {});
        assert_eq!(
            ns_encode_request(1, &unknown, buf.as_mut_ptr(), buf.len(), &mut w),
            NS_ERR_UNKNOWN_OPCODE
        );
        let push_op = request(NS_OP_NOTICE, |_| {});
        assert_eq!(
            ns_encode_request(1, &push_op, buf.as_mut_ptr(), buf.len(), &mut w),
            NS_ERR_UNKNOWN_OPCODE
        );
        assert_eq!(
            ns_encode_request(1, std::ptr::null(), buf.as_mut_ptr(), buf.len(), &mut w),
            NS_ERR_NULL
        );
        let null_text = request(NS_OP_CHAT_SEND, |b| {
            b.chat_send = ns_chat_send_req {
                room_id: 1,
                text: ns_bytes {
                    ptr: std::ptr::null(),
                    len: 5,
                },
            }
        });
        assert_eq!(
            ns_encode_request(1, &null_text, buf.as_mut_ptr(), buf.len(), &mut w),
            NS_ERR_NULL
        );
        let dep = request(NS_OP_DEPOSIT, |b| b.amount = ns_amount_req { amount: 1 });
        assert_eq!(
            ns_encode_request(1, &dep, buf.as_mut_ptr(), 10, &mut w),
            NS_ERR_BUFFER_TOO_SMALL
        );
        assert_eq!(w, 40, "the size needed");
        assert_eq!(
            ns_decoder_decode(
                std::ptr::null_mut(),
                buf.as_ptr(),
                1,
                &mut w,
                std::ptr::null_mut()
            ),
            NS_ERR_NULL
        );
        ns_response_free(std::ptr::null_mut());
        ns_push_free(std::ptr::null_mut());
        ns_decoder_free(std::ptr::null_mut());
    }
    assert_eq!(name(ns_opcode_name(NS_OP_TRANSFER)), "TRANSFER");
    assert_eq!(name(ns_status_name(0x18)), "ERR_STORAGE_UNAVAILABLE");
    assert_eq!(name(ns_status_name(0x7777)), "UNKNOWN");
    assert_eq!(name(ns_error_name(NS_ERR_PANIC)), "NS_ERR_PANIC");
    assert_eq!(ns_abi_version(), NS_ABI_VERSION);
    assert_eq!(
        // SAFETY: a static byte string.
        unsafe { ns_crc32(0, b"123456789".as_ptr(), 9) },
        0xCBF4_3926,
        "CRC-32 check value"
    );
}

extern "C" fn on_signal(_: libc::c_int) {}

#[test]
fn read_full_and_write_full_move_every_byte_through_partial_io_and_signals() {
    use std::os::fd::AsRawFd;
    use std::os::unix::thread::JoinHandleExt;
    // A handler without SA_RESTART: a signal makes a blocked poll or read return EINTR.
    // SAFETY: the handler does nothing; installing it reads nothing else.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as usize;
        libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
    }
    let (a, b) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    let data: Vec<u8> = (0..(4u32 << 20)).map(|i| (i * 7 + i / 251) as u8).collect();
    let len = data.len();
    let fd_b = b.as_raw_fd();
    let reader = std::thread::spawn(move || {
        let mut got = vec![0u8; len];
        let mut done = 0usize;
        // SAFETY: `got` has `len` writable bytes.
        let rc = unsafe { ns_read_full(fd_b, got.as_mut_ptr(), len, 10_000, &mut done) };
        (rc, done, got)
    });
    // Signals while the reader waits, before anything is written.
    for _ in 0..5 {
        std::thread::sleep(std::time::Duration::from_millis(20));
        // SAFETY: a live thread of this process.
        unsafe { libc::pthread_kill(reader.as_pthread_t(), libc::SIGUSR1) };
    }
    let mut done = 0usize;
    // 4 MiB through a socket buffer of a few hundred KiB: many partial writes and reads.
    // SAFETY: `data` readable for its length.
    let rc = unsafe { ns_write_full(a.as_raw_fd(), data.as_ptr(), len, 10_000, &mut done) };
    assert_eq!((rc, done), (NS_OK, len));
    let (rc, got_len, got) = reader.join().expect("reader");
    assert_eq!((rc, got_len), (NS_OK, len));
    assert!(got == data, "every byte, in order");
    drop(b);
    // The peer closes halfway: NS_ERR_CLOSED with what arrived; nothing arriving: a timeout.
    let (c, d) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    std::io::Write::write_all(&mut &c, &[1, 2, 3]).expect("write");
    drop(c);
    let mut buf = [0u8; 8];
    // SAFETY: `buf` writable.
    let rc = unsafe { ns_read_full(d.as_raw_fd(), buf.as_mut_ptr(), 8, 1000, &mut done) };
    assert_eq!((rc, done, &buf[..3]), (NS_ERR_CLOSED, 3, &[1u8, 2, 3][..]));
    // A timeout of 0 still takes bytes that are already there.
    let (g, h) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    std::io::Write::write_all(&mut &g, &[4, 5]).expect("write");
    // SAFETY: `buf` writable.
    let rc = unsafe { ns_read_full(h.as_raw_fd(), buf.as_mut_ptr(), 2, 0, &mut done) };
    assert_eq!((rc, done, &buf[..2]), (NS_OK, 2, &[4u8, 5][..]));
    let (_e, f) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    // SAFETY: as above.
    let rc = unsafe { ns_read_full(f.as_raw_fd(), buf.as_mut_ptr(), 8, 50, &mut done) };
    assert_eq!((rc, done), (NS_ERR_TIMEOUT, 0));
}
