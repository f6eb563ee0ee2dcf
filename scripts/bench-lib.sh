# Shell helpers both benchmark scripts source (scripts/bench.sh, scripts/bench-otel.sh).

wait_http() { # url, what: polls for up to 10 s, then stops the script naming what did not start
  for _ in $(seq 1 200); do
    if curl -fsS -o /dev/null "$1" 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "$2 did not become ready at $1" >&2
  exit 1
}

cpu_ticks() { # pids... -> user + system CPU time they used so far, summed, in clock ticks
  local total=0 pid
  for pid in "$@"; do
    [ -r "/proc/$pid/stat" ] && total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
  done
  echo "$total"
}
