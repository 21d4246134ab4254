//! The load generator: a few threads, each driving many connections from its own epoll loop
//! (never a thread per connection), closed loop with a pipeline depth, or open loop at a fixed
//! rate with latency measured from each request's intended send time (coordinated omission
//! corrected, the uncorrected figure kept beside it), as wrk2 does.
//!
//! The same loop speaks NS or RESP (`--protocol`, as memtier_benchmark's): only the setup, the
//! encoding of a request and the parsing of an answer differ, so that a comparison with a
//! Redis-compatible server measures the servers, not two clients. What each mix sends in RESP
//! is in [`crate::resp_mix`].

use std::collections::{BTreeMap, VecDeque};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::rng::Rng;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use proto::body::*;
use proto::{write_request, FrameDecoder, Push, Request, Status, BODY_LEN_LIMIT};

use crate::resp_mix::RespSetup;

/// The wire protocol a run speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// This server's binary protocol (docs/PROTOCOL.md).
    Ns,
    /// RESP, to a Redis-compatible server: the mixes' Redis equivalents (see `resp_mix`).
    Resp,
}

impl Protocol {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Ns => "ns",
            Protocol::Resp => "resp",
        }
    }
}

/// What the connections send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mix {
    /// 70% TRANSFER to a small hot set of accounts, 20% BALANCE, 10% DEPOSIT.
    TradeHeavy,
    /// 80% CHAT_SEND, 20% BALANCE.
    ChatHeavy,
    /// 30% TRANSFER, 20% BALANCE, 40% CHAT_SEND, 10% DEPOSIT.
    Mixed,
    /// BALANCE only: the cheapest ledger read, for the server's cost per request.
    Balance,
    /// HEARTBEAT only: the protocol's cheapest round trip (no shared memory touched).
    Heartbeat,
    /// Fan-out: every connection joins one room, the first `--publishers` of them CHAT_SEND
    /// to it and the rest only listen (a HEARTBEAT every few seconds keeps them from the idle
    /// timeout). Measures deliveries per second and push latency at every member.
    Fanout,
}

impl Mix {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Mix::TradeHeavy => "trade-heavy",
            Mix::ChatHeavy => "chat-heavy",
            Mix::Mixed => "mixed",
            Mix::Balance => "balance",
            Mix::Heartbeat => "heartbeat",
            Mix::Fanout => "fanout",
        }
    }

    /// True for the mixes that send chat messages (their connections join rooms).
    pub fn chats(self) -> bool {
        matches!(self, Mix::ChatHeavy | Mix::Mixed | Mix::Fanout)
    }
}

/// One run's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Server address.
    pub addr: SocketAddr,
    /// TLS on every connection (`--tls`), or plaintext.
    pub tls: Option<crate::ClientTls>,
    /// What the server speaks.
    pub protocol: Protocol,
    /// Connections, each logged in as its own user.
    pub connections: usize,
    /// Threads, each with its own event loop.
    pub threads: usize,
    /// Measured time.
    pub duration: Duration,
    /// Unmeasured time before it.
    pub warmup: Duration,
    /// What to send.
    pub mix: Mix,
    /// Chat text length in bytes.
    pub payload: usize,
    /// Requests in flight per connection (closed loop).
    pub pipeline: usize,
    /// Total requests per second (open loop); `None` for closed loop.
    pub rate: Option<f64>,
    /// Accounts that receive transfers (the contention set).
    pub hot_accounts: usize,
    /// Rooms the connections spread over (fan-out: one, whatever this says).
    pub rooms: usize,
    /// Fan-out: how many of the connections send (the others only listen).
    pub publishers: usize,
    /// Seed of every random choice; printed with the results.
    pub seed: u64,
    /// The server's processes, to report its CPU time per request (empty: not reported).
    pub server_pids: Vec<u32>,
    /// CPUs the client's threads run on (empty: wherever the scheduler puts them).
    pub client_cpus: Vec<usize>,
}

