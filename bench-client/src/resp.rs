//! RESP, the protocol of Redis and the servers compatible with it (RESP2 and the RESP3 types a
//! server sends after `HELLO 3`), as much as the load generator needs: commands encoded as
//! arrays of bulk strings, replies and pushes parsed in place from the bytes read.
//!
//! Why not a crate: `redis-protocol` (the best kept one) decodes a slice only into owned frames
//! (a `Vec` or `Bytes` per bulk string), its zero-copy path wants `bytes::Bytes` buffers; `resp-rs`
//! is zero-copy only over `Bytes` too. The load loop reads into one plain buffer per thread and
//! must not pay an allocation per reply (its CPU per request is compared with the NS mode's),
//! so this parser borrows from the buffer and allocates nothing: an aggregate (a script's
//! `{balance, txn}`, a push) is checked whole when parsed and its elements are parsed again,
//! in place, by whoever iterates them ([`Items`]).
//!
//! Limits, checked before anything is allocated or waited for: bulk strings up to 512 MiB
//! (Redis's `proto-max-bulk-len`), aggregates up to 1 Mi elements, nesting 16 deep. Streamed
//! RESP3 types (`$?`, `*?`) are refused: no Redis command answers with them.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Longest bulk string accepted.
pub const BULK_LIMIT: usize = 512 << 20;
/// Most elements of one aggregate.
pub const AGGREGATE_LIMIT: usize = 1 << 20;
/// Deepest nesting.
pub const DEPTH_LIMIT: usize = 16;

/// One parsed reply or push, borrowing its strings from the input.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    /// `+OK`: a simple string.
    Simple(&'a [u8]),
    /// `-ERR ...` or a RESP3 blob error `!`.
    Error(&'a [u8]),
    /// `:42`.
    Int(i64),
    /// `$3\r\nabc` (and RESP3's verbatim string `=`, its `txt:` prefix kept).
    Bulk(&'a [u8]),
    /// `$-1`, `*-1`, RESP3 `_`.
    Null,
    /// RESP3 `#t` / `#f`.
    Bool(bool),
    /// RESP3 double `,` and big number `(`, as their text.
    Number(&'a [u8]),
    /// `*`, RESP3 set `~`.
    Array(Items<'a>),
    /// RESP3 map `%`, as key, value, key, value, ...
    Map(Items<'a>),
    /// RESP3 push `>`: what a server sends unasked (a published message).
    Push(Items<'a>),
}

/// The elements of an aggregate: already checked to be `count` complete values, parsed again
/// (without allocating) as they are iterated.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Items<'a> {
    count: usize,
    bytes: &'a [u8],
    depth: usize,
}

impl<'a> Items<'a> {
    /// How many elements.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The elements, in order.
    pub fn iter(&self) -> impl Iterator<Item = Value<'a>> + 'a {
        let (bytes, depth) = (self.bytes, self.depth);
        let mut at = 0;
        (0..self.count).map_while(move |_| value(bytes, &mut at, depth).ok().flatten())
    }

    /// The first element.
    pub fn first(&self) -> Option<Value<'a>> {
        self.iter().next()
    }

    /// The elements in a vector (for tests and setup, not the load loop).
    pub fn to_vec(&self) -> Vec<Value<'a>> {
        self.iter().collect()
    }
}

impl std::fmt::Debug for Items<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl Value<'_> {
    /// The error's first word (`ERR`, `NOSCRIPT`, `INSUFFICIENT_FUNDS`), for counting errors.
    pub fn error_code(&self) -> Option<&[u8]> {
        match self {
            Value::Error(e) => Some(e.split(|&b| b == b' ').next().unwrap_or(e)),
            _ => None,
        }
    }

    /// The integer, also from a bulk string of digits (GET of a counter).
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bulk(b) => std::str::from_utf8(b).ok()?.parse().ok(),
            _ => None,
        }
    }
}

