#!/usr/bin/env bash
# New connections per second on one worker, TCP against TLS: each connection opened (TLS: a
# full TLS 1.3 handshake, X25519MLKEM768, ECDSA P-256 certificate verified against the test CA;
# tls-resume: resumed from a ticket of an earlier connection), one HELLO answered, closed. uring-server -w 1 pinned to CPU 0, the client to CPU 1 (2 cores
# in all, shared by server and client). Server CPU per connection from /proc/<worker>/stat.
# Run from the repository root after `cargo build --release --workspace --bins`.
set -euo pipefail
bin=./target/release
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
"$bin/uring-server" gen-cert --dir "$dir/pki" >/dev/null
for round in 1 2 3; do
  for mode in tcp tls tls-resume; do
    sargs=(); cargs=()
    if [ "$mode" != tcp ]; then
      sargs=(--tls-cert "$dir/pki/cert.pem" --tls-key "$dir/pki/key.pem")
      cargs=(--tls --tls-ca "$dir/pki/ca.pem")
    fi
    if [ "$mode" = tls-resume ]; then cargs+=(--resume); fi
    taskset -c 0 "$bin/uring-server" --name "hs-$$" --port 0 -w 1 --durability none \
      "${sargs[@]}" >"$dir/out" 2>"$dir/err" &
    sp=$!
    for _ in $(seq 100); do grep -q "listening on" "$dir/out" && break; sleep 0.05; done
    port=$(grep -o '127.0.0.1:[0-9]*' "$dir/out" | cut -d: -f2)
    worker=$(pgrep -P "$sp" | head -1)
    t0=$(awk '{print $14 + $15}' "/proc/$worker/stat")
    line=$("$bin/bench-client" handshakes --port "$port" "${cargs[@]}" --client-cpus 1 \
      --duration 3 --warmup 0)
    t1=$(awk '{print $14 + $15}' "/proc/$worker/stat")
    n=$(echo "$line" | sed -E 's/.*\(([0-9]+) in.*/\1/')
    kill "$sp"; wait "$sp" || true
    ticks=$(getconf CLK_TCK)
    echo "round $round $mode: $line; server worker CPU $(( (t1 - t0) * 1000000 / ticks / n )) us per connection"
  done
done
