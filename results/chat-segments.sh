#!/usr/bin/env bash
# Why chat-heavy costs this server more CPU per request than Redis's pub/sub: TCP segments sent
# on loopback per request (Tcp OutSegs from /proc/net/snmp, both directions, counted over the
# whole `bench-client run`, so its setup and 0.5 s warm-up are in the count, about a tenth of
# it). Servers pinned to CPU 0 (uring-server -w 1 --durability none; redis-server without
# persistence), the client to CPU 1; chat-heavy at 100 connections in 10 rooms (each message
# reaches 10 members), heartbeat as the control. Run from the repository root after
# `cargo build --release --workspace --bins`:  bash results/chat-segments.sh > results/chat-segments.txt
set -euo pipefail
cd "$(dirname "$0")/.."
bc=./target/release/bench-client
. results/pinned-servers.sh
start_pinned_servers seg
segs() { awk '/^Tcp:/ { n++; if (n == 2) print $12 }' /proc/net/snmp; }
echo "# bash results/chat-segments.sh  (commit $(git rev-parse --short HEAD); $(nproc) cores, kernel $(uname -r))"
echo "# mix pipeline protocol requests pushes tcp_segments segments_per_request req/s"
for mix in heartbeat chat-heavy; do
  for pipe in 1 16; do
    for p in ns resp ns resp; do
      port=$nsport; [ "$p" = resp ] && port=$rport
      a=$(segs)
      out=$($bc run --protocol "$p" --port "$port" --mix "$mix" --pipeline "$pipe" --connections 100 \
        --duration 4 --warmup 0.5 --client-cpus 1 2>&1)
      b=$(segs)
      req=$(echo "$out" | awk '$1=="total"{print $2}')
      rps=$(echo "$out" | awk '$1=="total"{print $4}')
      pushes=$(echo "$out" | awk '/pushes [0-9]/{print $2}')
      echo "$mix $pipe $p $req ${pushes:-0} $((b - a)) $(awk -v s=$((b - a)) -v r="$req" 'BEGIN{printf "%.2f", s/r}') $rps"
    done
  done
done
