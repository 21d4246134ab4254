//! Test support: unique segment names, users, and helper processes that are always reaped.

#![allow(dead_code)]

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use shm::{Capacities, Credentials, LockMode, Segment, Users};

/// A segment name no other test, run or process uses.
pub fn unique_name(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "test-{tag}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Small capacities for tests.
pub fn small_caps() -> Capacities {
    Capacities {
        users: 256,
        rooms: 8,
        members_per_room: 16,
        room_ring: 16,
        txn_log: 1 << 12,
        results_per_user: 4,
        workers: 8,
    }
}

/// Creates a segment; it is unlinked when dropped, panics included.
pub fn create(tag: &str, caps: Capacities, mode: LockMode) -> Segment {
    let (seg, _) = Segment::create(&unique_name(tag), caps, mode).expect("create segment");
    seg
}

/// Dummy credentials: registration only checks their shape.
pub fn creds() -> Credentials {
    Credentials {
        salt: vec![7; 16],
        iterations: shm::limits::ITERATIONS_MIN,
        stored_key: [1; 32],
        server_key: [2; 32],
    }
}

/// Registers users `u1..=un`; returns their ids (1..=n).
pub fn register_users(seg: &Segment, n: u32) -> Vec<u32> {
    let users = Users::of(seg);
    (1..=n)
        .map(|i| {
            users
                .register(&format!("u{i}"), &creds())
                .expect("register")
        })
        .collect()
}

/// The segment's instance name (without the `/ns-` prefix).
pub fn instance(seg: &Segment) -> String {
    seg.name().trim_start_matches("/ns-").to_string()
}

/// A helper process whose stdout is collected by a thread; killed and reaped on drop.
pub struct Helper {
    pub child: Child,
    out: Arc<Mutex<Vec<u8>>>,
    reader: Option<JoinHandle<()>>,
}

impl Helper {
    pub fn spawn(args: &[String]) -> Helper {
        let mut child = Command::new(env!("CARGO_BIN_EXE_shm-helper"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn shm-helper");
        let mut stdout = child.stdout.take().expect("piped stdout");
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&out);
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            loop {
                match stdout.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => sink
                        .lock()
                        .expect("output lock")
                        .extend_from_slice(&buf[..n]),
                }
            }
        });
        Helper {
            child,
            out,
            reader: Some(reader),
        }
    }

    /// Bytes of output collected so far.
    pub fn output_len(&self) -> usize {
        self.out.lock().expect("output lock").len()
    }

    /// Waits for exit and all output; returns the output and whether it exited 0.
    pub fn finish(mut self) -> (Vec<u8>, bool) {
        let (out, status) = self.reap();
        (out, status.success())
    }

    /// SIGKILL, reap, and collect what it wrote before dying, with its exit status.
    pub fn kill9(mut self) -> (Vec<u8>, ExitStatus) {
        let _ = self.child.kill();
        self.reap()
    }

    fn reap(&mut self) -> (Vec<u8>, ExitStatus) {
        let status = self.child.wait().expect("wait for helper");
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        (
            std::mem::take(&mut *self.out.lock().expect("output lock")),
            status,
        )
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        if self.reader.is_some() {
            let _ = self.child.kill();
            let _ = self.reap();
        }
    }
}
