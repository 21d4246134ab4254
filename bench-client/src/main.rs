//! `bench-client`: the load generator for the NS server.
//!
//! `bench-client run --connections 200 --mix trade-heavy --duration 30 --out results/run.csv`

#![forbid(unsafe_code)]

use bench_client::cli::{Args, Command};
use bench_client::commands;
use clap::Parser;

fn main() {
    let args = Args::parse();
    let result = match args.command {
        Command::Run(r) => commands::run(r),
        Command::Sweep(s) => commands::sweep(s),
        Command::Chat(c) => commands::chat(c),
        Command::Chaos(c) => commands::chaos(c),
        Command::Peers(p) => bench_client::peers::peers(p),
        Command::Handshakes(h) => bench_client::handshakes::handshakes(h),
    };
    if let Err(e) = result {
        eprintln!("bench-client: {e:#}");
        std::process::exit(1);
    }
}
