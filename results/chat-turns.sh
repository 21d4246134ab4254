#!/usr/bin/env bash
# Loop passes per request under chat-heavy, uring-server against Redis: system calls of the
# server process during 2 s in the middle of a closed-loop run (perf stat, tracepoints), next to
# the run's req/s. A uring-server worker's loop turn is one io_uring_enter; a pass of Redis's
# event loop is one epoll_wait. Servers pinned to CPU 0 (uring-server -w 1 --durability none;
# redis-server without persistence), the client (one thread) to CPU 1; 100 connections in 10
# rooms. Needs perf (linux-perf). Run from the repository root after
# `cargo build --release --workspace --bins`:  bash results/chat-turns.sh > results/chat-turns.txt
set -euo pipefail
cd "$(dirname "$0")/.."
bc=./target/release/bench-client
. results/pinned-servers.sh
start_pinned_servers turns
worker=$(./target/release/uring-server stats --name "$name" --format json \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["workers"][0]["pid"])')
echo "# bash results/chat-turns.sh  (commit $(git rev-parse --short HEAD); $(nproc) cores, kernel $(uname -r))"
events=syscalls:sys_enter_io_uring_enter,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_write,syscalls:sys_enter_read,syscalls:sys_enter_futex
for p in ns resp ns resp; do
  if [ "$p" = ns ]; then port=$nsport; pid=$worker; else port=$rport; pid=$rpid; fi
  $bc run --protocol "$p" --port "$port" --mix chat-heavy --connections 100 --duration 5 \
    --warmup 1 --client-cpus 1 > "$dir/run.out" 2>&1 & run=$!
  sleep 2.5
  perf stat -x, -e "$events" -p "$pid" -- sleep 2 2> "$dir/stat.out"
  wait $run
  rps=$(awk '$1=="total"{print $4}' "$dir/run.out")
  ccpu=$(awk '/client CPU/{print $6}' "$dir/run.out")
  echo "## $p: $rps req/s, client CPU $ccpu us/request; server system calls in 2 s:"
  awk -F, '{printf "%12s  %s\n", $1, $3}' "$dir/stat.out"
  awk -F, -v r="$rps" '$3 ~ /io_uring_enter|epoll_wait/ && $1 > 0 {printf "  loop passes/s %.0f, requests per pass %.1f\n", $1/2, r/($1/2)}' "$dir/stat.out"
done
