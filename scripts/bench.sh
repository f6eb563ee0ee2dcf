#!/usr/bin/env bash
# Benchmarks, side by side with a baseline measured in the same run on the same machine.
#
#   scripts/bench.sh            # full run (about 6 minutes), table printed and written to
#                               # bench-results/bench-<timestamp>.md
#   DURATION=5 scripts/bench.sh # shorter phases
#   KEEP=1 scripts/bench.sh     # keep the logs and data directories (the path is printed)
#
# The cost of OpenTelemetry span export has its own script: scripts/bench-otel.sh.
#
# What runs (all on loopback, every loop bounded in time):
#   1. baseline: a minimal axum handler that parses the same JSON body and answers a constant
#      (`pillar-sim baseline`), loaded closed-loop at CONNS connections: the ceiling;
#  1b. with `wrk` (when installed): WRK_ROUNDS rounds of the baseline then a fresh executor
#      (task adapter, telemetry off), each at CONNS connections; the median round ratio;
#   2. the executor (its own process, release build) with telemetry to the simulated Bucket and
#      Karma (`pillar-sim up --no-executor`), closed-loop per adapter, then the end-to-end check that
#      every trace reached Bucket and Karma;
#   3. fault invariance: open-loop at RATE req/s healthy, with Bucket blackholed, with Karma
#      refusing, with both flapping; p99 compared with the healthy p99, zero loss after recovery;
#   4. recovery: a 30 s Bucket outage at a steady rate, then the time to drain the outbox;
#   5. the simulator itself: Bucket write throughput, and the accuracy of an injected 50 ms latency
#      at 1,000 req/s;
#   6. peak RSS of the executor (over the whole run, and during the open-loop phases at RATE) and
#      of the simulator;
#   7. the PostgreSQL store (when PostgreSQL is installed; PG=0 skips it, PG_ONLY=1 runs only the
#      baseline and this phase; SIM_ONLY=1 runs only the baseline and phase 5): one executor, then three replicas, on a throwaway
#      local server with its default durability (fsync and synchronous commit on), task adapter,
#      telemetry on. Throughput with wrk against the wrk baseline (three wrk at once, one per
#      replica, summed); p99 open-loop at PG_RATE req/s in all; CPU time per request of the
#      executors and of PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh

