//! Starting the real server for a sweep or an example: `uring-server --port 0` with a unique
//! `--name`, reading the address it prints once every worker listens; stopped with SIGTERM and
//! reaped on drop.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A server this process started.
#[derive(Debug)]
pub struct SpawnedServer {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// The backend it reported (`io_uring` or `epoll`).
    pub backend: String,
    /// Its `--name`.
    pub name: String,
    exe: PathBuf,
}

/// The `uring-server` binary beside the running program (or one directory up, for examples).
pub fn locate() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let found = [me.parent(), me.parent().and_then(Path::parent)]
        .into_iter()
        .flatten()
        .map(|d| d.join("uring-server"))
        .find(|p| p.exists());
    found.ok_or_else(|| {
        anyhow::anyhow!(
            "uring-server not found beside {}: cargo build --release",
            me.display()
        )
    })
}

impl SpawnedServer {
    /// Starts `exe --port 0 --name NAME ARGS...` and waits until it listens.
    pub fn start(exe: &Path, name: &str, args: &[&str]) -> anyhow::Result<SpawnedServer> {
        let mut child = Command::new(exe)
            .args(["--port", "0", "--name", name])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting {}: {e}", exe.display()))?;
        let mut line = String::new();
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        std::io::BufReader::new(stdout).read_line(&mut line)?;
        let words: Vec<&str> = line.split_whitespace().collect();
        anyhow::ensure!(words.len() >= 5, "the server did not start: {line:?}");
        Ok(SpawnedServer {
            addr: words[2].parse()?,
            backend: words[4].to_string(),
            child,
            name: name.to_string(),
            exe: exe.to_path_buf(),
        })
    }

    /// The master's and the workers' pids, read from the server's shared memory.
    pub fn pids(&self) -> Vec<u32> {
        server_pids(&self.name)
    }

    /// Runs `uring-server audit` against it; true when every invariant holds.
    pub fn audit(&self) -> bool {
        Command::new(&self.exe)
            .args(["--name", &self.name, "audit"])
            .output()
            .is_ok_and(|o| o.status.success())
    }
}

impl Drop for SpawnedServer {
    fn drop(&mut self) {
        // SIGTERM by pid: the server drains, unlinks its shared memory and exits.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

/// A running server's processes (master and workers), from its shared memory; empty if it
/// cannot be attached.
pub fn server_pids(name: &str) -> Vec<u32> {
    let Ok(seg) = shm::Segment::attach(name, false) else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = shm::Metrics::of(&seg)
        .workers()
        .iter()
        .map(|w| w.pid.get() as u32)
        .filter(|&p| p != 0)
        .collect();
    pids.push(seg.creator_pid());
    pids
}
