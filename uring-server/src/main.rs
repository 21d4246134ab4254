//! `uring-server`: the NS trading chatroom server, and the tools that inspect a running one.
//!
//! The command line only: everything else is the `uring_server` library (`lib.rs`).

use tracing_subscriber::EnvFilter;
use uring_server::{cli, config, master, tools};

fn main() {
    let args = match config::parse(std::env::args_os().collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("uring-server: {e:#}");
            std::process::exit(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never into a file or a pipe.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    let result = match &args.command {
        None => master::run(&args),
        Some(cli::Command::Stats { watch, format }) => tools::stats(&args.name, *watch, *format),
        Some(cli::Command::Audit { lock_timeout_ms }) => tools::audit(&args.name, *lock_timeout_ms),
        Some(cli::Command::GenCert { dir, names, days }) => {
            uring_server::tls::generate(dir, names, uring_server::tls::Validity::Days(*days)).map(
                |g| {
                    println!(
                        "wrote {} (trust this), {} and {}; client certificate {} and {}",
                        g.ca.display(),
                        g.cert.display(),
                        g.key.display(),
                        g.client_cert.display(),
                        g.client_key.display()
                    );
                    0
                },
            )
        }
        Some(cli::Command::PrintConfig) => {
            print!("{}", config::template());
            Ok(0)
        }
        Some(cli::Command::Adduser { user, password }) => {
            tools::adduser(&args.name, user, password.clone(), 0)
        }
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("uring-server: {e:#}");
            std::process::exit(2);
        }
    }
}
