# Sourced by the comparison scripts beside it (client-cost.sh, chat-segments.sh, chat-turns.sh):
# starts uring-server (-w 1, --durability none) and redis-server (no persistence), both pinned
# to CPU 0, on ports derived from this shell's pid, with their files in a temporary directory;
# waits until both accept connections; stops both by pid and removes the directory on exit.
# Sets: name (the uring-server's --name), nsport, rport, nspid, rpid, dir.
start_pinned_servers() {
  name="$1-$$"; dir=$(mktemp -d); nsport=$((20000 + $$ % 10000)); rport=$((nsport + 1))
  taskset -c 0 ./target/release/uring-server -w 1 --durability none --name "$name" \
    --port "$nsport" --data-dir "$dir/ns" --flood-burst 1000000 --flood-per-sec 1000000 \
    >/dev/null 2>&1 & nspid=$!
  taskset -c 0 redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$dir" --logfile "$dir/redis.log" >/dev/null 2>&1 & rpid=$!
  trap 'kill $nspid $rpid 2>/dev/null; wait $nspid $rpid 2>/dev/null; rm -rf "$dir"' EXIT
  local port tries
  for port in "$nsport" "$rport"; do
    for tries in $(seq 1 100); do
      (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
      [ "$tries" = 100 ] && { echo "a server did not listen on $port" >&2; exit 1; }
      sleep 0.1
    done
  done
}
