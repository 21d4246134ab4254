#!/usr/bin/env bash
# A whole cluster on this machine, on loopback: 3 nats-server with JetStream routed into one
# cluster, and 3 uring-server nodes joined to it (a 3-replica stream).
#
#   scripts/cluster.sh up     # builds if needed, starts everything, prints the nodes' addresses
#   scripts/cluster.sh down   # stops what `up` started (by the pids it recorded)
#
# State in ${NS_CLUSTER_DIR:-/tmp/ns-cluster}: pid files, logs, NATS stores. Ports: NATS clients
# 14221-14223, routes 16221-16223, nodes 9101-9103.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${NS_CLUSTER_DIR:-/tmp/ns-cluster}
cmd=${1:-}

case "$cmd" in
up)
  command -v nats-server >/dev/null || { echo "nats-server not found: apt-get install nats-server" >&2; exit 1; }
  [ -x target/release/uring-server ] || cargo build --release -p uring-server
  mkdir -p "$dir"
  routes="nats://127.0.0.1:16221,nats://127.0.0.1:16222,nats://127.0.0.1:16223"
  for i in 1 2 3; do
    nats-server -js -a 127.0.0.1 -p 1422$i -n nats$i -sd "$dir/js$i" \
      --cluster_name ns --cluster nats://127.0.0.1:1622$i --routes "$routes" \
      >"$dir/nats$i.log" 2>&1 &
    echo $! >"$dir/nats$i.pid"
  done
  urls="nats://127.0.0.1:14221,nats://127.0.0.1:14222,nats://127.0.0.1:14223"
  for i in 1 2 3; do
    target/release/uring-server -w 2 --port 910$i --name ns-cluster-$i --node-id $i \
      --data-dir "$dir/data$i" --cluster "$urls" --cluster-replicas 3 \
      >"$dir/node$i.out" 2>"$dir/node$i.log" &
    echo $! >"$dir/node$i.pid"
  done
  for i in 1 2 3; do
    for _ in $(seq 100); do grep -q "listening on" "$dir/node$i.out" 2>/dev/null && break; sleep 0.1; done
    grep "listening on" "$dir/node$i.out" || { echo "node $i did not start: see $dir/node$i.log" >&2; exit 1; }
  done
  echo "cluster up; stop with: scripts/cluster.sh down"
  ;;
down)
  for f in "$dir"/node*.pid "$dir"/nats*.pid; do
    [ -f "$f" ] || continue
    kill "$(cat "$f")" 2>/dev/null || true
    rm -f "$f"
  done
  echo "cluster down (logs in $dir)"
  ;;
*)
  echo "usage: $0 up|down" >&2
  exit 2
  ;;
esac
