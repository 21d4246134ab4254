# Sourced by the scripts beside it that start one uring-server per run (push-batching.sh,
# workers-scale.sh). Sets srv, bc and a temporary directory `dir` (removed on exit); prints the
# header line naming the script, the commit, the cores and the kernel.
#   start_ns CPUS NAME PORT ARGS...  starts uring-server (pinned to CPUS, or anywhere for "any")
#                                    with --name NAME --port PORT ARGS, and waits until it listens
#   stop_ns                          SIGINT, then waits for it (its shared memory goes with it)
srv=./target/release/uring-server bc=./target/release/bench-client
dir=$(mktemp -d); trap 'rm -rf "$dir"' EXIT
echo "# bash $0  (commit $(git rev-parse --short HEAD); $(nproc) cores, kernel $(uname -r))"
start_ns() {
  local cpus=$1 name=$2 port=$3 t; shift 3
  if [ "$cpus" = any ]; then
    "$srv" --name "$name" --port "$port" "$@" >/dev/null 2>&1 &
  else
    taskset -c "$cpus" "$srv" --name "$name" --port "$port" "$@" >/dev/null 2>&1 &
  fi
  nspid=$!
  for t in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "uring-server did not listen on $port" >&2; exit 1
}
stop_ns() { kill -INT "$nspid"; wait "$nspid" || true; }