impl Config {
    /// Rooms the connections spread over: connection `i` is in room `i % room_count()`.
    pub fn room_count(&self) -> usize {
        if self.mix == Mix::Fanout {
            1
        } else {
            self.rooms.max(1)
        }
    }

    /// Connections that send requests (fan-out: the publishers; otherwise all).
    pub fn senders(&self) -> usize {
        if self.mix == Mix::Fanout {
            self.publishers.clamp(1, self.connections.max(1))
        } else {
            self.connections
        }
    }

    /// Whether connection `i` sends requests (the others only listen).
    pub fn sends(&self, i: usize) -> bool {
        i < self.senders()
    }
}

/// A listening connection (fan-out) sends a HEARTBEAT this often, so the server's idle timeout
/// does not close it.
const LISTENER_KEEPALIVE_NS: u64 = 5_000_000_000;

/// The operations the mixes send, in report order.
pub const OPS: [&str; 5] = ["TRANSFER", "BALANCE", "DEPOSIT", "CHAT_SEND", "HEARTBEAT"];

/// Latency and counts for one operation.
#[derive(Debug)]
pub struct OpStats {
    /// Requests answered during the measurement.
    pub requests: u64,
    /// Non-OK answers by status.
    pub errors: BTreeMap<&'static str, u64>,
    /// Microseconds from intended send to response (= from send in closed loop).
    pub latency_us: Histogram<u64>,
    /// Microseconds from actual send to response.
    pub latency_uncorrected_us: Histogram<u64>,
}

impl OpStats {
    fn new() -> OpStats {
        OpStats {
            requests: 0,
            errors: BTreeMap::new(),
            latency_us: hist(),
            latency_uncorrected_us: hist(),
        }
    }

    fn merge(&mut self, o: &OpStats) {
        self.requests += o.requests;
        for (k, v) in &o.errors {
            *self.errors.entry(k).or_default() += v;
        }
        let _ = self.latency_us.add(&o.latency_us);
        let _ = self.latency_uncorrected_us.add(&o.latency_uncorrected_us);
    }
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).unwrap_or_else(|_| {
        Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant figures is valid"))
    })
}

/// What a run measured.
#[derive(Debug)]
pub struct Results {
    /// Per operation, in [`OPS`] order.
    pub ops: Vec<OpStats>,
    /// All operations together.
    pub total: OpStats,
    /// Pushes received during the measurement.
    pub pushes: u64,
    /// Microseconds from a chat message's send to its delivery at each member.
    pub push_latency_us: Histogram<u64>,
    /// Measured seconds.
    pub seconds: f64,
    /// Client CPU seconds (user + system) during the measurement.
    pub client_cpu_s: f64,
    /// Server CPU seconds during the measurement, when its pids were given.
    pub server_cpu_s: Option<f64>,
    /// Distinct server workers the connections landed on.
    pub workers_seen: usize,
}

struct InFlight {
    req_id: u64,
    op: usize,
    intended_ns: u64,
    sent_ns: u64,
}

/// Parses what one connection reads, in its protocol.
enum Decoder {
    Ns(FrameDecoder),
    Resp(crate::resp::Decoder),
}

struct LoadConn {
    stream: crate::Stream,
    decoder: Decoder,
    out: Vec<u8>,
    inflight: VecDeque<InFlight>,
    next_due_ns: u64,
    /// False for a fan-out listener: it sends only keep-alives.
    sends: bool,
    /// When it last queued a request (for a listener's keep-alive).
    last_sent_ns: u64,
    user_id: u32,
    room_id: u32,
    rng: Rng,
    next_req_id: u64,
}

