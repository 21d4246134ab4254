//! `--metrics-addr`: Prometheus scrapes over HTTP, answered by the master from shared memory while
//! load runs, and clients that are slow, malformed or too many never stall a scrape.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use test_support::*;

/// Sends `request` and reads the whole answer (the server closes after it): (status, body).
fn http(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the metrics address");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(request).expect("send the request");
    let mut got = Vec::new();
    s.read_to_end(&mut got).expect("read the answer");
    let text = String::from_utf8(got).expect("an HTTP answer is text");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("a Content-Length");
    if !request.starts_with(b"HEAD ") {
        assert_eq!(body.len(), len, "the body is as long as the head says");
    }
    (status, body.to_string())
}

fn scrape(addr: SocketAddr) -> String {
    let (status, body) = http(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 200);
    body
}

/// Parses the exposition text: every sample `name{labels} value` under a `# TYPE` line for its
/// family; returns the sum of `family`'s samples (a family must be typed; it may have no sample
/// yet, as `ns_requests_total` before the first request).
fn total(text: &str, family: &str) -> f64 {
    let mut typed: Vec<&str> = Vec::new();
    let mut sum = 0.0;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut w = rest.split(' ');
            let (Some(name), Some(kind), None) = (w.next(), w.next(), w.next()) else {
                panic!("bad TYPE line {line:?}");
            };
            assert!(["counter", "gauge"].contains(&kind), "{line:?}");
            typed.push(name);
            continue;
        }
        if line.starts_with("# HELP ") || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
        let value: f64 = value.parse().expect("a sample's value is a number");
        let name = series.split('{').next().expect("a name");
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line:?}"
        );
        if series.contains('{') {
            assert!(series.ends_with('}'), "labels close: {line:?}");
        }
        assert!(typed.contains(&name), "{name} has a # TYPE line before it");
        if name == family {
            sum += value;
        }
    }
    assert!(typed.contains(&family), "{family} in:\n{text}");
    sum
}

#[test]
fn the_master_serves_prometheus_text_under_load_and_bad_or_slow_clients_stall_nothing() {
    let server = Server::start("metrics", &["-w", "2", "--metrics-addr", "127.0.0.1:0"]);
    let maddr = server
        .inner
        .metrics
        .expect("the listening line names the metrics address");

    // Load on both workers while scrapes go on.
    let stop = Arc::new(AtomicBool::new(false));
    let loaders: Vec<_> = (0..2)
        .map(|i| {
            let (stop, mut c) = (stop.clone(), server.client());
            std::thread::spawn(move || {
                c.join_as(&format!("load{i}"));
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    c.ledger(&deposit(1)).expect("deposit");
                    n += 1;
                }
                n
            })
        })
        .collect();

    // Clients that hold connections: more idle ones than the endpoint keeps (the oldest are
    // dropped for newer ones), then one silent and one stopped mid-request, left to their
    // deadline.
    let idle: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(maddr).expect("connect"))
        .collect();
    let silent = TcpStream::connect(maddr).expect("connect");
    let mut dribbler = TcpStream::connect(maddr).expect("connect");
    dribbler.write_all(b"GET /met").expect("half a request");
    let held_since = Instant::now();

    let first = total(&scrape(maddr), "ns_requests_total");
    let started = Instant::now();
    wait_until(
        Duration::from_secs(10),
        "requests counted between scrapes",
        || total(&scrape(maddr), "ns_requests_total") > first + 100.0,
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "scrapes were answered while slow clients held connections"
    );
    let text = scrape(maddr);
    assert!(total(&text, "ns_connections_open") >= 2.0, "{text}");
    assert!(text.contains("backend=\""), "{text}");

    // What is not a scrape.
    assert_eq!(http(maddr, b"GET / HTTP/1.1\r\n\r\n").0, 404);
    assert_eq!(http(maddr, b"POST /metrics HTTP/1.1\r\n\r\n").0, 405);
    assert_eq!(http(maddr, b"BLAH\r\n\r\n").0, 400);
    assert_eq!(
        http(maddr, b"\x16\x03\x01\x00\x05hello TLS/1.3\r\n\r\n").0,
        400
    );
    let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 20_000));
    assert_eq!(http(maddr, &huge).0, 431);
    let (status, body) = http(maddr, b"HEAD /metrics HTTP/1.1\r\n\r\n");
    assert_eq!((status, body.as_str()), (200, ""));

    // The slow ones are closed at their deadline (5 s), without an answer, and the loaders were
    // never stalled.
    for (what, mut s) in [("silent", silent), ("dribbling", dribbler)] {
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "the {what} client is closed without an answer");
        let held = held_since.elapsed();
        assert!(
            held >= Duration::from_millis(4_500) && held < Duration::from_secs(8),
            "the {what} client is closed at its deadline, not before: {held:?}"
        );
    }
    drop(idle);
    stop.store(true, Ordering::Relaxed);
    for l in loaders {
        assert!(l.join().expect("a loader") > 0);
    }
}
