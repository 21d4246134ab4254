//! The client library and the load generator against the real server binary.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use bench_client::load::{self, Mix};
use bench_client::scratch::ScratchDir;
use bench_client::server::SpawnedServer;
use bench_client::{Client, ClientError};
use proto::body::*;
use proto::{Request, Status};

/// The real server on a free port, with its own shared memory and data directory, through the
/// crate's launcher (stopped by pid and cleaned up on drop).
struct Server {
    inner: SpawnedServer,
    addr: SocketAddr,
    name: String,
}

/// The server binary: beside this test's directory in the same target dir.
fn server_exe() -> std::path::PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().and_then(|d| d.parent()).map(|d| d.join("uring-server")))
        .filter(|p| p.exists())
        .expect("uring-server is not built: run `cargo build -p uring-server` (cargo test --workspace does)")
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let exe = server_exe();
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("bc-{}-{n}", std::process::id());
        let mut args = vec!["-w", "2", "--max-users", "2000"];
        args.extend_from_slice(extra);
        let inner = SpawnedServer::start(&exe, &name, &args).expect("start server");
        Server {
            addr: inner.addr,
            name,
            inner,
        }
    }
}

#[test]
fn the_library_speaks_every_flow() {
    let server = Server::start(&[]);
    let t = Duration::from_secs(5);
    let mut a = Client::connect(server.addr, t).expect("connect");
    assert!(a.hello("test").expect("hello").body_len_max > 0);
    assert!(matches!(
        a.balance(),
        Err(ClientError::Refused(Status::ErrUnauthorized, _))
    ));
    a.register("alice", "pw-a").expect("register");
    assert!(matches!(
        a.login("alice", "wrong"),
        Err(ClientError::Refused(Status::ErrUnauthorized, _))
    ));
    let alice = a.login("alice", "pw-a").expect("login");
    let mut b = Client::connect(server.addr, t).expect("connect");
    b.register("bob", "pw-b").expect("register");
    let bob = b.login("bob", "pw-b").expect("login");
    assert_ne!(alice, bob);
    assert_eq!(
        a.ledger(&Request::Deposit(AmountRequest { amount: 100 }))
            .map(|r| r.0)
            .ok(),
        Some(100)
    );
    let (bal, _) = a
        .ledger(&Request::Transfer(TransferRequest {
            to: Target::Id(bob),
            amount: 40,
        }))
        .expect("transfer");
    assert_eq!(bal, 60);
    assert_eq!(b.balance().expect("balance"), 40);
    // Chat: both join, alice sends, bob gets the push.
    let (room, _) = a.join("lobby").expect("join");
    b.join("lobby").expect("join");
    let seq = a.send(room, "hello bob").expect("send");
    // The transfer announced itself to bob first, then the room message came.
    let money = b.next_push().expect("push");
    match money.push().expect("push body") {
        proto::Push::MoneyReceived(m) => {
            assert_eq!((m.amount, m.from.as_str()), (40, "alice"));
        }
        other => panic!("{other:?}"),
    }
    let push = b.next_push().expect("push");
    match push.push().expect("push body") {
        proto::Push::ChatBroadcast(m) => {
            assert_eq!(m.message.seq, seq);
            assert_eq!(m.message.text.as_str(), "hello bob");
        }
        other => panic!("{other:?}"),
    }
    // After a reconnect (new connection, logged in again) the ledger still answers.
    a.reconnect().expect("reconnect");
    assert_eq!(a.balance().expect("balance"), 60);
}