DURATION=${DURATION:-10}          # seconds per throughput phase
CONNS=${CONNS:-32}                # closed-loop connections
RATE=${RATE:-2000}                # open-loop rate for the latency phases
OUTAGE=${OUTAGE:-30}              # seconds of Bucket outage in the recovery phase
RECOVERY_RATE=${RECOVERY_RATE:-500}
WRK_ROUNDS=${WRK_ROUNDS:-7}       # interleaved baseline/executor rounds of the wrk comparison
PG=${PG:-1}                       # the PostgreSQL phase (7)
PG_ONLY=${PG_ONLY:-0}
SIM_ONLY=${SIM_ONLY:-0}            # 1: only the baseline and the simulator (phases 1, 5 and its RSS)
PG_RATE=${PG_RATE:-1000}          # open-loop rate of the PostgreSQL phase
BASELINE_ADDR=${BASELINE_ADDR:-127.0.0.1:8099}
OUT_DIR=${OUT_DIR:-bench-results}
export PILLAR_SIM_CONTROL=${PILLAR_SIM_CONTROL:-http://127.0.0.1:8090}
EXECUTOR=http://127.0.0.1:8003

echo "==> building (release)"
cargo build --release --locked -p workflow-executor -p pillar-sim
SIM=target/release/pillar-sim
EXE=target/release/workflow-executor

for port in 8000 8001 8002 8003 8004 8010 2525 8090 "${BASELINE_ADDR##*:}"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port is in use: stop what runs there (a running 'pillar-sim up'?) and retry" >&2
    exit 1
  fi
done

WORK=$(mktemp -d)
PIDS=()
PG_DATA=""
cleanup() {
  [ -n "$PG_DATA" ] && as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m immediate stop > /dev/null 2>&1 || true
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "${KEEP:-0}" = 1 ]; then echo "logs and data kept in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT


peak_rss_mib() { awk '/VmHWM/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }

drive() { # name, extra args...  -> writes $WORK/<name>.json
  local name=$1; shift
  "$SIM" drive --json "$WORK/$name.json" "$@" > "$WORK/$name.txt"
  cat "$WORK/$name.txt"
}

field() { # file, dotted path (python, no jq dependency); 0 when absent
  python3 -c "import json,sys; v=json.load(open('$1'))
for k in '$2'.split('.'): v=(v or {}).get(k) if isinstance(v, dict) else None
print(0 if v is None else v)"
}

echo "==> 1. baseline"
"$SIM" baseline --bind "$BASELINE_ADDR" > "$WORK/baseline.log" 2>&1 &
PIDS+=($!)
wait_http "http://$BASELINE_ADDR/health" baseline
drive baseline --target "http://$BASELINE_ADDR" --concurrency "$CONNS" --duration "${DURATION}s" --mix task
BASE=$(field "$WORK/baseline.json" report.throughput)
drive baseline-open --target "http://$BASELINE_ADDR" --rate "$RATE" --duration "${DURATION}s" --mix task

ROWS=()
row() { ROWS+=("$1"); }

if command -v wrk > /dev/null; then
  wrk_rate() { wrk -t2 -c"$CONNS" -d"${DURATION}s" -s scripts/wrk-execute.lua "$1" | awk '/Requests\/sec/ {print $2}'; }
fi

if command -v wrk > /dev/null && [ "$PG_ONLY" != 1 ] && [ "$SIM_ONLY" != 1 ]; then
  # The baseline comparison with wrk, a lighter load tool (more of the machine left to the
  # server), before anything else runs. The machine's speed drifts between runs (the same binary
  # ranges over about 10%), so each of WRK_ROUNDS rounds measures the baseline right before a
  # fresh executor (empty data directory), and the median round ratio is reported.
  echo "==> 1b. wrk: baseline and executor (task, telemetry off), $WRK_ROUNDS interleaved rounds"
  WRK_RATIOS=()
  for round in $(seq 1 "$WRK_ROUNDS"); do
    wbase=$(wrk_rate "http://$BASELINE_ADDR/")
    EXECUTOR_BIND=127.0.0.1:8004 EXECUTOR_BUCKET_ENABLED=false EXECUTOR_KARMA_ENABLED=false \
      EXECUTOR_DATA_DIR="$WORK/executor-wrk-$round" RUST_LOG=warn "$EXE" > "$WORK/executor-wrk.log" 2>&1 &
    WRK_PID=$!
    PIDS+=($WRK_PID)
    wait_http http://127.0.0.1:8004/healthz "executor (wrk round $round)"
    wexec=$(wrk_rate http://127.0.0.1:8004/)
    kill "$WRK_PID"
    wait "$WRK_PID" 2>/dev/null || true
    rm -rf "$WORK/executor-wrk-$round"
    ratio=$(python3 -c "print(f'{$wexec/$wbase:.3f}')")
    WRK_RATIOS+=("$ratio")
    echo "round $round: baseline $(printf %.0f "$wbase") req/s, executor $(printf %.0f "$wexec") req/s, ratio $ratio"
  done
  read -r median low high < <(printf '%s\n' "${WRK_RATIOS[@]}" | python3 -c "import sys, statistics; r=[float(x) for x in sys.stdin]; print(f'{statistics.median(r):.3f} {min(r):.3f} {max(r):.3f}')")
  row "| (wrk) executor, task, telemetry off, closed loop c=$CONNS: median of $WRK_ROUNDS interleaved rounds (range $low-$high) | | **$median** | | |"
fi

echo "==> starting the simulator (no executor) and the executor"
"$SIM" up --no-executor > "$WORK/sim.log" 2>&1 &
SIM_PID=$!
PIDS+=($SIM_PID)
wait_http "$PILLAR_SIM_CONTROL/health" simulator
EXECUTOR_DATA_DIR="$WORK/executor" WHATSAPP_ACCESS_TOKEN=sim-whatsapp-token AI_API_KEY=sim-ai-key RUST_LOG=warn "$EXE" > "$WORK/executor.log" 2>&1 &
EXE_PID=$!
PIDS+=($EXE_PID)
wait_http "$EXECUTOR/healthz" executor

if [ "$PG_ONLY" != 1 ] && [ "$SIM_ONLY" != 1 ]; then
echo "==> 2a. executor without telemetry (sinks disabled), task adapter"
EXECUTOR_BIND=127.0.0.1:8004 EXECUTOR_BUCKET_ENABLED=false EXECUTOR_KARMA_ENABLED=false \
  EXECUTOR_DATA_DIR="$WORK/executor-solo" RUST_LOG=warn "$EXE" > "$WORK/executor-solo.log" 2>&1 &
SOLO_PID=$!
PIDS+=($SOLO_PID)
wait_http http://127.0.0.1:8004/healthz "executor (no telemetry)"
drive exec-solo --target http://127.0.0.1:8004 --concurrency "$CONNS" --duration "${DURATION}s" --mix task
solo=$(field "$WORK/exec-solo.json" report.throughput)
row "| executor, task, telemetry off, closed loop c=$CONNS | $(printf %.0f "$solo") req/s | **$(python3 -c "print(f'{$solo/$BASE:.3f}')")** | p99 $(printf %.2f "$(field "$WORK/exec-solo.json" report.latency_ms.p99)") ms | |"
kill "$SOLO_PID"

echo "==> 2. executor with telemetry, per adapter (closed loop, $CONNS connections)"
for mix in task whatsapp email ai "task=1,whatsapp=1,email=1,ai=1"; do
  name="exec-${mix//[=,]/_}"
  drive "$name" --target "$EXECUTOR" --concurrency "$CONNS" --duration "${DURATION}s" --mix "$mix" --check
  tput=$(field "$WORK/$name.json" report.throughput)
  p99=$(field "$WORK/$name.json" report.latency_ms.p99)
  lost=$(field "$WORK/$name.json" check.lost_total)
  dup=$(field "$WORK/$name.json" check.duplicated_total)
  ratio=$(python3 -c "print(f'{$tput/$BASE:.3f}')")
  outcomes="$(field "$WORK/$name.json" report.outcomes.success) success, $(field "$WORK/$name.json" report.outcomes.failed) failed"
  row "| executor, $mix, closed loop c=$CONNS ($outcomes) | $(printf %.0f "$tput") req/s | **$ratio** | p99 $(printf %.2f "$p99") ms | lost $lost, duplicated $dup |"
done

echo "==> 3. fault invariance (open loop, $RATE req/s)"
# Restart the executor's peak-RSS mark, so the phases at RATE get their own peak.
PEAK_BEFORE_OPEN_LOOP=$(peak_rss_mib "$EXE_PID")
echo 5 > "/proc/$EXE_PID/clear_refs"
row "| baseline handler, open loop $RATE req/s (the floor: load driver and loopback) | p50 $(printf %.2f "$(field "$WORK/baseline-open.json" report.latency_ms.p50)") ms | | p99 $(printf %.2f "$(field "$WORK/baseline-open.json" report.latency_ms.p99)") ms | |"
phase() { # name, description
  drive "$1" --target "$EXECUTOR" --rate "$RATE" --duration "${DURATION}s" --mix task
  for id in $(curl -fsS "$PILLAR_SIM_CONTROL/scenarios" | python3 -c "import json,sys; print(' '.join(s['id'] for s in json.load(sys.stdin)['scenarios'] if not s.get('finished')))"); do
    "$SIM" scenario cancel "$id" > /dev/null
  done
  "$SIM" fault clear > /dev/null
  # After recovery every trace must reach both pillars.
  "$SIM" drive --target "$EXECUTOR" --rate 1 --duration 1s --mix task --check-only "$WORK/$1.json" \
    --json "$WORK/$1-check.json" > /dev/null
  local p99 healthy lost
  p99=$(field "$WORK/$1.json" report.latency_ms.p99)
  lost=$(field "$WORK/$1-check.json" check.lost_total)
  healthy=${HEALTHY_P99:-$p99}
  row "| executor, $2, open loop $RATE req/s | p50 $(printf %.2f "$(field "$WORK/$1.json" report.latency_ms.p50)") ms | **$(python3 -c "print(f'{$p99/$healthy:.2f}')")** × healthy p99 | p99 $(printf %.2f "$p99") ms | lost after recovery $lost |"
}
phase healthy "all pillars healthy"
HEALTHY_P99=$(field "$WORK/healthy.json" report.latency_ms.p99)
"$SIM" fault bucket blackhole > /dev/null
phase bucket-blackhole "Bucket blackholed"
"$SIM" fault karma refuse > /dev/null
phase karma-refuse "Karma refusing"
"$SIM" scenario run simulators/scenarios/bench-flapping.json > /dev/null
phase flapping "Bucket and Karma flapping"
PEAK_AT_RATE=$(peak_rss_mib "$EXE_PID")

echo "==> 4. recovery after a ${OUTAGE}s Bucket outage at $RECOVERY_RATE req/s"
"$SIM" fault bucket refuse --for "${OUTAGE}s" > /dev/null
drive outage --target "$EXECUTOR" --rate "$RECOVERY_RATE" --duration "${OUTAGE}s" --mix task
start=$(date +%s.%N)
for _ in $(seq 1 1200); do
  depth=$(curl -fsS "$EXECUTOR/api/integration/status" | python3 -c "import json,sys; print(json.load(sys.stdin)['pillars']['bucket']['outbox_depth'])")
  [ "$depth" = 0 ] && break
  sleep 0.1
done
drain=$(python3 -c "import time; print(f'{time.time()-$start:.1f}')")
"$SIM" drive --target "$EXECUTOR" --rate 1 --duration 1s --mix task --check-only "$WORK/outage.json" \
  --json "$WORK/outage-check.json" > /dev/null
row "| recovery: ${OUTAGE}s Bucket outage at $RECOVERY_RATE req/s ($(field "$WORK/outage.json" report.ok) executions) | drained in ${drain} s after the outage | | p99 during outage $(printf %.2f "$(field "$WORK/outage.json" report.latency_ms.p99)") ms | lost $(field "$WORK/outage-check.json" check.lost_total) |"

fi

if [ "$PG_ONLY" != 1 ]; then
echo "==> 5. the simulator"
drive sim-bucket --target http://127.0.0.1:8001 --kind bucket --concurrency "$CONNS" --duration "${DURATION}s"
sim_tput=$(field "$WORK/sim-bucket.json" report.throughput)
row "| simulator: Bucket write, closed loop c=$CONNS | $(printf %.0f "$sim_tput") req/s | **$(python3 -c "print(f'{$sim_tput/$BASE:.3f}')")** | p99 $(printf %.2f "$(field "$WORK/sim-bucket.json" report.latency_ms.p99)") ms | |"
"$SIM" fault bucket latency --ms 50 > /dev/null
drive sim-latency --target http://127.0.0.1:8001 --kind bucket --rate 1000 --duration "${DURATION}s"
"$SIM" fault clear > /dev/null
row "| simulator: injected fixed 50 ms at 1,000 req/s | p50 $(printf %.2f "$(field "$WORK/sim-latency.json" report.latency_ms.p50)") ms | | p99 $(printf %.2f "$(field "$WORK/sim-latency.json" report.latency_ms.p99)") ms | |"

echo "==> 6. memory"
if [ "$SIM_ONLY" = 1 ]; then
  row "| peak RSS | | | simulator $(peak_rss_mib "$SIM_PID") MiB | |"
else
  row "| peak RSS | executor at $RATE req/s (phase 3) $PEAK_AT_RATE MiB; over the closed-loop phases $PEAK_BEFORE_OPEN_LOOP MiB | | simulator $(peak_rss_mib "$SIM_PID") MiB | outbox on disk: $(du -sh "$WORK/executor" | cut -f1) |"
fi

fi

# ----- 7. the PostgreSQL store -----
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
pg_pids() { pgrep -f "postgres.*$PG_DATA" 2>/dev/null; pgrep -P "$(head -1 "$PG_DATA/postmaster.pid")" 2>/dev/null; }
start_pg() { # a fresh cluster in $WORK/<name>; sets PG_DATA and PG_URL
  PG_DATA="$WORK/$1"
  mkdir -p "$PG_DATA"
  if [ "$(id -u)" = 0 ]; then chmod 711 "$WORK"; chown postgres: "$PG_DATA"; fi
  as_pg "$PG_BIN/initdb" -A trust -U postgres -E UTF8 --no-instructions -D "$PG_DATA" > /dev/null
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_DATA/log" -w \
    -o "-p $port -k $PG_DATA -c listen_addresses=127.0.0.1 -c max_connections=100" start > /dev/null
  PG_URL="postgres://postgres@127.0.0.1:$port/postgres"
}
stop_pg() { as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast stop > /dev/null; PG_DATA=""; }
start_pg_executor() { # port, log name; its pid in PG_EXE_PID
  EXECUTOR_BIND=127.0.0.1:$1 EXECUTOR_STORE_URL="$PG_URL" EXECUTOR_DATA_DIR="$WORK/unused-$1" \
    EXECUTOR_DRAIN_DELAY=0 RUST_LOG=warn "$EXE" > "$WORK/$2.log" 2>&1 &
  PG_EXE_PID=$!
  PIDS+=("$PG_EXE_PID")
  wait_http "http://127.0.0.1:$1/healthz" "executor on PostgreSQL (:$1)"
}

PG_BIN=$( (command -v initdb > /dev/null && dirname "$(command -v initdb)") || (ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1) || true)
if [ "$PG" = 1 ] && [ "$SIM_ONLY" != 1 ] && [ -n "$PG_BIN" ] && command -v wrk > /dev/null; then
  echo "==> 7. the PostgreSQL store: one executor, then three replicas (task, telemetry on)"
  wrk_pg() { # connections, url -> req/s
    wrk -t1 -c"$1" -d"${DURATION}s" -s scripts/wrk-execute.lua "$2" | awk '/Requests\/sec/ {print $2}'
  }
  pg_base=$(wrk_rate "http://$BASELINE_ADDR/")
  row "| (wrk) baseline handler before the PostgreSQL phase, c=$CONNS | $(printf %.0f "$pg_base") req/s | 1.000 | | |"

  start_pg pg-one
  start_pg_executor 8005 pg-one
  one=$PG_EXE_PID
  pg_cpu0=$(cpu_ticks $(pg_pids)); exe_cpu0=$(cpu_ticks "$one")
  tput=$(wrk_pg "$CONNS" http://127.0.0.1:8005/)
  pg_cpu=$(( $(cpu_ticks $(pg_pids)) - pg_cpu0 )); exe_cpu=$(( $(cpu_ticks "$one") - exe_cpu0 ))
  per=$(python3 -c "n=$tput*$DURATION; t=$(getconf CLK_TCK); print(f'executor {$exe_cpu/t/n*1e6:.0f} µs, PostgreSQL {$pg_cpu/t/n*1e6:.0f} µs of CPU per request')")
  row "| (wrk) executor on PostgreSQL, task, telemetry on, c=$CONNS | $(printf %.0f "$tput") req/s | **$(python3 -c "print(f'{$tput/$pg_base:.3f}')")** | | $per |"
  drive pg-one-open --target http://127.0.0.1:8005 --rate "$PG_RATE" --duration "${DURATION}s" --mix task --check
  row "| executor on PostgreSQL, open loop $PG_RATE req/s | p50 $(printf %.2f "$(field "$WORK/pg-one-open.json" report.latency_ms.p50)") ms | | p99 $(printf %.2f "$(field "$WORK/pg-one-open.json" report.latency_ms.p99)") ms | lost $(field "$WORK/pg-one-open.json" check.lost_total), duplicated $(field "$WORK/pg-one-open.json" check.duplicated_total) |"
  kill "$one"; wait "$one" 2>/dev/null || true
  stop_pg

  start_pg pg-three
  REPLICAS=()
  for port in 8005 8006 8007; do
    start_pg_executor "$port" "pg-replica-$port"
    REPLICAS+=("$PG_EXE_PID")
  done
  pg_cpu0=$(cpu_ticks $(pg_pids)); exe_cpu0=$(cpu_ticks "${REPLICAS[@]}")
  per_conn=$(( (CONNS + 2) / 3 ))
  LOADS=()
  for port in 8005 8006 8007; do
    wrk_pg "$per_conn" "http://127.0.0.1:$port/" > "$WORK/wrk-$port.txt" &
    LOADS+=($!)
  done
  wait "${LOADS[@]}"
  tput=$(cat "$WORK"/wrk-800[567].txt | python3 -c "import sys; print(sum(float(x) for x in sys.stdin.read().split()))")
  pg_cpu=$(( $(cpu_ticks $(pg_pids)) - pg_cpu0 )); exe_cpu=$(( $(cpu_ticks "${REPLICAS[@]}") - exe_cpu0 ))
  per=$(python3 -c "n=$tput*$DURATION; t=$(getconf CLK_TCK); print(f'executors {$exe_cpu/t/n*1e6:.0f} µs, PostgreSQL {$pg_cpu/t/n*1e6:.0f} µs of CPU per request')")
  row "| (wrk) three replicas on one PostgreSQL, task, telemetry on, $per_conn connections each | $(printf %.0f "$tput") req/s in all | **$(python3 -c "print(f'{$tput/$pg_base:.3f}')")** | | $per |"
  third=$(( PG_RATE / 3 ))
  LOADS=()
  for port in 8005 8006 8007; do
    "$SIM" drive --json "$WORK/pg-three-$port.json" --target "http://127.0.0.1:$port" --rate "$third" \
      --duration "${DURATION}s" --mix task --check > "$WORK/pg-three-$port.txt" &
    LOADS+=($!)
  done
  wait "${LOADS[@]}"
  worst=$(python3 -c "import json; print(max(json.load(open(f'$WORK/pg-three-{p}.json'))['report']['latency_ms']['p99'] for p in (8005, 8006, 8007)))")
  lost=$(python3 -c "import json; print(sum(json.load(open(f'$WORK/pg-three-{p}.json')).get('check', {}).get('lost_total', 0) for p in (8005, 8006, 8007)))")
  row "| three replicas on one PostgreSQL, open loop $((third * 3)) req/s in all ($third each) | | | worst replica p99 $(printf %.2f "$worst") ms | lost $lost |"
  for pid in "${REPLICAS[@]}"; do kill "$pid"; done
  wait "${REPLICAS[@]}" 2>/dev/null || true
  stop_pg
elif [ "$PG" = 1 ] && [ "$SIM_ONLY" != 1 ]; then
  echo "==> 7. skipped: PostgreSQL (initdb) or wrk not found"
fi

mkdir -p "$OUT_DIR"
report="$OUT_DIR/bench-$(date -u +%Y%m%dT%H%M%SZ).md"
{
  echo "### Benchmark $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr); load driver on the same machine."
  if [ "$SIM_ONLY" = 1 ]; then
    echo "Command: \`SIM_ONLY=1 DURATION=$DURATION CONNS=$CONNS scripts/bench.sh\`"
  elif [ "$PG_ONLY" = 1 ]; then
    echo "Command: \`PG_ONLY=1 DURATION=$DURATION CONNS=$CONNS PG_RATE=$PG_RATE scripts/bench.sh\`"
  else
    echo "Command: \`DURATION=$DURATION CONNS=$CONNS RATE=$RATE scripts/bench.sh\`"
  fi
  echo
  echo "Baseline (minimal axum JSON handler, closed loop c=$CONNS): **$(printf %.0f "$BASE") req/s** = 1.000"
  echo
  echo "| run | throughput / latency | ratio | tail | events |"
  echo "|---|---:|---:|---:|---|"
  printf '%s\n' "${ROWS[@]}"
} > "$report"
echo
cat "$report"
echo
echo "written to $report"
