#!/usr/bin/env bash
# The batching wait (--batch-wait-us, docs/DESIGN.md 5.1), interleaved: the same uring-server
# binary with the wait at 0 (off), 10, 20 (the default) and 50 µs, on chat-heavy (pipeline 1
# and 16), fan-out (pipeline 1) and heartbeat (pipeline 1: each answer is its own send, so the
# wait must not engage). Server pinned to CPU 0 (-w 1, --durability none), client (one thread)
# to CPU 1, 100 connections; 4 s measured after 1 s; every cell 3 times, the settings in turn.
# After each run, the worker's own counters (loop turns, sends, chat wake-ups) from `stats`.
# Run from the repository root after `cargo build --release --workspace --bins`:
#   bash results/push-batching.sh > results/push-batching.txt
set -euo pipefail
cd "$(dirname "$0")/.."
. results/one-server.sh
echo "# mix pipeline batch_wait_us repeat req_s p99_us pushes_s push_p99_us server_us_per_req client_us_per_req turns sends sends_per_turn wakes"
for cell in "chat-heavy 1" "chat-heavy 16" "fanout 1" "heartbeat 1"; do
  set -- $cell; mix=$1; pipe=$2
  for r in 1 2 3; do
    for wait in 0 10 20 50; do
      name="pb-$$-$wait"; port=$((20000 + $$ % 10000))
      start_ns 0 "$name" "$port" -w 1 --durability none --batch-wait-us "$wait" \
        --flood-burst 1000000 --flood-per-sec 1000000
      "$bc" run --port "$port" --mix "$mix" --pipeline "$pipe" --connections 100 --duration 4 \
        --warmup 1 --client-cpus 1 --server-name "$name" > "$dir/run.out" 2>&1
      "$srv" stats --name "$name" --format json > "$dir/stats.json"
      stop_ns
      python3 - "$mix" "$pipe" "$wait" "$r" "$dir/run.out" "$dir/stats.json" <<'PY'
import json, re, sys
mix, pipe, wait, rep, run, stats = sys.argv[1:]
t = open(run).read()
tot = re.search(r"^total\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", t, re.M)
push = re.search(r"pushes \d+ \((\d+)/s\).*p99 (\d+) us", t)
cpu = lambda who: re.search(who + r" CPU [\d.]+ s = ([\d.]+) us", t).group(1)
s = json.load(open(stats))
print(mix, pipe, wait, rep, tot.group(3), tot.group(6), push.group(1) if push else 0,
      push.group(2) if push else 0, cpu("server"), cpu("client"), s["loop_turns"], s["sends"],
      "%.1f" % (s["sends"] / max(1, s["loop_turns"])), s["chat_wakes"])
PY
    done
  done
done