#[test]
fn a_short_closed_loop_run_measures_every_request() {
    let server = Server::start(&["--flood-burst", "100000", "--flood-per-sec", "100000"]);
    for mix in [Mix::Balance, Mix::TradeHeavy, Mix::Mixed] {
        let cfg = load::Config {
            tls: None,
            protocol: load::Protocol::Ns,
            addr: server.addr,
            connections: 12,
            threads: 2,
            duration: Duration::from_millis(600),
            warmup: Duration::from_millis(200),
            mix,
            payload: 64,
            pipeline: 2,
            rate: None,
            hot_accounts: 4,
            rooms: 3,
            publishers: 10,
            seed: 42 + mix as u64,
            server_pids: Vec::new(),
            client_cpus: Vec::new(),
        };
        let r = load::run(&cfg).expect("run");
        assert!(
            r.total.requests > 100,
            "{mix:?}: {} requests",
            r.total.requests
        );
        assert!(r.total.errors.is_empty(), "{mix:?}: {:?}", r.total.errors);
        assert!(r.total.latency_us.len() == r.total.requests);
        if mix == Mix::Mixed {
            assert!(r.pushes > 0, "chat messages reach the members");
        }
    }
}

#[test]
fn run_writes_one_csv_row_with_the_documented_columns() {
    let server = Server::start(&[]);
    let dir = ScratchDir::new("bc-csv").expect("scratch dir");
    let csv = dir.join("run.csv");
    for _ in 0..2 {
        let out = Command::new(env!("CARGO_BIN_EXE_bench-client"))
            .args([
                "run",
                "--host",
                "127.0.0.1",
                "--port",
                &server.addr.port().to_string(),
            ])
            .args([
                "--connections",
                "4",
                "--duration",
                "0.3",
                "--warmup",
                "0.1",
                "--mix",
                "balance",
            ])
            .args(["--seed", "5", "--backend", "test", "--out"])
            .arg(&csv)
            .output()
            .expect("run bench-client");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = std::fs::read_to_string(&csv).expect("csv");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.len(),
        3,
        "a header once, then one row per run: {text}"
    );
    let header: Vec<&str> = lines[0].split(',').collect();
    assert_eq!(header[0], "timestamp");
    assert!(header.contains(&"client_cpu_us_per_req") && header.contains(&"p99_us"));
    for row in &lines[1..] {
        let fields: Vec<&str> = row.split(',').collect();
        assert_eq!(fields.len(), header.len(), "{row}");
        let at = |name: &str| fields[header.iter().position(|h| *h == name).expect(name)];
        assert_eq!(at("mix"), "balance");
        assert_eq!(at("seed"), "5");
        assert_eq!(at("backend"), "test");
        assert!(at("requests").parse::<u64>().expect("number") > 0);
        assert_eq!(at("errors"), "0");
    }
}

/// Stops every server process (master and workers) for `stall`, from another thread.
fn stall_server_later(
    server: &Server,
    after: Duration,
    stall: Duration,
) -> std::thread::JoinHandle<()> {
    // Master and workers, from `uring-server stats --format json`.
    let pids: Vec<i32> = bench_client::server::server_pids(&server.name)
        .into_iter()
        .map(|p| p as i32)
        .collect();
    assert!(pids.len() >= 2, "master and workers: {pids:?}");
    assert!(pids.contains(&(server.inner.pid() as i32)));
    std::thread::spawn(move || {
        use nix::sys::signal::{kill, Signal};
        std::thread::sleep(after);
        for &p in &pids {
            let _ = kill(nix::unistd::Pid::from_raw(p), Signal::SIGSTOP);
        }
        std::thread::sleep(stall);
        for &p in &pids {
            let _ = kill(nix::unistd::Pid::from_raw(p), Signal::SIGCONT);
        }
    })
}