/// Sets every connection up (in the run's protocol), spreads them over the threads, runs the
/// load, and merges the threads' histograms.
pub fn run(cfg: &Config) -> anyhow::Result<Results> {
    anyhow::ensure!(
        cfg.connections > 0 && cfg.threads > 0,
        "connections and threads > 0"
    );
    anyhow::ensure!(cfg.pipeline > 0, "pipeline > 0");
    let (ready, hot, workers_seen, resp) = crate::setup::connect_all(cfg)?;
    let base = Instant::now();
    let warm_end = base + cfg.warmup;
    let end = warm_end + cfg.duration;
    let per_conn_interval_ns = cfg
        .rate
        .map(|r| (1e9 * cfg.senders() as f64 / r.max(1.0)) as u64);
    let mut groups: Vec<Vec<LoadConn>> = (0..cfg.threads).map(|_| Vec::new()).collect();
    for (i, r) in ready.into_iter().enumerate() {
        r.stream.tcp().set_nonblocking(true)?;
        groups[i % cfg.threads].push(LoadConn {
            stream: r.stream,
            decoder: match cfg.protocol {
                Protocol::Ns => Decoder::Ns(FrameDecoder::new(BODY_LEN_LIMIT)),
                Protocol::Resp => Decoder::Resp(crate::resp::Decoder::new()),
            },
            out: Vec::with_capacity(4096),
            inflight: VecDeque::new(),
            // Spread the open-loop schedule so connections do not fire together.
            next_due_ns: per_conn_interval_ns.map_or(0, |iv| iv * i as u64 / cfg.senders() as u64),
            sends: cfg.sends(i),
            last_sent_ns: 0,
            user_id: r.user_id,
            room_id: r.room_id,
            rng: Rng::stream(cfg.seed, i as u64),
            next_req_id: r.next_req_id,
        });
    }
    let handles: Vec<_> = groups
        .into_iter()
        .map(|conns| {
            let (cfg, hot, resp) = (cfg.clone(), hot.clone(), resp.clone());
            std::thread::spawn(move || {
                crate::cpus::pin_current(&cfg.client_cpus)
                    .map_err(|e| anyhow::anyhow!("--client-cpus: {e}"))?;
                let clock = Clock {
                    base,
                    warm_end,
                    end,
                    interval_ns: per_conn_interval_ns,
                };
                drive(conns, &cfg, &hot, resp.as_deref(), &clock)
            })
        })
        .collect();
    // This thread only watches the clock: CPU of both sides over exactly the measured window.
    std::thread::sleep(warm_end.saturating_duration_since(Instant::now()));
    let (client0, server0) = (
        crate::cpu_time::cpu_seconds(),
        crate::cpu_time::server_cpu_seconds(&cfg.server_pids),
    );
    std::thread::sleep(end.saturating_duration_since(Instant::now()));
    let (client1, server1) = (
        crate::cpu_time::cpu_seconds(),
        crate::cpu_time::server_cpu_seconds(&cfg.server_pids),
    );
    let mut ops: Vec<OpStats> = OPS.iter().map(|_| OpStats::new()).collect();
    let mut pushes = 0;
    let mut push_latency_us = hist();
    for h in handles {
        let (o, p, ph) = h
            .join()
            .map_err(|_| anyhow::anyhow!("a load thread panicked"))??;
        for (a, b) in ops.iter_mut().zip(&o) {
            a.merge(b);
        }
        pushes += p;
        let _ = push_latency_us.add(&ph);
    }
    let mut total = OpStats::new();
    for o in &ops {
        total.merge(o);
    }
    Ok(Results {
        ops,
        total,
        pushes,
        push_latency_us,
        seconds: cfg.duration.as_secs_f64(),
        client_cpu_s: client1 - client0,
        server_cpu_s: (!cfg.server_pids.is_empty()).then_some(server1 - server0),
        workers_seen,
    })
}

type ThreadResult = anyhow::Result<(Vec<OpStats>, u64, Histogram<u64>)>;

/// A run's timeline, shared by its threads.
struct Clock {
    base: Instant,
    warm_end: Instant,
    end: Instant,
    /// Open loop: nanoseconds between one connection's requests.
    interval_ns: Option<u64>,
}

