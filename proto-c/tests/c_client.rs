//! The C client (`clients/c/ns_client.c`), built with `make` against libnsproto.a and against
//! libnsproto.so.1 (and with AddressSanitizer), run against the real server: it registers, logs
//! in with SCRAM, deposits, transfers, reads its balance and history, chats and heartbeats.
//! Needs `cc` and `make` (CI installs them); the sanitizer run needs a compiler with
//! `-fsanitize=address` and fails without one unless `NS_NO_ASAN=1` says to skip it.

use std::path::{Path, PathBuf};
use std::process::Command;

use bench_client::server::SpawnedServer;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The target directory's profile directory this test runs from (target/debug).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps")
        .to_path_buf()
}

/// Where this build put libnsproto.a and libnsproto.so: `cargo test` leaves them in `deps/`
/// (built with the rlib these tests link, so never stale); `cargo build` also copies them up.
fn lib_dir() -> PathBuf {
    profile_dir().join("deps")
}

/// `make -C clients/c TARGET` into a build directory of this test's own.
fn make(target: &str, build: &Path) {
    let out = Command::new("make")
        .arg("-C")
        .arg(root().join("clients/c"))
        .arg(target)
        .arg(format!("LIBDIR={}", lib_dir().display()))
        .arg(format!("BUILD={}", build.display()))
        .arg("NO_CARGO=1")
        .output()
        .expect("make is installed (CI installs it)");
    assert!(
        out.status.success(),
        "make {target} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A build directory of this test's own, removed when the test ends, passed or not.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("ns-c-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn server() -> SpawnedServer {
    server_with(&[])
}

fn server_with(extra: &[String]) -> SpawnedServer {
    let exe = bench_client::server::locate()
        .expect("uring-server is built beside the tests (cargo test --workspace builds it)");
    let name = format!("cc-{}-{}", std::process::id(), rand_tag());
    let mut args: Vec<&str> = vec!["-w", "2", "--max-users", "1000"];
    args.extend(extra.iter().map(String::as_str));
    SpawnedServer::start(&exe, &name, &args).expect("start server")
}

fn rand_tag() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Runs a client binary; returns its stdout after checking it passed every step.
fn run_client(bin: &Path, server: &SpawnedServer, user: &str) -> (String, String) {
    run_client_env(bin, server, user, &[])
}

fn run_client_env(
    bin: &Path,
    server: &SpawnedServer,
    user: &str,
    env: &[(&str, &str)],
) -> (String, String) {
    let out = Command::new(bin)
        .args([
            "127.0.0.1",
            &server.addr.port().to_string(),
            user,
            "c-secret",
        ])
        .envs(env.iter().copied())
        .output()
        .expect("run the C client");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{} failed: {}\n{stdout}\n{stderr}",
        bin.display(),
        out.status
    );
    for line in [
        format!("registered {user} id="),
        format!("logged in {user} id="),
        format!("logged in {user}-peer id="),
        "deposit 1000 balance=1000 txn=".to_string(),
        format!("transfer 250 to {user}-peer balance=750 txn="),
        "balance=750".to_string(),
        "history entries=2".to_string(),
        "joined c-lobby id=".to_string(),
        format!("push to {user}-peer: room="),
        format!("from={user} text=hello from C"),
        "heartbeats 3".to_string(),
        "OK".to_string(),
    ] {
        assert!(
            stdout.contains(&line),
            "missing {line:?} in:\n{stdout}\n{stderr}"
        );
    }
    assert!(!stderr.contains("Sanitizer"), "{stderr}");
    (stdout, stderr)
}

#[test]
fn c_client_over_tls_verifies_the_certificate_and_runs_every_step() {
    let dir = TempDir::new("client-tls");
    let build = dir.0.clone();
    make("all", &build);
    let pki = bench_client::server::TestPki::new().expect("a test PKI");
    let server = server_with(&pki.server_args());
    let ca = pki.certs.ca.to_string_lossy().into_owned();
    let (out, _) = run_client_env(
        &build.join("ns_client_static"),
        &server,
        "c-tls",
        &[("NS_TLS_CA", &ca)],
    );
    assert!(out.contains("tls verified against"), "{out}");
    // A CA that did not sign the server's certificate: the handshake is refused.
    let other = bench_client::server::TestPki::new().expect("another PKI");
    let bad = Command::new(build.join("ns_client_static"))
        .args(["127.0.0.1", &server.addr.port().to_string(), "c-tls2", "x"])
        .env("NS_TLS_CA", &other.certs.ca)
        .output()
        .expect("run the C client");
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("FAIL connect: NS_ERR_TLS"), "{stderr}");
    // Plaintext against the TLS port: refused too, never answered in the clear.
    let plain = Command::new(build.join("ns_client_static"))
        .args(["127.0.0.1", &server.addr.port().to_string(), "c-tls3", "x"])
        .output()
        .expect("run the C client");
    assert!(!plain.status.success());
}