#[test]
fn open_loop_shows_a_server_stall_that_closed_loop_hides() {
    let server = Server::start(&[]);
    let cfg = |rate: Option<f64>| load::Config {
        tls: None,
        protocol: load::Protocol::Ns,
        addr: server.addr,
        connections: 10,
        threads: 1,
        duration: Duration::from_secs(3),
        warmup: Duration::from_millis(300),
        mix: Mix::Balance,
        payload: 32,
        pipeline: 1,
        rate,
        hot_accounts: 2,
        rooms: 1,
        publishers: 10,
        seed: 77,
        server_pids: Vec::new(),
        client_cpus: Vec::new(),
    };
    // Closed loop: during a 1 s stall each connection waits once, so only ~10 of many thousand
    // requests are slow and p99 does not move.
    let stall = stall_server_later(&server, Duration::from_millis(1300), Duration::from_secs(1));
    let closed = load::run(&cfg(None)).expect("closed run");
    stall.join().expect("stall thread");
    // Open loop at 2000 req/s: every request due during the stall is late by up to 1 s.
    let stall = stall_server_later(&server, Duration::from_millis(1300), Duration::from_secs(1));
    let open = load::run(&cfg(Some(2000.0))).expect("open run");
    stall.join().expect("stall thread");
    let closed_p99 = closed.total.latency_us.value_at_quantile(0.99);
    let open_p99 = open.total.latency_us.value_at_quantile(0.99);
    let open_uncorrected_p99 = open.total.latency_uncorrected_us.value_at_quantile(0.99);
    eprintln!(
        "closed p99 {closed_p99} us ({} requests); open p99 {open_p99} us, uncorrected {open_uncorrected_p99} us ({} requests)",
        closed.total.requests, open.total.requests
    );
    assert!(
        closed.total.latency_us.max() > 500_000,
        "the stall happened during the closed run"
    );
    assert!(
        closed_p99 < 100_000,
        "closed loop hides the stall in p99: {closed_p99} us"
    );
    assert!(
        open_p99 > 300_000,
        "open loop shows the stall in p99: {open_p99} us"
    );
    // The client kept sending on schedule into the socket during the stall, so measuring from
    // the actual send gives about the same figure here; it is lower when the client itself
    // falls behind its schedule.
    assert!(open_uncorrected_p99 <= open_p99);
}

#[test]
fn chaos_in_brief_kills_workers_abandons_requests_and_the_wire_shows_each_ack_exactly_once() {
    let server = Server::start(&["--txn-log", "1048576"]);
    let cfg = bench_client::chaos::ChaosConfig {
        addr: server.addr,
        tls: None,
        server_name: Some(server.name.clone()),
        connections: 20,
        threads: 4,
        duration: Duration::from_secs(4),
        kill_every: (Duration::from_millis(400), Duration::from_millis(900)),
        timeout: Duration::from_millis(250),
        hot_accounts: 4,
        abandon_per_mille: 50,
        seed: 3,
    };
    let r = bench_client::chaos::run(&cfg, None).expect("chaos run");
    eprintln!("{r:?}");
    assert!(
        r.kills >= 1 && r.stalls >= 1,
        "faults: {} kills, {} stalls",
        r.kills,
        r.stalls
    );
    assert!(
        r.late_copies >= 1,
        "copies were left unread in a stalled worker"
    );
    assert!(r.abandoned > 50, "requests were abandoned: {}", r.abandoned);
    assert_eq!(r.audit_failures, 0, "{:?}", r.violations);
    assert_eq!(r.accounts_checked, 20);
    assert_eq!(r.histories_complete, 20, "the log holds the whole run");
    assert_eq!(r.balance_mismatches, 0, "{:?}", r.violations);
    assert_eq!(r.missing, 0, "{:?}", r.violations);
    assert_eq!(
        r.unexplained, 0,
        "nothing applied twice: {:?}",
        r.violations
    );
    // Every acknowledged transfer shows at both ends, deposits and withdrawals at one.
    assert!(r.acknowledged > 1000 && r.reconciled >= r.acknowledged);
    assert_eq!(r.retries_exhausted, 0, "no client gave up");
    assert_eq!(r.thread_panics, 0);
    assert!(r.ok(true));
}

/// Runs `bench-client chat` as a person would: types `lines` one at a time, each after the
/// previous one's answer (a line starting with `*` or `!`) arrived; returns what it printed.
fn chat_session(server: &Server, user: &str, lines: &[&str]) -> String {
    chat_session_with(server, &[], user, lines)
}