/// One thread's measurements.
struct Tally {
    ops: Vec<OpStats>,
    pushes: u64,
    push_hist: Histogram<u64>,
    warm_ns: u64,
    end_ns: u64,
}

impl Tally {
    /// An answer to the oldest request in `inflight` (NS answers carry the req_id they
    /// answer, RESP ones come in order): `error` is its status when not OK.
    fn answer_in(
        &mut self,
        inflight: &mut VecDeque<InFlight>,
        req_id: Option<u64>,
        error: Option<&'static str>,
        done_ns: u64,
    ) -> anyhow::Result<()> {
        let Some(sent) = inflight.pop_front() else {
            anyhow::bail!("a response nobody asked for");
        };
        if let Some(id) = req_id {
            anyhow::ensure!(sent.req_id == id, "response out of order");
        }
        if sent.intended_ns >= self.warm_ns && done_ns < self.end_ns {
            let o = &mut self.ops[sent.op];
            o.requests += 1;
            if let Some(e) = error {
                *o.errors.entry(e).or_default() += 1;
            }
            o.latency_us
                .saturating_record(((done_ns - sent.intended_ns) / 1000).max(1));
            o.latency_uncorrected_us
                .saturating_record(((done_ns - sent.sent_ns) / 1000).max(1));
        }
        Ok(())
    }

    /// A chat message delivered: its text starts with `t=<send time in ns>|`. It counts when it
    /// was sent after the warm-up and delivered before the end, the window a request counts in.
    fn delivered(&mut self, text: &[u8], done_ns: u64) {
        if done_ns >= self.end_ns {
            return;
        }
        let sent_ns = text.get(2..22).and_then(parse_digits);
        if let Some(sent_ns) = sent_ns.filter(|&t| t >= self.warm_ns) {
            self.pushes += 1;
            self.push_hist
                .saturating_record((done_ns.saturating_sub(sent_ns) / 1000).max(1));
        }
    }
}

/// The send time at the head of a chat text: 20 ASCII decimal digits, parsed 8 at a time
/// (SWAR) instead of one multiply per digit: every delivered push goes through here, millions a
/// second, and a digit-by-digit parse was a tenth of the client's CPU. `None` unless all 20
/// bytes are digits and the value fits in a u64.
fn parse_digits(digits: &[u8]) -> Option<u64> {
    let d: &[u8; 20] = digits.try_into().ok()?;
    let head = eight_digits(d[4..12].try_into().ok()?)?;
    let tail = eight_digits(d[12..20].try_into().ok()?)?;
    let top = d[..4].iter().try_fold(0u64, |v, &c| {
        c.is_ascii_digit().then(|| v * 10 + u64::from(c - b'0'))
    })?;
    // top < 10^4 and head, tail < 10^8: only the last multiply and add can overflow.
    (top * 100_000_000 + head)
        .checked_mul(100_000_000)?
        .checked_add(tail)
}

/// Eight ASCII digits as a number, or `None` if any byte is not a digit.
fn eight_digits(b: &[u8; 8]) -> Option<u64> {
    let chunk = u64::from_le_bytes(*b);
    // Each byte's high nibble is 3 and its low nibble at most 9 (no carry crosses a byte).
    let digit = chunk & 0x0F0F_0F0F_0F0F_0F0F;
    let valid = chunk & 0xF0F0_F0F0_F0F0_F0F0 == 0x3030_3030_3030_3030
        && (digit + 0x0606_0606_0606_0606) & 0xF0F0_F0F0_F0F0_F0F0 == 0;
    if !valid {
        return None;
    }
    // Little-endian: the first digit is the lowest byte. Pairs, then quads, then all eight.
    let pairs = ((digit & 0x000F_000F_000F_000F) * 10) + ((digit >> 8) & 0x000F_000F_000F_000F);
    let quads = ((pairs & 0x0000_00FF_0000_00FF) * 100) + ((pairs >> 16) & 0x0000_00FF_0000_00FF);
    Some(((quads & 0xFFFF) * 10_000) + (quads >> 32))
}

