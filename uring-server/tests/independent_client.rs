//! Runs `independent_client.py`, a client written from docs/PROTOCOL.md alone in Python's
//! standard library, against the real server on both backends.

use test_support::*;

#[test]
fn a_client_written_from_the_document_alone_interoperates() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/independent_client.py");
    if std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_err()
    {
        // A test that cannot run fails, unless the opt-out says so out loud.
        assert!(
            std::env::var_os("NS_ALLOW_NO_PYTHON").is_some(),
            "python3 is not installed: install it (apt-get install python3), or set \
             NS_ALLOW_NO_PYTHON=1 to skip this test"
        );
        eprintln!("SKIPPED (NS_ALLOW_NO_PYTHON is set): python3 is not installed");
        return;
    }
    for backend in BACKENDS {
        let server = Server::start("py", &["-w", "2", "--io", backend]);
        let out = std::process::Command::new("python3")
            .arg(script)
            .arg(server.addr.ip().to_string())
            .arg(server.addr.port().to_string())
            .output()
            .expect("run python3");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{backend}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("all checks passed"), "{stdout}");
    }
}
