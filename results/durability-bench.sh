#!/usr/bin/env bash
# --durability sync against none, same binary, runs interleaved (none, sync, none, sync, ...),
# each on a freshly started server (-w 2) with a fresh data directory. Prints one line per run.
# Usage: results/durability-bench.sh PAIRS DURATION [bench-client run options...]
# e.g.   results/durability-bench.sh 4 10 --connections 200 --mix trade-heavy
set -euo pipefail
cd "$(dirname "$0")/.."
pairs=$1; dur=$2; shift 2
bin=./target/release
for i in $(seq 1 "$pairs"); do
  for mode in none sync; do
    name="dbench-$$-$i-$mode"; dir=$(mktemp -d)
    $bin/uring-server -w 2 --port 0 --name "$name" --durability "$mode" --data-dir "$dir/d" ${SERVER_ARGS:-} \
      > "$dir/out" 2> "$dir/log" &
    pid=$!
    for _ in $(seq 1 200); do grep -q listening "$dir/out" 2>/dev/null && break; sleep 0.05; done
    port=$(grep -o 'listening on [^ ]*' "$dir/out" | sed 's/.*://')
    before=$($bin/uring-server stats --name "$name" --format json)
    out=$($bin/bench-client run --port "$port" --duration "$dur" --warmup 2 --server-name "$name" "$@")
    after=$($bin/uring-server stats --name "$name" --format json)
    python3 - "$mode" "$dur" "$before" "$after" "$out" <<'PY'
import json, re, sys
mode, dur, b, a, out = sys.argv[1], float(sys.argv[2]), json.loads(sys.argv[3]), json.loads(sys.argv[4]), sys.argv[5]
tot = [l for l in out.splitlines() if l.startswith("total")][0].split()
cpu = re.search(r"server CPU .* = ([0-9.]+) us per request", out)
jb, ja = b["journal"], a["journal"]
recs, syncs = ja["records"] - jb["records"], ja["syncs"] - jb["syncs"]
# The journal counters include the 2 s warm-up: syncs/s over warm-up + measurement.
extra = "" if mode == "none" else f"  records/sync {recs / max(syncs, 1):6.1f}  syncs/s {syncs / (dur + 2):6.0f}  sync p50 {ja['sync_p50_us']} us p99 {ja['sync_p99_us']} us"
print(f"{mode:5} req/s {tot[3]:>8}  p50 {tot[4]:>6} us  p99 {tot[6]:>6} us  p99.9 {tot[7]:>6} us  server CPU {cpu.group(1) if cpu else '?':>5} us/req{extra}")
PY
    kill -TERM "$pid"; wait "$pid" || true
    rm -rf "$dir"
  done
done