fn drive(
    mut conns: Vec<LoadConn>,
    cfg: &Config,
    hot: &[u32],
    resp: Option<&RespSetup>,
    clock: &Clock,
) -> ThreadResult {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    for (i, c) in conns.iter().enumerate() {
        epoll.add(
            c.stream.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, i as u64),
        )?;
    }
    let base = clock.base;
    let mut tally = Tally {
        ops: OPS.iter().map(|_| OpStats::new()).collect(),
        pushes: 0,
        push_hist: hist(),
        warm_ns: (clock.warm_end - base).as_nanos() as u64,
        end_ns: (clock.end - base).as_nanos() as u64,
    };
    let mut events = vec![EpollEvent::empty(); 256];
    let mut buf = vec![0u8; 1 << 16];
    let mut enc = Encoder {
        text_pad: "x".repeat(cfg.payload.max(24)),
        text: String::new(),
    };
    // Closed loop: every connection is filled once here, then again only when its answers
    // arrive, so the loop's work follows the answers, not the number of connections (a scan of
    // every connection per wake-up costs most per request against a slow server). Open loop
    // walks every connection's schedule each turn.
    let mut unsent: Vec<usize> = Vec::new();
    let mut next_keepalive_ns = 0u64;
    if clock.interval_ns.is_none() {
        let now_ns = (Instant::now() - base).as_nanos() as u64;
        for (i, c) in conns.iter_mut().enumerate() {
            top_up(c, cfg, hot, resp, now_ns, &mut enc);
            flush(c, i, &mut unsent)?;
        }
    }
    loop {
        let now = Instant::now();
        if now >= clock.end {
            break;
        }
        let now_ns = (now - base).as_nanos() as u64;
        if let Some(iv) = clock.interval_ns {
            // Send what is due (every connection is flushed each turn: no list to keep).
            unsent.clear();
            for (i, c) in conns.iter_mut().enumerate() {
                while c.sends && c.next_due_ns <= now_ns && c.inflight.len() < 4096 {
                    let due = c.next_due_ns;
                    queue(c, cfg, hot, resp, due, now_ns, &mut enc);
                    c.next_due_ns += iv;
                }
                flush(c, i, &mut unsent)?;
            }
        } else {
            // What a full socket buffer held back last turn.
            for i in std::mem::take(&mut unsent) {
                flush(&mut conns[i], i, &mut unsent)?;
            }
        }
        if now_ns >= next_keepalive_ns {
            next_keepalive_ns = now_ns + LISTENER_KEEPALIVE_NS / 5;
            for (i, c) in conns.iter_mut().enumerate() {
                if !c.sends && now_ns.saturating_sub(c.last_sent_ns) >= LISTENER_KEEPALIVE_NS {
                    queue_op(c, Op::Heartbeat, hot, resp, now_ns, now_ns, &mut enc);
                    flush(c, i, &mut unsent)?;
                }
            }
        }
        let timeout: u16 = if clock.interval_ns.is_some() || !unsent.is_empty() {
            1
        } else {
            50
        };
        let n = match epoll.wait(&mut events, EpollTimeout::from(timeout)) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => 0,
            Err(e) => return Err(e.into()),
        };
        for ev in &events[..n] {
            let i = ev.data() as usize;
            let c = &mut conns[i];
            loop {
                let got = match c.stream.read(&mut buf) {
                    Ok(0) => anyhow::bail!("the server closed a connection"),
                    Ok(got) => got,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e.into()),
                };
                let done_ns = (Instant::now() - base).as_nanos() as u64;
                received(c, &buf[..got], done_ns, &mut tally)?;
                if got < buf.len() {
                    break;
                }
            }
            if clock.interval_ns.is_none() {
                let now_ns = (Instant::now() - base).as_nanos() as u64;
                top_up(c, cfg, hot, resp, now_ns, &mut enc);
                flush(c, i, &mut unsent)?;
            }
        }
    }
    Ok((tally.ops, tally.pushes, tally.push_hist))
}