/// [`chat_session`] with more arguments for `bench-client chat` (`--tls ...`).
fn chat_session_with(server: &Server, extra: &[&str], user: &str, lines: &[&str]) -> String {
    let mut person = Person::log_in(server, extra, user);
    for line in lines {
        person.type_line(line);
    }
    person.quit()
}

/// One `bench-client chat` process, typed at line by line.
struct Person {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    lines: std::sync::mpsc::Receiver<String>,
    printed: String,
}

impl Person {
    fn log_in(server: &Server, extra: &[&str], user: &str) -> Person {
        let mut child = Command::new(env!("CARGO_BIN_EXE_bench-client"))
            .args(["chat", "--port", &server.addr.port().to_string()])
            .args(extra)
            .args(["--user", user, "--password", "pw", "--register"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start bench-client chat");
        let stdin = child.stdin.take().expect("stdin");
        let (tx, lines) = std::sync::mpsc::channel::<String>();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut p = Person {
            child,
            stdin,
            lines,
            printed: String::new(),
        };
        p.wait_for(|l| l.starts_with("logged in"));
        p
    }

    /// Reads printed lines until one satisfies `want`; returns it.
    fn wait_for(&mut self, want: impl Fn(&str) -> bool) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("bench-client chat answered ({e}): {}", self.printed));
            self.printed.push_str(&line);
            self.printed.push('\n');
            if want(&line) {
                return line;
            }
        }
    }

    /// Types a line and waits for its answer (a line starting with `*` or `!`).
    fn type_line(&mut self, line: &str) -> String {
        self.type_only(line);
        self.wait_for(|l| l.starts_with('*') || l.starts_with('!'))
    }

    /// Types a line whose answer the caller waits for itself.
    fn type_only(&mut self, line: &str) {
        use std::io::Write;
        writeln!(self.stdin, "{line}").expect("type");
    }

    fn quit(mut self) -> String {
        use std::io::Write;
        writeln!(self.stdin, "/quit").expect("type");
        drop(self.stdin);
        assert!(self.child.wait().expect("exit").success());
        self.printed
    }
}

#[test]
fn a_person_sees_money_arrive_and_histories_with_names() {
    let server = Server::start(&[]);
    let mut bob = Person::log_in(&server, &[], "bob");
    let mut alice = Person::log_in(&server, &[], "alice");
    alice.type_line("/deposit 1000");
    let done = alice.type_line("/transfer bob 250");
    assert!(done.contains("balance 750"), "{done}");
    // Bob typed nothing: the money announces itself.
    let arrived = bob.wait_for(|l| l.starts_with('$'));
    assert!(
        arrived.starts_with("$ alice sent you 250 (txn "),
        "{arrived}"
    );
    // A history names both sides, for the sender and the receiver.
    alice.type_only("/txns");
    let sent = alice.wait_for(|l| l.contains("sent 250"));
    assert!(sent.contains("sent 250 to bob -> balance 750"), "{sent}");
    bob.type_only("/txns");
    let got = bob.wait_for(|l| l.contains("received 250"));
    assert!(
        got.contains("received 250 from alice -> balance 250"),
        "{got}"
    );
    alice.quit();
    bob.quit();
}

#[test]
fn a_person_who_logs_in_again_can_still_deposit() {
    let server = Server::start(&[]);
    let first = chat_session(&server, "carol", &["/deposit 100"]);
    assert!(first.contains("* done (txn"), "{first}");
    // A second session of the same user: its req_ids continue above the first one's, so its
    // deposit is applied, not refused as stale.
    let second = chat_session(&server, "carol", &["/deposit 50", "/balance"]);
    assert!(second.contains("* done (txn"), "{second}");
    assert!(second.contains("* balance 150"), "{second}");
}

