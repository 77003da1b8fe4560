#!/usr/bin/env bash
# User-space instructions per proxied request, counted by valgrind's callgrind:
# repeatable whatever else the machine is doing, unlike wall-clock numbers on a
# shared 2-core box. Compares builds in one run; the first is the baseline and
# each other build is reported as a ratio to it. See docs/BENCHMARKS.md.
#
#   cargo build --release -p keyward -p xtask
#   benches/gateway_instructions.sh OLD_KEYWARD_BIN target/release/keyward
#   LIMITS=1 benches/gateway_instructions.sh target/release/keyward   # keyward+limits
#   KEEP=/tmp/cg benches/gateway_instructions.sh BIN   # keep the dumps for callgrind_annotate
#
# Each build serves with one worker under callgrind; 4 connections of
# `xtask bench load` warm up for 2 s, counters are zeroed, 6 s are measured, and
# the exact request count comes from keyward's own usage API. Needs valgrind.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
XTASK=${XTASK_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/xtask}
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
command -v valgrind >/dev/null || { echo "valgrind is required (apt-get install valgrind)" >&2; exit 2; }
[ -x "$XTASK" ] || { echo "build the xtask first: cargo build --release -p xtask" >&2; exit 2; }
[ $# -ge 1 ] || { echo "usage: $0 KEYWARD_BIN [KEYWARD_BIN...]" >&2; exit 2; }

key_flags=()
load_flags=()
if [ "${LIMITS:-0}" = 1 ]; then
  key_flags=(--budget-usd 1000000 --rpm 1000000000 --tpm 4000000000 --max-concurrent 100000)
  load_flags=(--limited)
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
json_field() { python3 -c "import json,sys; print(json.load(sys.stdin)[\"$1\"])"; }

declare -A baseline
for bin in "$@"; do
  dir=$WORK/$(basename "$bin")-$RANDOM; mkdir -p "$dir/data"
  sim=$(free_port); kw=$(free_port)
  "$bin" simulate --listen "127.0.0.1:$sim" >"$dir/sim.log" 2>&1 &
  sim_pid=$!
  # One worker (KEYWARD_WORKERS, which builds without workers ignore); an
  # upstream key, which the gateway swaps in as in production (and which
  # builds since issue 17 require for a real upstream).
  OPENAI_API_KEY=sk-benchmark-not-a-real-key KEYWARD_WORKERS=1 valgrind --tool=callgrind --callgrind-out-file="$dir/cg.%p.out" \
    "$bin" serve --listen "127.0.0.1:$kw" --data-dir "$dir/data" \
    --upstream "http://127.0.0.1:$sim/v1" --metrics-listen off >"$dir/serve.log" 2>&1 &
  kw_pid=$!
  for _ in $(seq 600); do [ -f "$dir/data/initial-admin-key" ] && break; sleep 0.1; done
  [ -f "$dir/data/initial-admin-key" ] || { cat "$dir/serve.log" >&2; exit 1; }
  export KEYWARD_URL=http://127.0.0.1:$kw KEYWARD_ADMIN_KEY
  KEYWARD_ADMIN_KEY=$(cat "$dir/data/initial-admin-key")
  # Keys go into existing projects; builds from before `projects create`
  # have no such command and create the project with the key.
  "$bin" projects create bench --json >/dev/null 2>&1 || true
  created=$("$bin" keys create --project bench --name bench "${key_flags[@]}" --json)
  key=$(echo "$created" | json_field key); id=$(echo "$created" | json_field id)
  for mode in plain stream; do
    stream=(); [ $mode = stream ] && stream=(--stream)
    "$XTASK" bench load "127.0.0.1:$kw" --connections 4 --duration 2 --key "$key" "${stream[@]}" "${load_flags[@]}" >/dev/null
    before=$("$bin" usage --key "$id" --json | json_field requests)
    callgrind_control -z "$kw_pid" >/dev/null 2>&1
    "$XTASK" bench load "127.0.0.1:$kw" --connections 4 --duration 6 --key "$key" "${stream[@]}" "${load_flags[@]}" >/dev/null
    callgrind_control -d "$mode" "$kw_pid" >/dev/null 2>&1
    after=$("$bin" usage --key "$id" --json | json_field requests)
    dump=$(ls -t "$dir"/cg.*.out.* | head -1)
    ir=$(grep -h '^summary:\|^totals:' "$dump" | head -1 | awk '{print $2}')
    per=$((ir / (after - before)))
    ratio=""
    if [ -n "${baseline[$mode]:-}" ]; then
      ratio=$(python3 -c "print(f' ({$per / ${baseline[$mode]}:.2f}x the first build)')")
    else
      baseline[$mode]=$per
    fi
    if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP"; cp "$dump" "$KEEP/$(basename "$bin")-$mode.out"; fi
    echo "$bin $mode: $((after - before)) requests, $per instructions/request$ratio"
  done
  kill "$kw_pid"; wait "$kw_pid" 2>/dev/null || true
  kill "$sim_pid"; wait "$sim_pid" 2>/dev/null || true
done
