//! The load generator: a few threads, each driving many connections from its own epoll loop
//! (never a thread per connection), closed loop with a pipeline depth, or open loop at a fixed
//! rate with latency measured from each request's intended send time (coordinated omission
//! corrected, the uncorrected figure kept beside it), as wrk2 does.

use std::collections::{BTreeMap, VecDeque};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::rng::Rng;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use proto::body::*;
use proto::{write_request, FrameDecoder, Push, Request, Status, BODY_LEN_LIMIT};

use crate::client::Client;

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
        }
    }

    fn chats(self) -> bool {
        matches!(self, Mix::ChatHeavy | Mix::Mixed)
    }
}

/// One run's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Server address.
    pub addr: SocketAddr,
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
    /// Rooms the connections spread over.
    pub rooms: usize,
    /// Seed of every random choice; printed with the results.
    pub seed: u64,
    /// The server's processes, to report its CPU time per request (empty: not reported).
    pub server_pids: Vec<u32>,
    /// CPUs the client's threads run on (empty: wherever the scheduler puts them).
    pub client_cpus: Vec<usize>,
}

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

struct LoadConn {
    stream: TcpStream,
    decoder: FrameDecoder,
    out: Vec<u8>,
    inflight: VecDeque<InFlight>,
    next_due_ns: u64,
    user_id: u32,
    room_id: u32,
    rng: Rng,
    next_req_id: u64,
}

/// CPU seconds the given processes have run (from /proc/PID/schedstat, nanosecond precision).
pub fn server_cpu_seconds(pids: &[u32]) -> f64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/schedstat")).ok())
        .filter_map(|s| {
            s.split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum::<u64>() as f64
        / 1e9
}

/// Writes a histogram as an HdrHistogram percentile file (.hgrm): value (µs), percentile, total
/// count, 1/(1-percentile); gnuplot plots column 4 on a log axis against column 1.
pub fn write_hgrm(path: &std::path::Path, h: &Histogram<u64>) -> std::io::Result<()> {
    use std::fmt::Write as _;
    let mut out = String::from("       Value     Percentile TotalCount 1/(1-Percentile)\n\n");
    let mut count = 0u64;
    for v in h.iter_quantiles(5) {
        count += v.count_since_last_iteration();
        let q = v.quantile_iterated_to();
        let inv = if q < 1.0 {
            1.0 / (1.0 - q)
        } else {
            f64::INFINITY
        };
        if inv.is_finite() {
            let _ = writeln!(
                out,
                "{:12.3} {:14.12} {:10} {:14.2}",
                v.value_iterated_to() as f64,
                q,
                count,
                inv
            );
        } else {
            let _ = writeln!(
                out,
                "{:12.3} {:14.12} {:10}",
                v.value_iterated_to() as f64,
                q,
                count
            );
        }
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]\n#[Max     = {:12.3}, Total count    = {:12}]",
        h.mean(),
        h.stdev(),
        h.max() as f64,
        h.len()
    );
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, out)
}

fn cpu_seconds() -> f64 {
    use nix::sys::resource::{getrusage, UsageWho};
    getrusage(UsageWho::RUSAGE_SELF).map_or(0.0, |u| {
        let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
        t(u.user_time()) + t(u.system_time())
    })
}