#[test]
fn a_person_chats_and_trades_over_tls_and_a_wrong_ca_is_refused() {
    let pki = bench_client::server::TestPki::new().expect("a test PKI");
    let args = pki.server_args();
    let server = Server::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let ca = pki.certs.ca.to_string_lossy().into_owned();
    let tls = ["--tls", "--tls-ca", ca.as_str()];
    let out = chat_session_with(
        &server,
        &tls,
        "dora",
        &["/deposit 100", "/join lobby", "/balance"],
    );
    assert!(out.contains("* done (txn"), "{out}");
    assert!(out.contains("* joined lobby"), "{out}");
    assert!(out.contains("* balance 100"), "{out}");
    // A client that trusts another CA does not get in.
    let other = bench_client::server::TestPki::new().expect("another PKI");
    let refused = Command::new(env!("CARGO_BIN_EXE_bench-client"))
        .args([
            "chat",
            "--port",
            &server.addr.port().to_string(),
            "--tls",
            "--tls-ca",
        ])
        .arg(&other.certs.ca)
        .args(["--user", "eve", "--password", "pw", "--register"])
        .stdin(Stdio::null())
        .output()
        .expect("run bench-client chat");
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("certificate"), "{err}");
}

/// The bounded CI form of `bench-client chaos --restart`: trade traffic with abandoned
/// requests while the whole server (master, workers, journal writer) is killed with SIGKILL at
/// random instants, its shared memory removed and the server restarted from its data directory;
/// then every account is read back over the wire.
#[test]
fn chaos_with_full_crashes_recovers_from_the_journal_and_the_wire_shows_each_ack_exactly_once() {
    use bench_client::cli::ServerIo;
    for (i, io) in [ServerIo::Uring, ServerIo::Epoll].into_iter().enumerate() {
        let exe = server_exe();
        let scratch = ScratchDir::new(&format!("ns-chaos-test-{io}")).expect("scratch dir");
        let dir = scratch.join("data");
        let args = bench_client::cli::ChaosArgs {
            workers: 2,
            io,
            ..chaos_defaults()
        };
        let mut r = bench_client::chaos::Restarter::start(
            exe,
            &format!("bcr-{}-{io}", std::process::id()),
            bench_client::commands::restart_args(&args, &dir).expect("args"),
        )
        .expect("start the server");
        let cfg = bench_client::chaos::ChaosConfig {
            addr: r.server.addr,
            tls: None,
            server_name: Some(r.server.name.clone()),
            connections: 16,
            threads: 4,
            duration: Duration::from_secs(4),
            kill_every: (Duration::from_millis(600), Duration::from_millis(1100)),
            timeout: Duration::from_millis(500),
            hot_accounts: 4,
            abandon_per_mille: 30,
            seed: 11 + i as u64,
        };
        let report = bench_client::chaos::run(&cfg, Some(&mut r)).expect("chaos run");
        drop(r);
        drop(scratch);
        eprintln!("{io}: {report:?}");
        assert!(
            report.restarts >= 2,
            "{io}: full restarts: {}",
            report.restarts
        );
        assert!(
            report.abandoned > 10,
            "{io}: abandoned {}",
            report.abandoned
        );
        assert_eq!(report.audit_failures, 0, "{io}: {:?}", report.violations);
        assert_eq!(report.accounts_checked, 16);
        assert_eq!(
            report.retries_exhausted, 0,
            "{io}: every request got an answer"
        );
        assert_eq!(
            report.balance_mismatches, 0,
            "{io}: {:?}",
            report.violations
        );
        assert_eq!(
            report.missing, 0,
            "{io}: acked and lost: {:?}",
            report.violations
        );
        assert_eq!(
            report.unexplained, 0,
            "{io}: applied twice: {:?}",
            report.violations
        );
        assert!(report.ok(true), "{io}: {report:?}");
    }
}

fn chaos_defaults() -> bench_client::cli::ChaosArgs {
    use clap::Parser;
    #[derive(clap::Parser)]
    struct Wrap {
        #[command(flatten)]
        a: bench_client::cli::ChaosArgs,
    }
    Wrap::parse_from(["chaos"]).a
}

