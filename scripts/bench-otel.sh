#!/usr/bin/env bash
# The cost of OpenTelemetry span export: wrk against the executor with export off and on, in
# interleaved rounds of the same run (the machine's speed drifts between runs).
#
#   scripts/bench-otel.sh                     # 5 rounds of 10 s per side, 32 connections
#   ROUNDS=3 DURATION=5 scripts/bench-otel.sh
#   BENCH_IP=127.0.0.21 scripts/bench-otel.sh # another loopback address, if the ports are taken
#   OTEL_ENDPOINT=http://collector:4318 scripts/bench-otel.sh  # export somewhere else
#
# Both sides: a fresh release executor (empty data directory, task adapter) delivering its events
# to the simulator's Bucket and Karma (`pillar-sim up --no-executor`). "On" adds
# OTEL_EXPORTER_OTLP_ENDPOINT pointing at the simulator's OTLP receiver (its control port), which
# decodes and keeps every span on the same machine: the ratio includes the receiver's share of
# the cores, as a collector on the same host would (OTEL_ENDPOINT sends them elsewhere; the spans
# received are then not counted). Rounds alternate which side goes first.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh

DURATION=${DURATION:-10}
CONNS=${CONNS:-32}
ROUNDS=${ROUNDS:-5}
IP=${BENCH_IP:-127.0.0.1}
PORT=${EXECUTOR_PORT:-8004}

command -v wrk > /dev/null || { echo "wrk is needed (apt-get install wrk)" >&2; exit 1; }
echo "==> building (release)"
cargo build --release --locked -p workflow-executor -p pillar-sim
SIM=target/release/pillar-sim
EXE=target/release/workflow-executor
CONTROL=http://$IP:8090
ENDPOINT=${OTEL_ENDPOINT:-$CONTROL}

for port in 8000 8001 8002 8010 2525 8090 "$PORT"; do
  if (exec 3<>"/dev/tcp/$IP/$port") 2>/dev/null; then
    echo "$IP:$port is in use: stop what runs there or set BENCH_IP" >&2
    exit 1
  fi
done

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

"$SIM" up --no-executor --ip "$IP" > "$WORK/sim.log" 2>&1 &
SIM_PID=$!
PIDS+=($SIM_PID)
wait_http "$CONTROL/health" simulator

# CPU time (user + system, clock ticks) a process used so far: less sensitive than throughput
# to what else the machine runs.
TICK_US=$((1000000 / $(getconf CLK_TCK)))

spans() { curl -fsS "$CONTROL/traces?limit=0" | python3 -c "import json,sys; print(json.load(sys.stdin)['stats']['spans_received'])"; }

run() { # side (off|on), round -> prints "req/s requests"
  local side=$1 round=$2 otel=()
  [ "$side" = on ] && otel=(OTEL_EXPORTER_OTLP_ENDPOINT="$ENDPOINT")
  env "${otel[@]}" EXECUTOR_BIND="$IP:$PORT" BUCKET_URL="http://$IP:8001" KARMA_URL="http://$IP:8000" \
    EXECUTOR_DATA_DIR="$WORK/executor-$side-$round" EXECUTOR_DRAIN_DELAY=0 RUST_LOG=warn \
    "$EXE" > "$WORK/executor-$side-$round.log" 2>&1 &
  local pid=$!
  PIDS+=($pid)
  wait_http "http://$IP:$PORT/healthz" "executor ($side, round $round)"
  wrk -t2 -c"$CONNS" -d"${DURATION}s" -s scripts/wrk-execute.lua "http://$IP:$PORT/" > "$WORK/wrk-$side-$round.txt"
  local ticks
  ticks=$(cpu_ticks "$pid")
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  rm -rf "$WORK/executor-$side-$round"
  echo "$(awk '/Requests\/sec/ {rate=$2} / requests in / {n=$1} END {print rate, n}' "$WORK/wrk-$side-$round.txt") $ticks"
}

echo "==> $ROUNDS rounds: executor (task) with span export off and on, ${DURATION}s each at $CONNS connections"
RATIOS=()
CPU_RATIOS=()
for round in $(seq 1 "$ROUNDS"); do
  if [ $((round % 2)) = 1 ]; then order=(off on); else order=(on off); fi
  for side in "${order[@]}"; do
    before=$(spans)
    sim_before=$(cpu_ticks "$SIM_PID")
    read -r rate requests ticks < <(run "$side" "$round")
    after=$(spans)
    sim_ticks=$(( $(cpu_ticks "$SIM_PID") - sim_before ))
    # The executor flushes its spans on shutdown, so `after` counts all of this side's spans.
    declare "rate_$side=$rate" "requests_$side=$requests" "spans_$side=$((after - before))" \
      "cpu_$side=$((ticks * TICK_US / requests))" "simcpu_$side=$((sim_ticks * TICK_US / requests))"
  done
  ratio=$(python3 -c "print(f'{$rate_on/$rate_off:.3f}')")
  RATIOS+=("$ratio")
  CPU_RATIOS+=("$(python3 -c "print(f'{$cpu_on/$cpu_off:.3f}')")")
  echo "round $round (${order[*]}): off $(printf %.0f "$rate_off") req/s, on $(printf %.0f "$rate_on") req/s, ratio $ratio;" \
    "executor CPU per request: off $cpu_off us, on $cpu_on us; simulator (Bucket, Karma, receiver) CPU per request:" \
    "off $simcpu_off us, on $simcpu_on us; spans received: $spans_on for $requests_on requests"
done
read -r median low high < <(printf '%s\n' "${RATIOS[@]}" | python3 -c "import sys, statistics; r=[float(x) for x in sys.stdin]; print(f'{statistics.median(r):.3f} {min(r):.3f} {max(r):.3f}')")
read -r cmedian clow chigh < <(printf '%s\n' "${CPU_RATIOS[@]}" | python3 -c "import sys, statistics; r=[float(x) for x in sys.stdin]; print(f'{statistics.median(r):.3f} {min(r):.3f} {max(r):.3f}')")
echo
echo "throughput, export on / export off, median of $ROUNDS interleaved rounds: $median (range $low-$high)"
echo "executor CPU per request, export on / export off, median: $cmedian (range $clow-$chigh)"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "command: DURATION=$DURATION CONNS=$CONNS ROUNDS=$ROUNDS scripts/bench-otel.sh ($(nproc) cores)"
