#!/usr/bin/env bash
# --durability sync against none, same binary, runs interleaved (none, sync, none, sync, ...),
# each on a freshly started server (-w 2) with a fresh data directory. Prints one line per run.
# Usage: results/durability-bench.sh PAIRS DURATION [bench-client run options...]
# e.g.   results/durability-bench.sh 4 10 --connections 200 --mix trade-heavy
# ARMS overrides the arms: each is a durability mode, then server options joined by commas,
#   e.g. ARMS="sync,--journal-prealloc,off sync,--journal-prealloc,on"
# PIN=1 runs the server (master, workers, writer) on CPU 0 and the client on CPU 1;
# WORKERS sets -w (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
pairs=$1; dur=$2; shift 2
bin=./target/release
srv_pin=(); cli_pin=()
if [ "${PIN:-0}" = 1 ]; then srv_pin=(taskset -c 0); cli_pin=(taskset -c 1); fi
for i in $(seq 1 "$pairs"); do
  for arm in ${ARMS:-none sync}; do
    mode=${arm%%,*}; extra=(); [ "$arm" != "$mode" ] && IFS=, read -r -a extra <<< "${arm#*,}"
    name="dbench-$$-$i-$mode"; dir=$(mktemp -d)
    "${srv_pin[@]}" $bin/uring-server -w "${WORKERS:-2}" --port 0 --name "$name" --durability "$mode" \
      --data-dir "$dir/d" ${SERVER_ARGS:-} "${extra[@]}" > "$dir/out" 2> "$dir/log" &
    pid=$!
    for _ in $(seq 1 200); do grep -q listening "$dir/out" 2>/dev/null && break; sleep 0.05; done
    port=$(grep -o 'listening on [^ ]*' "$dir/out" | sed 's/.*://')
    before=$($bin/uring-server stats --name "$name" --format json)
    out=$("${cli_pin[@]}" $bin/bench-client run --port "$port" --duration "$dur" --warmup 2 --server-name "$name" "$@")
    after=$($bin/uring-server stats --name "$name" --format json)
    python3 - "$arm" "$dur" "$before" "$after" "$out" <<'PY'
import json, re, sys
arm, dur, b, a, out = sys.argv[1], float(sys.argv[2]), json.loads(sys.argv[3]), json.loads(sys.argv[4]), sys.argv[5]
mode = arm.split(",")[0]
tot = [l for l in out.splitlines() if l.startswith("total")][0].split()
cpu = re.search(r"server CPU .* = ([0-9.]+) us per request", out)
jb, ja = b["journal"], a["journal"]
recs, syncs = ja["records"] - jb["records"], ja["syncs"] - jb["syncs"]
# The journal counters include the 2 s warm-up: syncs/s over warm-up + measurement.
extra = "" if mode == "none" else f"  records/sync {recs / max(syncs, 1):6.1f}  syncs/s {syncs / (dur + 2):6.0f}  sync p50 {ja['sync_p50_us']} us p99 {ja['sync_p99_us']} us"
print(f"{arm.replace(',', ' '):5} req/s {tot[3]:>8}  p50 {tot[4]:>6} us  p99 {tot[6]:>6} us  p99.9 {tot[7]:>6} us  server CPU {cpu.group(1) if cpu else '?':>5} us/req{extra}")
PY
    kill -TERM "$pid"; wait "$pid" || true
    rm -rf "$dir"
  done
done