/// Why bytes are not RESP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RespError {
    /// A type byte RESP does not have.
    UnknownType(u8),
    /// A length or integer that is not a number, or a line not ended by CRLF.
    BadNumber,
    /// A bulk string not followed by CRLF.
    BadTerminator,
    /// Over [`BULK_LIMIT`], [`AGGREGATE_LIMIT`] or [`DEPTH_LIMIT`], or a negative length other
    /// than -1.
    TooLarge,
    /// A streamed RESP3 type.
    Streamed,
}

impl std::fmt::Display for RespError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RespError::UnknownType(b) => write!(f, "unknown RESP type byte 0x{b:02x}"),
            RespError::BadNumber => f.write_str("a RESP length or integer is not a number"),
            RespError::BadTerminator => f.write_str("a RESP bulk string lacks its CRLF"),
            RespError::TooLarge => f.write_str("a RESP length is over the limit or negative"),
            RespError::Streamed => f.write_str("streamed RESP3 types are not supported"),
        }
    }
}

impl std::error::Error for RespError {}

/// Parses one value from the start of `buf`: `Ok(None)` when `buf` holds only part of it,
/// else the value and the bytes it took.
pub fn parse(buf: &[u8]) -> Result<Option<(Value<'_>, usize)>, RespError> {
    let mut at = 0;
    Ok(value(buf, &mut at, 0)?.map(|v| (v, at)))
}

/// The line starting at `*at` (without CRLF); `None` if its CRLF has not arrived.
fn line<'a>(buf: &'a [u8], at: &mut usize) -> Result<Option<&'a [u8]>, RespError> {
    let rest = &buf[*at..];
    let Some(cr) = rest.iter().position(|&b| b == b'\r') else {
        return Ok(None);
    };
    match rest.get(cr + 1) {
        None => Ok(None),
        Some(b'\n') => {
            *at += cr + 2;
            Ok(Some(&rest[..cr]))
        }
        Some(_) => Err(RespError::BadNumber),
    }
}

fn int(s: &[u8]) -> Result<i64, RespError> {
    let (neg, digits) = match s.split_first() {
        Some((b'-', d)) => (true, d),
        Some((b'+', d)) => (false, d),
        _ => (false, s),
    };
    if digits.is_empty() || digits.len() > 19 {
        return Err(RespError::BadNumber);
    }
    let mut v: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return Err(RespError::BadNumber);
        }
        v = v
            .checked_mul(10)
            .and_then(|v| v.checked_add(i64::from(d - b'0')))
            .ok_or(RespError::BadNumber)?;
    }
    Ok(if neg { -v } else { v })
}

/// A length: -1 (null) or 0..=limit.
fn length(s: &[u8], limit: usize) -> Result<Option<usize>, RespError> {
    if s == b"?" {
        return Err(RespError::Streamed);
    }
    match int(s)? {
        -1 => Ok(None),
        n if n < 0 || n as u64 > limit as u64 => Err(RespError::TooLarge),
        n => Ok(Some(n as usize)),
    }
}

fn value<'a>(buf: &'a [u8], at: &mut usize, depth: usize) -> Result<Option<Value<'a>>, RespError> {
    if depth > DEPTH_LIMIT {
        return Err(RespError::TooLarge);
    }
    let start = *at;
    let Some(&kind) = buf.get(start) else {
        return Ok(None);
    };
    *at += 1;
    let Some(head) = line(buf, at)? else {
        *at = start;
        return Ok(None);
    };
    let v = match kind {
        b'+' => Value::Simple(head),
        b'-' => Value::Error(head),
        b':' => Value::Int(int(head)?),
        b',' | b'(' => Value::Number(head),
        b'_' => Value::Null,
        b'#' => match head {
            b"t" => Value::Bool(true),
            b"f" => Value::Bool(false),
            _ => return Err(RespError::BadNumber),
        },
        b'$' | b'=' | b'!' => {
            let Some(n) = length(head, BULK_LIMIT)? else {
                return Ok(Some(Value::Null));
            };
            let Some(end) = at.checked_add(n).filter(|&e| e + 2 <= buf.len()) else {
                *at = start;
                return Ok(None);
            };
            if &buf[end..end + 2] != b"\r\n" {
                return Err(RespError::BadTerminator);
            }
            let s = &buf[*at..end];
            *at = end + 2;
            if kind == b'!' {
                Value::Error(s)
            } else {
                Value::Bulk(s)
            }
        }
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            let Some(n) = length(head, AGGREGATE_LIMIT)? else {
                return Ok(Some(Value::Null));
            };
            let n = if matches!(kind, b'%' | b'|') {
                n * 2
            } else {
                n
            };
            let first = *at;
            for _ in 0..n {
                if value(buf, at, depth + 1)?.is_none() {
                    *at = start;
                    return Ok(None);
                }
            }
            let items = Items {
                count: n,
                bytes: &buf[first..*at],
                depth: depth + 1,
            };
            match kind {
                b'>' => Value::Push(items),
                b'%' => Value::Map(items),
                // An attribute describes the reply after it: the reply is what counts.
                b'|' => match value(buf, at, depth + 1)? {
                    Some(v) => v,
                    None => {
                        *at = start;
                        return Ok(None);
                    }
                },
                _ => Value::Array(items),
            }
        }
        other => return Err(RespError::UnknownType(other)),
    };
    Ok(Some(v))
}