/// Every file under the repository's results/ with its length and modification time.
fn results_snapshot() -> Vec<(std::path::PathBuf, u64, std::time::SystemTime)> {
    fn walk(
        dir: &std::path::Path,
        out: &mut Vec<(std::path::PathBuf, u64, std::time::SystemTime)>,
    ) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if let Ok(m) = e.metadata() {
                out.push((p, m.len(), m.modified().unwrap_or(std::time::UNIX_EPOCH)));
            }
        }
    }
    let mut out = Vec::new();
    walk(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../results"),
        &mut out,
    );
    out.sort();
    out
}

#[test]
fn a_sweep_repeats_its_cells_and_writes_only_where_it_is_told() {
    let before = results_snapshot();
    let dir = ScratchDir::new("ns-sweep").expect("scratch dir");
    let out = dir.join("quick.csv");
    // Run from the repository root, where the old defaults (results/hgrm) would have landed.
    let status = Command::new(env!("CARGO_BIN_EXE_bench-client"))
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .args([
            "sweep",
            "--workers",
            "1",
            "--mix",
            "heartbeat",
            "--payload",
            "32",
            "--connections",
            "4",
            "--duration",
            "0.3",
            "--warmup",
            "0",
            "--threads",
            "1",
            "--repeat",
            "2",
        ])
        .arg("--server")
        .arg(server_exe())
        .arg("--out")
        .arg(&out)
        .stdout(Stdio::null())
        .status()
        .expect("run the sweep");
    assert!(status.success());
    let csv = std::fs::read_to_string(&out).expect("the CSV is where --out says");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3, "header and one row per run: {csv}");
    assert!(
        lines[0].ends_with(",server_workers,repeat,protocol,server,durability,transport"),
        "{csv}"
    );
    assert!(
        lines[1].ends_with(",1,0,ns,uring-server,sync,tcp")
            && lines[2].ends_with(",1,1,ns,uring-server,sync,tcp"),
        "repeat index, protocol, server, durability: {csv}"
    );
    let summary = std::fs::read_to_string(dir.join("quick-summary.csv")).expect("summary");
    let cells: Vec<&str> = summary.lines().collect();
    assert_eq!(cells.len(), 2, "header and one cell: {summary}");
    assert!(cells[1].starts_with("1,heartbeat,32,4,2,"), "{summary}");
    // median, min, max of req/s: min <= median <= max.
    let f: Vec<f64> = cells[1]
        .split(',')
        .skip(5)
        .take(3)
        .map(|x| x.parse().expect("number"))
        .collect();
    assert!(f[1] <= f[0] && f[0] <= f[2] && f[1] > 0.0, "{summary}");
    let hgrm: Vec<_> = std::fs::read_dir(dir.join("quick-hgrm"))
        .expect("histograms beside --out")
        .flatten()
        .collect();
    assert_eq!(hgrm.len(), 1, "one .hgrm per cell, merged over its runs");
    // A CSV of other columns is refused, not corrupted.
    std::fs::write(&out, "a,b\n1,2\n").expect("write");
    let st = Command::new(env!("CARGO_BIN_EXE_bench-client"))
        .args([
            "sweep",
            "--workers",
            "1",
            "--mix",
            "heartbeat",
            "--connections",
            "2",
        ])
        .args(["--duration", "0.2", "--warmup", "0", "--repeat", "1"])
        .arg("--server")
        .arg(server_exe())
        .arg("--out")
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run");
    assert!(!st.success());
    assert_eq!(std::fs::read_to_string(&out).expect("read"), "a,b\n1,2\n");
    assert_eq!(results_snapshot(), before, "nothing under results/ changed");
    drop(dir);
    // Without --out the sweep refuses to start rather than pick a place.
    let st = Command::new(env!("CARGO_BIN_EXE_bench-client"))
        .args(["sweep", "--workers", "1"])
        .stderr(Stdio::null())
        .status()
        .expect("run");
    assert!(!st.success());
}