/// Logs every connection in (each as its own user, funded), spreads them over the threads, runs
/// the load, and merges the threads' histograms.
pub fn run(cfg: &Config) -> anyhow::Result<Results> {
    anyhow::ensure!(
        cfg.connections > 0 && cfg.threads > 0,
        "connections and threads > 0"
    );
    anyhow::ensure!(cfg.pipeline > 0, "pipeline > 0");
    let salt = [0x42u8; 16];
    let secret =
        proto::scram::ClientSecret::derive(b"bench", &salt, proto::scram::ITERATIONS_DEFAULT);
    // Setup in parallel: logins cost a few round trips each.
    let per = cfg.connections.div_ceil(cfg.threads);
    let setups: Vec<_> = (0..cfg.threads)
        .map(|t| {
            let (cfg, secret) = (cfg.clone(), secret.clone());
            std::thread::spawn(move || -> anyhow::Result<Vec<(Client, u16, u32)>> {
                let mut out = Vec::new();
                for i in (t * per)..((t + 1) * per).min(cfg.connections) {
                    let mut c = Client::connect(cfg.addr, Duration::from_secs(10))?;
                    let w = c.hello("bench-client")?.worker_id;
                    let user = format!("b{}x{i}", cfg.seed % 1_000_000);
                    match c.register_secret(&user, &salt, &secret) {
                        Ok(_) => {}
                        Err(crate::ClientError::Refused(Status::ErrAlreadyExists, _)) => {}
                        Err(e) => return Err(e.into()),
                    }
                    c.login_secret(&user, secret.clone())?;
                    if c.balance()? < 1_000_000 {
                        c.ledger(&Request::Deposit(AmountRequest { amount: 1_000_000 }))?;
                    }
                    let room = if cfg.mix.chats() {
                        c.join(&format!("r{}", i % cfg.rooms.max(1)))?.0
                    } else {
                        0
                    };
                    out.push((c, w, room));
                    // Stagger connects a little.
                    std::thread::sleep(Duration::from_micros(200));
                }
                Ok(out)
            })
        })
        .collect();
    let mut clients = Vec::new();
    for s in setups {
        clients.extend(
            s.join()
                .map_err(|_| anyhow::anyhow!("a setup thread panicked"))??,
        );
    }
    let workers_seen = clients
        .iter()
        .map(|(_, w, _)| *w)
        .collect::<std::collections::HashSet<_>>()
        .len();
    let hot: Vec<u32> = clients
        .iter()
        .take(cfg.hot_accounts.max(2))
        .map(|(c, _, _)| c.user_id)
        .collect();
    let base = Instant::now();
    let warm_end = base + cfg.warmup;
    let end = warm_end + cfg.duration;
    let per_conn_interval_ns = cfg
        .rate
        .map(|r| (1e9 * cfg.connections as f64 / r.max(1.0)) as u64);
    let mut groups: Vec<Vec<LoadConn>> = (0..cfg.threads).map(|_| Vec::new()).collect();
    for (i, (c, _, room_id)) in clients.into_iter().enumerate() {
        let user_id = c.user_id;
        // The connection keeps counting where its login left off: above the user's high-water
        // mark, so a second run with the same users is not refused as stale.
        let next_req_id = c.last_req_id();
        let stream = c.into_stream();
        stream.set_nonblocking(true)?;
        groups[i % cfg.threads].push(LoadConn {
            stream,
            decoder: FrameDecoder::new(BODY_LEN_LIMIT),
            out: Vec::with_capacity(4096),
            inflight: VecDeque::new(),
            // Spread the open-loop schedule so connections do not fire together.
            next_due_ns: per_conn_interval_ns
                .map_or(0, |iv| iv * i as u64 / cfg.connections as u64),
            user_id,
            room_id,
            rng: Rng::stream(cfg.seed, i as u64),
            next_req_id,
        });
    }
    let handles: Vec<_> = groups
        .into_iter()
        .map(|conns| {
            let (cfg, hot) = (cfg.clone(), hot.clone());
            std::thread::spawn(move || {
                crate::cpus::pin_current(&cfg.client_cpus)
                    .map_err(|e| anyhow::anyhow!("--client-cpus: {e}"))?;
                drive(conns, &cfg, &hot, base, warm_end, end, per_conn_interval_ns)
            })
        })
        .collect();
    // This thread only watches the clock: CPU of both sides over exactly the measured window.
    std::thread::sleep(warm_end.saturating_duration_since(Instant::now()));
    let (client0, server0) = (cpu_seconds(), server_cpu_seconds(&cfg.server_pids));
    std::thread::sleep(end.saturating_duration_since(Instant::now()));
    let (client1, server1) = (cpu_seconds(), server_cpu_seconds(&cfg.server_pids));
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

#[allow(clippy::too_many_arguments)]
fn drive(
    mut conns: Vec<LoadConn>,
    cfg: &Config,
    hot: &[u32],
    base: Instant,
    warm_end: Instant,
    end: Instant,
    interval_ns: Option<u64>,
) -> ThreadResult {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    for (i, c) in conns.iter().enumerate() {
        epoll.add(
            c.stream.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, i as u64),
        )?;
    }
    let mut ops: Vec<OpStats> = OPS.iter().map(|_| OpStats::new()).collect();
    let mut pushes = 0u64;
    let mut push_hist = hist();
    let mut events = vec![EpollEvent::empty(); 256];
    let mut buf = vec![0u8; 1 << 16];
    let warm_ns = (warm_end - base).as_nanos() as u64;
    let text_pad = "x".repeat(cfg.payload.max(24));
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        let now_ns = (now - base).as_nanos() as u64;
        // Send what is due.
        for c in conns.iter_mut() {
            match interval_ns {
                None => {
                    while c.inflight.len() < cfg.pipeline {
                        queue(c, cfg, hot, now_ns, now_ns, &text_pad);
                    }
                }
                Some(iv) => {
                    while c.next_due_ns <= now_ns && c.inflight.len() < 4096 {
                        let due = c.next_due_ns;
                        queue(c, cfg, hot, due, now_ns, &text_pad);
                        c.next_due_ns += iv;
                    }
                }
            }
            if !c.out.is_empty() {
                match c.stream.write(&c.out) {
                    Ok(n) => {
                        c.out.drain(..n);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let timeout = if interval_ns.is_some() { 1u16 } else { 50 };
        let n = match epoll.wait(&mut events, EpollTimeout::from(timeout)) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => 0,
            Err(e) => return Err(e.into()),
        };
        for ev in &events[..n] {
            let c = &mut conns[ev.data() as usize];
            loop {
                let got = match c.stream.read(&mut buf) {
                    Ok(0) => anyhow::bail!("the server closed a connection"),
                    Ok(got) => got,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e.into()),
                };
                let done_ns = (Instant::now() - base).as_nanos() as u64;
                let mut input = &buf[..got];
                while !input.is_empty() {
                    let (used, res) = c.decoder.decode(input);
                    input = &input[used..];
                    let Some(f) = res.map_err(|e| anyhow::anyhow!("bad frame: {e}"))? else {
                        continue;
                    };
                    if f.header.flags.is_response() {
                        let Some(sent) = c.inflight.pop_front() else {
                            anyhow::bail!("a response nobody asked for");
                        };
                        anyhow::ensure!(sent.req_id == f.header.req_id, "response out of order");
                        if sent.intended_ns >= warm_ns && done_ns < (end - base).as_nanos() as u64 {
                            let o = &mut ops[sent.op];
                            o.requests += 1;
                            if f.header.status != Status::Ok {
                                *o.errors.entry(f.header.status.name()).or_default() += 1;
                            }
                            o.latency_us
                                .saturating_record(((done_ns - sent.intended_ns) / 1000).max(1));
                            o.latency_uncorrected_us
                                .saturating_record(((done_ns - sent.sent_ns) / 1000).max(1));
                        }
                    } else if let Ok(Push::ChatBroadcast(b)) = f.push() {
                        let t = b.message.text.as_str();
                        if let Some(sent_ns) = t.get(2..22).and_then(|s| s.parse::<u64>().ok()) {
                            if sent_ns >= warm_ns {
                                pushes += 1;
                                push_hist.saturating_record(
                                    (done_ns.saturating_sub(sent_ns) / 1000).max(1),
                                );
                            }
                        }
                    }
                }
                if got < buf.len() {
                    break;
                }
            }
        }
    }
    Ok((ops, pushes, push_hist))
}

/// Appends one request of the mix to the connection's output.
#[allow(clippy::too_many_arguments)]
fn queue(
    c: &mut LoadConn,
    cfg: &Config,
    hot: &[u32],
    intended_ns: u64,
    now_ns: u64,
    text_pad: &str,
) {
    let roll = c.rng.below(100);
    let (op, kind) = match cfg.mix {
        Mix::Balance => (1, 1),
        Mix::Heartbeat => (4, 4),
        Mix::TradeHeavy if roll < 70 => (0, 0),
        Mix::TradeHeavy if roll < 90 => (1, 1),
        Mix::TradeHeavy => (2, 2),
        Mix::ChatHeavy if roll < 80 => (3, 3),
        Mix::ChatHeavy => (1, 1),
        Mix::Mixed if roll < 30 => (0, 0),
        Mix::Mixed if roll < 50 => (1, 1),
        Mix::Mixed if roll < 90 => (3, 3),
        Mix::Mixed => (2, 2),
    };
    c.next_req_id += 1;
    let req_id = c.next_req_id;
    let mut to = hot[c.rng.below(hot.len() as u64) as usize];
    if to == c.user_id {
        to = hot[(hot.iter().position(|&h| h == to).unwrap_or(0) + 1) % hot.len()];
    }
    let text;
    let req = match kind {
        0 => Request::Transfer(TransferRequest {
            to: Target::Id(to),
            amount: 1,
        }),
        1 => Request::Balance(Empty {}),
        2 => Request::Deposit(AmountRequest { amount: 1 }),
        4 => Request::Heartbeat(HeartbeatRequest {
            client_time_ms: now_ns / 1_000_000,
        }),
        _ => {
            // The send time leads the text, so every member can measure delivery latency.
            let mut t = format!("t={now_ns:020}|");
            t.push_str(&text_pad[..cfg.payload.max(24) - t.len().min(cfg.payload.max(24))]);
            text = t;
            match Text::new(&text) {
                Ok(text) => Request::ChatSend(ChatSendRequest {
                    room_id: c.room_id,
                    text,
                }),
                Err(_) => Request::Balance(Empty {}),
            }
        }
    };
    if write_request(&mut c.out, req_id, &req, BODY_LEN_LIMIT).is_ok() {
        c.inflight.push_back(InFlight {
            req_id,
            op,
            intended_ns,
            sent_ns: now_ns,
        });
    }
}
