#!/usr/bin/env bash
# Prefetch without head-of-line blocking, on this machine: two agents of one
# slot each (and a prefetch of one); a 5 s job on agent `a`, a 1 s job on
# agent `b`, then a short job, which the orchestrator queues on `a` (both
# are full; ties go to the smaller worker id). Prints how long `hodei run`
# for the short job takes and where it ran. Before the orchestrator took
# prefetched jobs back (HWP `RevokeAssignment`) it waited for the 5 s job;
# now it runs on `b` as soon as `b`'s job ends.
#
#   examples/prefetch/takeback.sh                       # target/release/hodei
#   HODEI_BIN=target/debug/hodei examples/prefetch/takeback.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=$(realpath "${HODEI_BIN:-target/release/hodei}")
[ -x "$bin" ] || { echo "takeback.sh: build first: cargo build --release" >&2; exit 1; }
dir=$(mktemp -d)
pids=()
cleanup() {
  # The agents would drain (and wait for an orchestrator to take the 5 s
  # job's result): stop everything at once.
  kill -9 "${pids[@]}" 2>/dev/null || true
  for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
  done
  rm -rf "$dir"
}
trap cleanup EXIT
port=$((30000 + RANDOM % 20000))
"$bin" server --listen "127.0.0.1:$port" --data-dir "$dir/data" >"$dir/server.log" 2>&1 &
pids+=($!)
disown
for _ in $(seq 1 100); do [ -s "$dir/data/agent.token" ] && break; sleep 0.1; done
export HODEI_SERVER="http://127.0.0.1:$port"
HODEI_TOKEN=$(cat "$dir/data/admin.token")
HODEI_JOIN_TOKEN=$(cat "$dir/data/agent.token")
export HODEI_TOKEN HODEI_JOIN_TOKEN
for name in a b; do
  "$bin" agent --name "$name" --slots 1 --prefetch 1 --no-docker \
    --work-dir "$dir/work-$name" >"$dir/agent-$name.log" 2>&1 &
  pids+=($!)
  disown
done
for _ in $(seq 1 100); do
  [ "$("$bin" workers 2>/dev/null | grep -c ready)" -ge 2 ] && break
  sleep 0.1
done
"$bin" run --detach --id long -- sleep 5 >/dev/null
"$bin" run --detach --id mid -- sleep 1 >/dev/null
sleep 0.3
start=$(date +%s%N)
"$bin" run --id short -- true
end=$(date +%s%N)
echo "short job done after $(( (end - start) / 1000000 )) ms"
"$bin" job short | grep -E '^ *(worker|attempt)'