/// Appends a command, an array of bulk strings: `*N\r\n$len\r\narg\r\n...`.
pub fn write_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    let _ = write!(out, "*{}\r\n", args.len());
    for a in args {
        write_bulk(out, a);
    }
}

/// Appends one bulk string.
pub fn write_bulk(out: &mut Vec<u8>, arg: &[u8]) {
    let _ = write!(out, "${}\r\n", arg.len());
    out.extend_from_slice(arg);
    out.extend_from_slice(b"\r\n");
}

/// Parses values out of a byte stream in any split; keeps at most one cut value's bytes.
#[derive(Debug, Default)]
pub struct Decoder {
    pending: Vec<u8>,
}

impl Decoder {
    /// A decoder with nothing buffered.
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Hands every complete value in `pending ++ input` to `each`, in order, and keeps the
    /// rest for the next call. Stops at the first error (`each`'s or the parser's).
    pub fn feed<E: From<RespError>>(
        &mut self,
        input: &[u8],
        mut each: impl FnMut(Value<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        if self.pending.is_empty() {
            let used = drain(input, &mut each)?;
            self.pending.extend_from_slice(&input[used..]);
        } else {
            self.pending.extend_from_slice(input);
            let used = drain(&self.pending, &mut each)?;
            self.pending.drain(..used);
        }
        Ok(())
    }
}

fn drain<E: From<RespError>>(
    buf: &[u8],
    each: &mut impl FnMut(Value<'_>) -> Result<(), E>,
) -> Result<usize, E> {
    let mut used = 0;
    while let Some((v, n)) = parse(&buf[used..])? {
        used += n;
        each(v)?;
    }
    Ok(used)
}

/// A blocking RESP connection for setup and tests: one command, one reply.
#[derive(Debug)]
pub struct Conn {
    stream: crate::Stream,
    buf: Vec<u8>,
}

impl Conn {
    /// Connects (and sets a read timeout, so a silent server is an error, not a hang).
    /// Over TLS when `tls` is given (`redis-server --tls-port`).
    pub fn connect(
        addr: std::net::SocketAddr,
        timeout: Duration,
        tls: Option<&crate::ClientTls>,
    ) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let stream = match tls {
            Some(tls) => crate::Stream::tls(stream, tls)?,
            None => crate::Stream::Plain(stream),
        };
        Ok(Conn {
            stream,
            buf: Vec::new(),
        })
    }

    /// Sends one command and hands the next value that arrives (its reply, or for SUBSCRIBE
    /// under RESP3 the push that confirms it) to `f`.
    pub fn call<T>(
        &mut self,
        args: &[&[u8]],
        f: impl FnOnce(&Value<'_>) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let mut out = Vec::new();
        write_command(&mut out, args);
        self.stream.write_all(&out)?;
        self.next(f)
    }

    /// Hands the next value that arrives to `f`.
    pub fn next<T>(
        &mut self,
        f: impl FnOnce(&Value<'_>) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some((v, n)) = parse(&self.buf)? {
                let r = f(&v);
                self.buf.drain(..n);
                return r;
            }
            let got = self.stream.read(&mut chunk)?;
            anyhow::ensure!(got > 0, "the server closed the connection");
            self.buf.extend_from_slice(&chunk[..got]);
        }
    }

    /// A command whose reply must not be an error; the reply's integer if it has one.
    pub fn ok(&mut self, args: &[&[u8]]) -> anyhow::Result<Option<i64>> {
        self.call(args, |v| match v {
            Value::Error(e) => anyhow::bail!(
                "{} answered {}",
                String::from_utf8_lossy(args.first().copied().unwrap_or_default()),
                String::from_utf8_lossy(e)
            ),
            v => Ok(v.as_int()),
        })
    }

    /// The socket, for the event loop (anything already buffered must have been consumed).
    pub fn into_stream(self) -> anyhow::Result<crate::Stream> {
        anyhow::ensure!(
            self.buf.is_empty(),
            "unread bytes left on a RESP connection"
        );
        self.stream.tcp().set_read_timeout(None)?;
        Ok(self.stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(b: &[u8]) -> Value<'_> {
        let (v, n) = parse(b).expect("valid").expect("complete");
        assert_eq!(
            n,
            b.len(),
            "took every byte of {:?}",
            String::from_utf8_lossy(b)
        );
        v
    }

    #[test]
    fn every_reply_type_parses_to_what_it_says() {
        assert_eq!(one(b"+PONG\r\n"), Value::Simple(b"PONG"));
        assert_eq!(
            one(b"-ERR unknown command\r\n"),
            Value::Error(b"ERR unknown command")
        );
        assert_eq!(one(b"-ERR x\r\n").error_code(), Some(&b"ERR"[..]));
        assert_eq!(one(b":-42\r\n"), Value::Int(-42));
        assert_eq!(one(b":9223372036854775807\r\n"), Value::Int(i64::MAX));
        assert_eq!(one(b"$7\r\n1000000\r\n").as_int(), Some(1_000_000));
        assert_eq!(one(b"$0\r\n\r\n"), Value::Bulk(b""));
        assert_eq!(one(b"$4\r\na\r\nb\r\n"), Value::Bulk(b"a\r\nb"));
        assert_eq!(one(b"$-1\r\n"), Value::Null);
        assert_eq!(one(b"*-1\r\n"), Value::Null);
        assert_eq!(one(b"_\r\n"), Value::Null);
        assert_eq!(one(b"#t\r\n"), Value::Bool(true));
        assert_eq!(one(b",3.14\r\n"), Value::Number(b"3.14"));
        assert_eq!(
            one(b"(12345678901234567890\r\n"),
            Value::Number(b"12345678901234567890")
        );
        assert_eq!(one(b"=8\r\ntxt:abcd\r\n"), Value::Bulk(b"txt:abcd"));
        assert_eq!(one(b"!5\r\nOOPS!\r\n"), Value::Error(b"OOPS!"));
        assert_eq!(
            items(one(b"*2\r\n:999999\r\n:17\r\n")),
            vec![Value::Int(999_999), Value::Int(17)]
        );
        assert!(items(one(b"*0\r\n")).is_empty());
        let push = one(b">3\r\n$7\r\nmessage\r\n$2\r\nr1\r\n$2\r\nhi\r\n");
        assert!(matches!(push, Value::Push(_)));
        assert_eq!(
            items(push),
            vec![
                Value::Bulk(b"message"),
                Value::Bulk(b"r1"),
                Value::Bulk(b"hi")
            ]
        );
        let map = one(b"%1\r\n+proto\r\n:3\r\n");
        assert!(matches!(map, Value::Map(_)));
        assert_eq!(items(map), vec![Value::Simple(b"proto"), Value::Int(3)]);
        assert_eq!(items(one(b"~1\r\n:1\r\n")), vec![Value::Int(1)]);
        // An attribute is skipped; the reply after it is the value.
        assert_eq!(one(b"|1\r\n+ttl\r\n:3\r\n:7\r\n"), Value::Int(7));
        let nested = items(one(b"*2\r\n*1\r\n+a\r\n$-1\r\n"));
        assert_eq!(items(nested[0].clone()), vec![Value::Simple(b"a")]);
        assert_eq!(nested[1], Value::Null);
        assert_eq!(format!("{nested:?}"), "[Array([Simple([97])]), Null]");
    }

    /// An aggregate's elements.
    fn items(v: Value<'_>) -> Vec<Value<'_>> {
        match v {
            Value::Array(i) | Value::Map(i) | Value::Push(i) => i.to_vec(),
            other => panic!("not an aggregate: {other:?}"),
        }
    }

    #[test]
    fn every_cut_of_a_stream_gives_the_same_values_in_order() {
        let stream: &[u8] = b"+PONG\r\n$7\r\n1000000\r\n*2\r\n:5\r\n:6\r\n>3\r\n$7\r\nmessage\r\n$2\r\nr1\r\n$5\r\nt=1|x\r\n-INSUFFICIENT_FUNDS\r\n:0\r\n";
        let render = |v: Value<'_>, out: &mut Vec<String>| -> Result<(), RespError> {
            out.push(format!("{v:?}"));
            Ok(())
        };
        let mut whole = Vec::new();
        Decoder::new()
            .feed(stream, |v| render(v, &mut whole))
            .expect("whole");
        assert_eq!(whole.len(), 6, "{whole:?}");
        for a in 0..=stream.len() {
            for b in a..=stream.len() {
                let mut d = Decoder::new();
                let mut got = Vec::new();
                for part in [&stream[..a], &stream[a..b], &stream[b..]] {
                    d.feed(part, |v| render(v, &mut got)).expect("cut");
                }
                assert_eq!(got, whole, "cut at {a} and {b}");
                assert!(d.pending.is_empty());
            }
        }
    }

    #[test]
    fn what_is_not_resp_is_an_error_and_what_is_cut_waits() {
        assert_eq!(parse(b"?x\r\n"), Err(RespError::UnknownType(b'?')));
        assert_eq!(parse(b":12a\r\n"), Err(RespError::BadNumber));
        assert_eq!(parse(b":\r\n"), Err(RespError::BadNumber));
        assert_eq!(
            parse(b":99999999999999999999\r\n"),
            Err(RespError::BadNumber)
        );
        assert_eq!(parse(b"+OK\rx"), Err(RespError::BadNumber));
        assert_eq!(parse(b"$3\r\nabcd\r\n"), Err(RespError::BadTerminator));
        assert_eq!(parse(b"$-2\r\n"), Err(RespError::TooLarge));
        assert_eq!(parse(b"$536870913\r\n"), Err(RespError::TooLarge));
        assert_eq!(parse(b"*1048577\r\n"), Err(RespError::TooLarge));
        assert_eq!(parse(b"$?\r\n"), Err(RespError::Streamed));
        assert_eq!(parse(b"#x\r\n"), Err(RespError::BadNumber));
        let deep = "*1\r\n".repeat(DEPTH_LIMIT + 2) + ":1\r\n";
        assert_eq!(parse(deep.as_bytes()), Err(RespError::TooLarge));
        // A length that promises much waits for it without reserving it.
        assert_eq!(parse(b"$536870912\r\nabc"), Ok(None));
        assert_eq!(parse(b"*1048576\r\n:1\r\n"), Ok(None));
        for cut in [
            &b""[..],
            b"+",
            b"+PON",
            b"+PONG\r",
            b"$3\r\nab",
            b"$3\r\nabc\r",
            b"*2\r\n:1\r\n",
        ] {
            assert_eq!(parse(cut), Ok(None), "{:?}", String::from_utf8_lossy(cut));
        }
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        write_command(&mut out, &[b"GET", b"b:1"]);
        write_command(&mut out, &[b"PING"]);
        assert_eq!(out, b"*2\r\n$3\r\nGET\r\n$3\r\nb:1\r\n*1\r\n$4\r\nPING\r\n");
        let (v, _) = parse(&out).expect("parse").expect("complete");
        assert_eq!(items(v), vec![Value::Bulk(b"GET"), Value::Bulk(b"b:1")]);
    }
}
