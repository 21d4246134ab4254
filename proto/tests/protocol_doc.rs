//! `docs/PROTOCOL.md` against the code: every hex dump in it decodes to one valid frame whose
//! body re-encodes to the same bytes, the annotated dumps agree with the plain ones, the sample
//! frames the code makes are the ones the document shows, and the SCRAM test vector holds.

use std::collections::BTreeMap;
use std::path::Path;

use proto::body::ErrorBody;
use proto::scram::{auth_message, server_signature_of, verify_client_proof, ClientSecret};
use proto::{Field, FrameDecoder, FrameKind, Opcode, Reply, Status, BODY_LEN_LIMIT, HEADER_LEN};

fn document() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/PROTOCOL.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The fenced blocks whose info string starts with `kind`: (label, lines).
fn blocks(doc: &str, kind: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut current: Option<(String, Vec<String>)> = None;
    for line in doc.lines() {
        if let Some((label, lines)) = current.as_mut() {
            if line.trim_start().starts_with("```") {
                out.push((std::mem::take(label), std::mem::take(lines)));
                current = None;
            } else {
                lines.push(line.to_string());
            }
        } else if let Some(info) = line.trim_start().strip_prefix("```") {
            let mut words = info.split_whitespace();
            if words.next() == Some(kind) {
                current = Some((words.next().unwrap_or("").to_string(), Vec::new()));
            }
        }
    }
    assert!(current.is_none(), "unterminated ```{kind} block");
    out
}

fn hex_byte(token: &str) -> Option<u8> {
    if token.len() == 2 {
        u8::from_str_radix(token, 16).ok()
    } else {
        None
    }
}

fn parse_hex(s: &str) -> Vec<u8> {
    assert!(s.len() % 2 == 0, "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digits"))
        .collect()
}

/// The plain dumps: label → frame bytes.
fn hex_dumps(doc: &str) -> BTreeMap<String, Vec<u8>> {
    let mut map = BTreeMap::new();
    for (label, lines) in blocks(doc, "hex") {
        let bytes: Vec<u8> = lines
            .iter()
            .flat_map(|l| l.split_whitespace())
            .map(|t| hex_byte(t).unwrap_or_else(|| panic!("{label}: {t:?} is not a hex byte")))
            .collect();
        // A second sample of one opcode is kept as `label#2`; the first keeps the plain label.
        let mut key = label.clone();
        let mut n = 1;
        while map.contains_key(&key) {
            n += 1;
            key = format!("{label}#{n}");
        }
        map.insert(key, bytes);
    }
    map
}

/// Checks one dump is exactly one valid frame of the kind and opcode its label names, and that
/// its body decodes and re-encodes to the same bytes.
fn check_frame(label: &str, bytes: &[u8]) {
    let mut dec = FrameDecoder::new(BODY_LEN_LIMIT);
    let (used, res) = dec.decode(bytes);
    let frame = res
        .unwrap_or_else(|e| panic!("{label}: {e}"))
        .unwrap_or_else(|| panic!("{label}: incomplete frame"));
    assert_eq!(used, bytes.len(), "{label}: bytes after the frame");
    let (kind, op_name) = label
        .split_once('-')
        .unwrap_or_else(|| panic!("label {label} is not KIND-OPCODE"));
    let body = frame.body;
    let reencoded = match (kind, frame.header.kind()) {
        ("request", FrameKind::Request) => {
            let req = frame.request().unwrap_or_else(|e| panic!("{label}: {e}"));
            assert_eq!(req.opcode().name(), op_name, "{label}: opcode");
            let mut v = Vec::new();
            req.write(&mut v);
            v
        }
        ("response", FrameKind::Response) => match frame.reply() {
            Ok(Reply::Ok(resp)) => {
                assert_eq!(resp.opcode().name(), op_name, "{label}: opcode");
                let mut v = Vec::new();
                resp.write(&mut v);
                v
            }
            other => panic!("{label}: {other:?}"),
        },
        ("push", FrameKind::Push) => {
            let push = frame.push().unwrap_or_else(|e| panic!("{label}: {e}"));
            assert_eq!(push.opcode().name(), op_name, "{label}: opcode");
            let mut v = Vec::new();
            push.write(&mut v);
            v
        }
        ("error", FrameKind::Response) => {
            assert_ne!(
                frame.header.status,
                Status::Ok,
                "{label}: error with status OK"
            );
            ErrorBody::decode(body)
                .unwrap_or_else(|e| panic!("{label}: {e}"))
                .to_vec()
        }
        (k, actual) => panic!("{label}: labelled {k}, but the frame is a {actual:?}"),
    };
    assert_eq!(
        reencoded, body,
        "{label}: body does not re-encode to the same bytes"
    );
}

