#!/usr/bin/env bash
# bench-client's own CPU per request, NS against RESP, at the SAME request rate: open loop at
# RATE req/s (default 50000, below what either server sustains in every mix) so that both
# sides see the same number of answers per wake-up, and the difference is the protocol's
# encoding and parsing. Servers pinned to CPU 0 (uring-server -w 1 --durability none; redis-server
# without persistence), the client to CPU 1 (one thread). Every mix REPEAT times (default 3),
# the two servers alternating. Run from the repository root after
# `cargo build --release --workspace --bins`:  bash results/client-cost.sh > results/client-cost.txt
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${RATE:-50000}; REPEAT=${REPEAT:-3}; DUR=${DUR:-5}
bc=./target/release/bench-client
. results/pinned-servers.sh
start_pinned_servers cc
echo "# bash results/client-cost.sh  (RATE=$RATE REPEAT=$REPEAT DUR=$DUR; commit $(git rev-parse --short HEAD); $(nproc) cores, kernel $(uname -r))"
echo "# mix protocol repeat req/s client_cpu_us_per_req server_cpu_us_per_req p50_us p99_us"
for mix in heartbeat balance trade-heavy chat-heavy; do
  for r in $(seq 1 "$REPEAT"); do
    order="ns resp"; [ $((r % 2)) -eq 0 ] && order="resp ns"
    for p in $order; do
      if [ "$p" = ns ]; then args=(--port "$nsport" --server-name "$name"); else args=(--port "$rport" --server-pid "$rpid"); fi
      out=$($bc run --protocol "$p" "${args[@]}" --mix "$mix" --connections 100 --rate "$RATE" \
        --duration "$DUR" --warmup 1 --client-cpus 1 --seed $((r * 10 + 7)) 2>&1)
      reqs=$(echo "$out" | awk '$1=="total"{print $4}')
      p50=$(echo "$out" | awk '$1=="total"{print $5}'); p99=$(echo "$out" | awk '$1=="total"{print $7}')
      ccpu=$(echo "$out" | awk '/client CPU/{print $6}'); scpu=$(echo "$out" | awk '/server CPU/{print $6}')
      echo "$mix $p $r $reqs $ccpu $scpu $p50 $p99"
    done
  done
done