/// Closed loop: requests until `--pipeline` are in flight on `c`.
fn top_up(
    c: &mut LoadConn,
    cfg: &Config,
    hot: &[u32],
    resp: Option<&RespSetup>,
    now_ns: u64,
    enc: &mut Encoder,
) {
    while c.sends && c.inflight.len() < cfg.pipeline {
        queue(c, cfg, hot, resp, now_ns, now_ns, enc);
    }
}

/// Writes what `c` has queued; if the socket takes only part, connection `i` goes on the
/// `unsent` list, retried next turn.
fn flush(c: &mut LoadConn, i: usize, unsent: &mut Vec<usize>) -> anyhow::Result<()> {
    if c.out.is_empty() && !c.stream.wants_write() {
        return Ok(());
    }
    match c.stream.write(&c.out) {
        Ok(n) => {
            c.out.drain(..n);
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Err(e) => return Err(e.into()),
    }
    // TLS: records the socket did not take wait in rustls, retried like unsent bytes.
    if (!c.out.is_empty() || c.stream.wants_write()) && !unsent.contains(&i) {
        unsent.push(i);
    }
    Ok(())
}

/// Takes the answers and pushes in bytes read from `c`.
fn received(c: &mut LoadConn, bytes: &[u8], done_ns: u64, tally: &mut Tally) -> anyhow::Result<()> {
    match &mut c.decoder {
        Decoder::Ns(decoder) => {
            let mut input = bytes;
            while !input.is_empty() {
                let (used, res) = decoder.decode(input);
                input = &input[used..];
                let Some(f) = res.map_err(|e| anyhow::anyhow!("bad frame: {e}"))? else {
                    continue;
                };
                if f.header.flags.is_response() {
                    let status = f.header.status;
                    let error = (status != Status::Ok).then(|| status.name());
                    tally.answer_in(&mut c.inflight, Some(f.header.req_id), error, done_ns)?;
                } else if let Ok(Push::ChatBroadcast(b)) = f.push() {
                    tally.delivered(b.message.text.as_str().as_bytes(), done_ns);
                }
            }
            Ok(())
        }
        Decoder::Resp(decoder) => {
            let inflight = &mut c.inflight;
            decoder.feed(bytes, |v| -> anyhow::Result<()> {
                match v {
                    crate::resp::Value::Push(items) => {
                        // ["message", channel, text]
                        let mut it = items.iter();
                        if it.next() == Some(crate::resp::Value::Bulk(b"message")) {
                            if let Some(crate::resp::Value::Bulk(text)) = it.nth(1) {
                                tally.delivered(text, done_ns);
                            }
                        }
                        Ok(())
                    }
                    v => {
                        let error = v.error_code().map(crate::resp_mix::error_name);
                        tally.answer_in(inflight, None, error, done_ns)
                    }
                }
            })
        }
    }
}

/// What a thread reuses to encode requests: the chat text and its padding.
struct Encoder {
    text_pad: String,
    text: String,
}

/// Appends one request of the mix to the connection's output.
fn queue(
    c: &mut LoadConn,
    cfg: &Config,
    hot: &[u32],
    resp: Option<&RespSetup>,
    intended_ns: u64,
    now_ns: u64,
    enc: &mut Encoder,
) {
    let roll = c.rng.below(100);
    let op = match cfg.mix {
        Mix::Balance => Op::Balance,
        Mix::Heartbeat => Op::Heartbeat,
        Mix::TradeHeavy if roll < 70 => Op::Transfer,
        Mix::TradeHeavy if roll < 90 => Op::Balance,
        Mix::TradeHeavy => Op::Deposit,
        Mix::ChatHeavy if roll < 80 => Op::ChatSend,
        Mix::ChatHeavy => Op::Balance,
        Mix::Mixed if roll < 30 => Op::Transfer,
        Mix::Mixed if roll < 50 => Op::Balance,
        Mix::Mixed if roll < 90 => Op::ChatSend,
        Mix::Mixed => Op::Deposit,
        Mix::Fanout => Op::ChatSend,
    };
    queue_op(c, op, hot, resp, intended_ns, now_ns, enc);
}

/// Appends one request `op` to the connection's output.
fn queue_op(
    c: &mut LoadConn,
    op: Op,
    hot: &[u32],
    resp: Option<&RespSetup>,
    intended_ns: u64,
    now_ns: u64,
    enc: &mut Encoder,
) {
    c.last_sent_ns = now_ns;
    c.next_req_id += 1;
    let req_id = c.next_req_id;
    let mut to = hot[c.rng.below(hot.len() as u64) as usize];
    if to == c.user_id {
        to = hot[(hot.iter().position(|&h| h == to).unwrap_or(0) + 1) % hot.len()];
    }
    if op == Op::ChatSend {
        // The send time leads the text, so every member can measure delivery latency.
        use std::fmt::Write as _;
        let len = enc.text_pad.len();
        enc.text.clear();
        let _ = write!(enc.text, "t={now_ns:020}|");
        let pad = len - enc.text.len().min(len);
        enc.text.push_str(&enc.text_pad[..pad]);
    }
    let sent = match resp {
        Some(setup) => {
            setup.encode(&mut c.out, op, c.user_id, to, c.room_id, &enc.text);
            true
        }
        None => {
            let req = match op {
                Op::Transfer => Request::Transfer(TransferRequest {
                    to: Target::Id(to),
                    amount: 1,
                }),
                Op::Balance => Request::Balance(Empty {}),
                Op::Deposit => Request::Deposit(AmountRequest { amount: 1 }),
                Op::Heartbeat => Request::Heartbeat(HeartbeatRequest {
                    client_time_ms: now_ns / 1_000_000,
                }),
                Op::ChatSend => match Text::new(&enc.text) {
                    Ok(text) => Request::ChatSend(ChatSendRequest {
                        room_id: c.room_id,
                        text,
                    }),
                    Err(_) => Request::Balance(Empty {}),
                },
            };
            write_request(&mut c.out, req_id, &req, BODY_LEN_LIMIT).is_ok()
        }
    };
    if sent {
        c.inflight.push_back(InFlight {
            req_id,
            op: op as usize,
            intended_ns,
            sent_ns: now_ns,
        });
    }
}

/// The operations of the mixes, numbered in [`OPS`] order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// TRANSFER of 1 to a hot account / the transfer script.
    Transfer = 0,
    /// BALANCE / GET.
    Balance = 1,
    /// DEPOSIT of 1 / the deposit script.
    Deposit = 2,
    /// CHAT_SEND to the connection's room / PUBLISH to its channel.
    ChatSend = 3,
    /// HEARTBEAT / PING.
    Heartbeat = 4,
}

#[cfg(test)]
mod tests {
    use super::parse_digits;

    #[test]
    fn digits_parse_and_anything_else_is_refused() {
        assert_eq!(parse_digits(b"00000000001234567890"), Some(1_234_567_890));
        assert_eq!(parse_digits(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_digits(b"18446744073709551616"), None, "overflow");
        assert_eq!(parse_digits(b"0000000000000000012a"), None);
        assert_eq!(parse_digits(b"-0000000000000000001"), None);
        assert_eq!(parse_digits(b"0000000000000000001"), None, "19 digits");
        // Every position, every byte: the same answer as the standard library's parse.
        let base = *b"00001234567890123456";
        for i in 0..20 {
            for c in 0..=255u8 {
                let mut d = base;
                d[i] = c;
                let std = std::str::from_utf8(&d)
                    .ok()
                    .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|s| s.parse::<u64>().ok());
                assert_eq!(parse_digits(&d), std, "{d:?}");
            }
        }
    }
}