#[test]
fn c_client_static_and_shared_register_log_in_trade_and_chat_against_the_server() {
    let dir = TempDir::new("client");
    let build = dir.0.clone();
    make("all", &build);
    let server = server();
    // With the logging hook on: a structured line for every frame.
    let (out, log) = run_client_env(
        &build.join("ns_client_static"),
        &server,
        "c-static",
        &[("NS_CLIENT_LOG", "1")],
    );
    assert!(out.contains("(server signature checked)"));
    for needle in [
        "nsproto pid=",
        "event=send",
        "event=recv",
        "event=push",
        "opcode=DEPOSIT status=OK",
        "opcode=REGISTER status=OK",
        "opcode=CHAT_BROADCAST",
    ] {
        assert!(log.contains(needle), "log lacks {needle:?}:\n{log}");
    }
    run_client(&build.join("ns_client_shared"), &server, "c-shared");
    // The shared build loads libnsproto.so.1 by its soname.
    let ldd = Command::new("ldd")
        .arg(build.join("ns_client_shared"))
        .output()
        .expect("ldd");
    assert!(
        String::from_utf8_lossy(&ldd.stdout).contains("libnsproto.so.1 =>"),
        "{}",
        String::from_utf8_lossy(&ldd.stdout)
    );
}

/// True when `cc -fsanitize=address` builds and runs a program here.
fn asan_works(dir: &Path) -> bool {
    let src = dir.join("probe.c");
    let bin = dir.join("probe");
    std::fs::create_dir_all(dir).expect("mkdir");
    std::fs::write(&src, "int main(void) { return 0; }\n").expect("write probe");
    Command::new("cc")
        .arg("-fsanitize=address")
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .status()
        .is_ok_and(|s| s.success())
        && Command::new(&bin).status().is_ok_and(|s| s.success())
}

#[test]
fn c_client_built_with_address_sanitizer_runs_clean_and_leaks_nothing() {
    let dir = TempDir::new("asan");
    let build = dir.0.clone();
    if !asan_works(&build) {
        assert!(
            std::env::var_os("NS_NO_ASAN").is_some(),
            "this compiler cannot build with -fsanitize=address; set NS_NO_ASAN=1 to skip"
        );
        eprintln!("skipped: no AddressSanitizer here (NS_NO_ASAN set)");
        return;
    }
    make("asan", &build);
    let server = server();
    // LeakSanitizer runs at exit: every response, push and handle must have been freed.
    run_client(&build.join("ns_client_asan"), &server, "c-asan");
}

#[test]
fn the_shared_library_exports_the_c_api_and_nothing_of_rust() {
    let so = lib_dir().join("libnsproto.so");
    let out = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(&so)
        .output()
        .expect("nm (binutils) is installed");
    assert!(out.status.success(), "nm {}", so.display());
    let text = String::from_utf8_lossy(&out.stdout);
    let symbols: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    assert!(
        symbols.contains(&"ns_call") && symbols.contains(&"ns_decoder_decode"),
        "{text}"
    );
    let foreign: Vec<&&str> = symbols.iter().filter(|s| !s.starts_with("ns_")).collect();
    assert!(foreign.is_empty(), "exported beyond the C API: {foreign:?}");
    // The soname carries the ABI version.
    let elf = Command::new("readelf")
        .arg("-d")
        .arg(&so)
        .output()
        .expect("readelf");
    assert!(String::from_utf8_lossy(&elf.stdout).contains("Library soname: [libnsproto.so.1]"));
}
