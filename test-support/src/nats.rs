//! Real `nats-server`s with JetStream for the cluster tests: one, or a cluster of three routed
//! to each other, on free loopback ports with their own store directories; stopped by pid
//! (SIGKILL on drop) and their directories removed.
//!
//! Without `nats-server` on the PATH the test fails, unless `NS_SKIP_NATS=1` is set (then
//! [`nats_or_skip`] says so and the test returns early). `.ci/run` installs Debian's.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bench_client::scratch::ScratchDir;

/// True when the cluster tests can run; false (after saying why) when `NS_SKIP_NATS=1` opts
/// out on a machine without nats-server. Panics when it is missing and not opted out.
pub fn nats_or_skip() -> bool {
    let found = Command::new("nats-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return true;
    }
    if std::env::var("NS_SKIP_NATS").as_deref() == Ok("1") {
        eprintln!("nats-server not found and NS_SKIP_NATS=1: skipping a cluster test");
        return false;
    }
    panic!(
        "nats-server not found: install it (apt-get install nats-server) or set NS_SKIP_NATS=1 \
         to skip the cluster tests"
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// One nats-server process.
pub struct Nats {
    child: Option<Child>,
    /// Its client port.
    pub port: u16,
    cluster_port: u16,
    dir: ScratchDir,
    name: String,
    routes: Vec<u16>,
}

impl Nats {
    fn spawn(&mut self) {
        let mut cmd = Command::new("nats-server");
        cmd.args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string()])
            .arg("-sd")
            .arg(self.dir.path())
            .args(["-n", &self.name]);
        if !self.routes.is_empty() {
            let routes: Vec<String> = self
                .routes
                .iter()
                .map(|p| format!("nats://127.0.0.1:{p}"))
                .collect();
            cmd.args(["--cluster_name", "ns-test"])
                .args([
                    "--cluster",
                    &format!("nats://127.0.0.1:{}", self.cluster_port),
                ])
                .args(["--routes", &routes.join(",")]);
        }
        let log = std::fs::File::create(self.dir.join("log")).expect("nats log");
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server {} never listened",
                self.name
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same ports and store.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// What it logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One nats-server with JetStream.
pub fn nats_single() -> Nats {
    let mut n = Nats {
        child: None,
        port: free_port(),
        cluster_port: 0,
        dir: ScratchDir::new("nats").expect("nats dir"),
        name: "n1".into(),
        routes: Vec::new(),
    };
    n.spawn();
    n
}

/// Three nats-servers routed into one JetStream cluster (a stream of 3 replicas survives the
/// loss of one). Returns once JetStream answers on all three.
pub fn nats_cluster() -> Vec<Nats> {
    let cluster_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut servers: Vec<Nats> = (0..3)
        .map(|i| Nats {
            child: None,
            port: free_port(),
            cluster_port: cluster_ports[i],
            dir: ScratchDir::new("nats").expect("nats dir"),
            name: format!("n{}", i + 1),
            routes: cluster_ports.clone(),
        })
        .collect();
    for s in &mut servers {
        s.spawn();
    }
    servers
}

/// The `--cluster` value for these servers.
pub fn urls(servers: &[Nats]) -> String {
    servers.iter().map(Nats::url).collect::<Vec<_>>().join(",")
}
