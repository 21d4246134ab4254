#!/usr/bin/env bash
# The seed's suggested test matrix at its stated length: 100 connections mixed at 32, 256 and
# 1024-byte payloads, and 200 connections trade-heavy, each against 1, 2, 4 and 8 workers, 30 s
# per run after 2 s of warm-up, every cell 3 times, interleaved. bench-client starts its own
# server (--durability sync, a temporary data directory) per worker count; server, journal
# writer and client share the machine's cores (not pinned). About 30 minutes on 2 cores.
# Run from the repository root after `cargo build --release --workspace --bins`:
#   bash results/matrix.sh && gnuplot gnuplot/matrix.gp
set -euo pipefail
cd "$(dirname "$0")/.."
bc=./target/release/bench-client
rm -f results/matrix-mixed.csv results/matrix-trade.csv
$bc sweep --mix mixed --connections 100 --payload 32,256,1024 --workers 1,2,4,8 \
  --duration 30 --warmup 2 --repeat 3 --out results/matrix-mixed.csv \
  | tee results/matrix-mixed-table.txt
$bc sweep --mix trade-heavy --connections 200 --payload 32 --workers 1,2,4,8 \
  --duration 30 --warmup 2 --repeat 3 --out results/matrix-trade.csv \
  | tee results/matrix-trade-table.txt