#[test]
fn every_hex_dump_is_a_valid_frame_that_round_trips() {
    let doc = document();
    let dumps = hex_dumps(&doc);
    for (label, bytes) in &dumps {
        let label = label.split('#').next().expect("split yields one item");
        if label == "error-unknown-opcode" {
            // Its opcode is unknown on purpose: the decoder refuses it, with the header intact.
            let err = FrameDecoder::new(BODY_LEN_LIMIT)
                .decode(bytes)
                .1
                .expect_err("unknown opcode");
            assert_eq!(err.status(), Status::ErrUnknownOpcode);
            let header = err.header().expect("header kept");
            assert_eq!(header.status, Status::ErrUnknownOpcode.as_u16());
            ErrorBody::decode(&bytes[HEADER_LEN..]).expect("error body");
            continue;
        }
        check_frame(label, bytes);
    }
    // The frames the issue and a client writer need most are there.
    for needed in [
        "request-HELLO",
        "request-LOGIN",
        "request-TRANSFER",
        "response-TRANSFER",
        "error-WITHDRAW",
        "push-CHAT_BROADCAST",
    ] {
        assert!(
            dumps.contains_key(needed),
            "PROTOCOL.md lacks a {needed} dump"
        );
    }
}

#[test]
fn the_document_shows_the_frames_the_code_makes() {
    let doc = document();
    let shown: Vec<(String, Vec<u8>)> = blocks(&doc, "hex")
        .into_iter()
        .map(|(label, lines)| {
            let bytes = lines
                .iter()
                .flat_map(|l| l.split_whitespace())
                .filter_map(hex_byte)
                .collect();
            (label, bytes)
        })
        .collect();
    let made = proto::fuzz::sample_frames();
    assert_eq!(
        shown, made,
        "docs/PROTOCOL.md section 12.2 is stale: regenerate it with \
         `cargo run -p proto --example frames` (and the fuzz seeds with `-- --seeds fuzz/seeds`)"
    );
    // Every opcode appears in at least one dump.
    for op in Opcode::ALL {
        assert!(
            shown
                .iter()
                .any(|(l, _)| l.ends_with(&format!("-{}", op.name()))),
            "no dump for {op}"
        );
    }
}

#[test]
fn annotated_dumps_agree_with_their_offsets_and_the_plain_dumps() {
    let doc = document();
    let dumps = hex_dumps(&doc);
    let annotated = blocks(&doc, "annotated");
    assert!(
        annotated.len() >= 2,
        "the annotated TRANSFER pair is missing"
    );
    for (label, lines) in annotated {
        let mut bytes = Vec::new();
        for line in lines.iter().filter(|l| !l.trim().is_empty()) {
            let mut tokens = line.split_whitespace();
            let first = tokens.next().expect("non-empty line");
            let Ok(offset) = first.parse::<usize>() else {
                continue; // the column titles
            };
            assert_eq!(offset, bytes.len(), "{label}: offset {offset} is wrong");
            bytes.extend(tokens.map_while(hex_byte));
        }
        assert_eq!(
            Some(&bytes),
            dumps.get(&label),
            "{label}: the annotated bytes differ from the hex dump"
        );
    }
}

#[test]
fn the_scram_test_vector_holds() {
    let doc = document();
    let vectors = blocks(&doc, "scram-vector");
    assert_eq!(vectors.len(), 1, "one SCRAM vector expected");
    let fields: BTreeMap<String, String> = vectors[0]
        .1
        .iter()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let get = |k: &str| {
        fields
            .get(k)
            .unwrap_or_else(|| panic!("vector lacks {k}"))
            .clone()
    };
    let salt = parse_hex(&get("salt"));
    let iterations: u32 = get("iterations").parse().expect("a number");
    let client_nonce = parse_hex(&get("client_nonce"));
    let server_nonce = parse_hex(&get("server_nonce"));
    let secret = ClientSecret::derive(get("password").as_bytes(), &salt, iterations);
    let stored = secret.stored();
    assert_eq!(stored.stored_key.to_vec(), parse_hex(&get("stored_key")));
    assert_eq!(stored.server_key.to_vec(), parse_hex(&get("server_key")));
    let am = auth_message(
        &get("username"),
        &client_nonce,
        &server_nonce,
        &salt,
        iterations,
    );
    assert_eq!(am, parse_hex(&get("auth_message")));
    let proof = secret.proof(&am);
    assert_eq!(proof.to_vec(), parse_hex(&get("client_proof")));
    assert!(verify_client_proof(&stored.stored_key, &am, &proof));
    let sig = server_signature_of(&stored.server_key, &am);
    assert_eq!(sig.to_vec(), parse_hex(&get("server_signature")));
}

#[test]
fn the_status_and_opcode_tables_list_every_code() {
    let doc = document();
    for op in Opcode::ALL {
        let row = format!("| `0x{:04X}` | `{}` |", op.as_u16(), op.name());
        assert!(doc.contains(&row), "opcode table lacks {row}");
        assert!(
            doc.contains(&format!("`{}` 0x{:04X}", op.name(), op.as_u16()))
                || doc.contains(&format!("`{}` 0x{:04X} and", op.name(), op.as_u16()))
                || doc.contains(&format!("and `{}` 0x{:04X}", op.name(), op.as_u16())),
            "no section for {op}"
        );
    }
    for st in Status::ALL {
        let row = format!("| `0x{:04X}` | `{}` |", st.as_u16(), st.name());
        assert!(doc.contains(&row), "status table lacks {row}");
    }
}