/// The CPUs listed as allowed in /proc/<pid>/status.
fn allowed_cpus(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list")
        .trim()
        .to_string()
}

#[test]
fn server_and_client_pinned_to_cpus_run_there_and_the_csv_says_so() {
    let cpus = placement::allowed();
    let (server_cpu, client_cpu) = (cpus[0], *cpus.last().expect("a CPU"));
    let launch = bench_client::server::Launch {
        cpus: vec![server_cpu],
        ..Default::default()
    };
    let name = format!("pin-{}", std::process::id());
    let server = SpawnedServer::start_with(&server_exe(), &name, &["-w", "2"], &launch)
        .expect("start the server");
    let pids = bench_client::server::server_pids(&name);
    assert!(pids.len() >= 3, "master, workers, writer: {pids:?}");
    for pid in &pids {
        assert_eq!(allowed_cpus(*pid), server_cpu.to_string(), "pid {pid}");
    }
    assert_ne!(
        allowed_cpus(std::process::id()),
        server_cpu.to_string(),
        "the test's own thread got its CPUs back"
    );
    let dir = ScratchDir::new("ns-pin").expect("scratch dir");
    let out = dir.join("pinned.csv");
    let status = Command::new(env!("CARGO_BIN_EXE_bench-client"))
        .args([
            "run",
            "--mix",
            "heartbeat",
            "--connections",
            "4",
            "--duration",
            "0.3",
        ])
        .args(["--warmup", "0", "--port", &server.addr.port().to_string()])
        .args(["--client-cpus", &client_cpu.to_string()])
        .args(["--server-cpus", &server_cpu.to_string()])
        .arg("--out")
        .arg(&out)
        .stdout(Stdio::null())
        .status()
        .expect("run");
    assert!(status.success());
    let csv = std::fs::read_to_string(&out).expect("csv");
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().expect("header").split(',').collect();
    let row: Vec<&str> = lines.next().expect("row").split(',').collect();
    let col = |n: &str| row[header.iter().position(|h| *h == n).expect(n)];
    assert_eq!(col("server_cpus"), server_cpu.to_string());
    assert_eq!(col("client_cpus"), client_cpu.to_string());
}

#[test]
fn fanout_sends_only_from_the_publishers_and_every_member_receives_every_message() {
    let server = Server::start(&["--flood-burst", "100000", "--flood-per-sec", "100000"]);
    let cfg = load::Config {
        tls: None,
        protocol: load::Protocol::Ns,
        addr: server.addr,
        connections: 12,
        threads: 2,
        duration: Duration::from_millis(800),
        warmup: Duration::from_millis(200),
        mix: Mix::Fanout,
        payload: 32,
        pipeline: 1,
        rate: None,
        hot_accounts: 4,
        rooms: 3,
        publishers: 3,
        seed: 77,
        server_pids: Vec::new(),
        client_cpus: Vec::new(),
    };
    let r = load::run(&cfg).expect("run");
    let sends = r.ops[load::Op::ChatSend as usize].requests;
    assert!(r.total.errors.is_empty(), "{:?}", r.total.errors);
    assert!(sends > 50, "{sends} publishes");
    assert_eq!(
        r.total.requests, sends,
        "only CHAT_SEND in a run shorter than a keep-alive"
    );
    // One room of 12 (the `rooms` setting does not apply): each publish reaches all 12 members,
    // the publisher included. A push counts when sent after the warm-up and delivered before
    // the end; a publish when also answered before the end: each of the 3 publishers
    // (pipeline 1) can have one publish in the window whose pushes count and whose answer does
    // not, and the end cuts a few pushes the other way.
    assert!(
        r.pushes >= 10 * sends && r.pushes <= 12 * sends + 12 * 3,
        "{} pushes for {sends} publishes",
        r.pushes
    );
}
