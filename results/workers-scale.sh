#!/usr/bin/env bash
# Workers on 2 cores: uring-server -w 1, 2, 4 and 8 (--steer auto, the default: by CPU only with
# more workers than CPUs), and -w 8 --steer hash (the kernel's spread: eight processes
# time-slicing two cores), HEARTBEAT from 200 connections, one request in flight each, nothing
# pinned (server and client share both cores), 4 s measured after 1 s, every configuration 3
# times, in turn. Run from the repository root after `cargo build --release --workspace --bins`:
#   bash results/workers-scale.sh > results/workers-scale.txt
set -euo pipefail
cd "$(dirname "$0")/.."
. results/one-server.sh
echo "# workers steer repeat req_s p99_us server_us_per_req client_us_per_req workers_seen"
for r in 1 2 3; do
  for cfg in "1 auto" "2 auto" "4 auto" "8 auto" "8 hash"; do
    set -- $cfg; w=$1; steer=$2
    name="ws-$$-$w-$steer"; port=$((20000 + $$ % 10000))
    start_ns any "$name" "$port" -w "$w" --steer "$steer" --durability none
    sleep 0.3
    "$bc" run --port "$port" --mix heartbeat --connections 200 --duration 4 --warmup 1 \
      --server-name "$name" > "$dir/run.out" 2>&1
    stop_ns
    awk -v w="$w" -v s="$steer" -v r="$r" '
      $1=="total" {rps=$4; p99=$7}
      /server CPU/ {srv=$6}
      /client CPU/ {cli=$6; seen=$NF}
      END {print w, s, r, rps, p99, srv, cli, seen}' "$dir/run.out"
  done
done
