# Sourced by the *_compare.sh benches: the kit's peers started and stopped, and hot-key
# rounds over several servers, interleaved.
# Needs KIT, ROUNDS, DURATION, KEYS and the associative arrays URL and PID (by target name).
# usage: hot_rounds PATH_PREFIX TARGET...
#   warms each target up, then per round and target: requests per second, requests per
#   server CPU-second (from the server pid's /proc ticks) and wrk's p99.

# start_peers: starts the kit's origin and nginx; on exit stops them and every pid the
# bench added to PIDS, then runs `extra_cleanup` if the bench defines one.
PIDS=()
stop_all() {
  local pid s
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  for s in nginx origin; do "$KIT/servers.sh" stop $s >/dev/null 2>&1; done
  if declare -F extra_cleanup >/dev/null; then extra_cleanup; fi
}
start_peers() {
  trap stop_all EXIT
  local s
  for s in origin nginx; do "$KIT/servers.sh" start $s >/dev/null; done
}

ticks() { awk '{sub(/^.*\) /,""); print $12+$13}' "/proc/$1/stat"; }

hot_rounds() {
  local prefix=$1; shift
  local t round c0 c1 out requests p99 hz
  hz=$(getconf CLK_TCK)
  for t in "$@"; do
    timeout 30 taskset -c 1 wrk -t1 -c8 -d3s -s "$KIT/keys.lua" "${URL[$t]}" -- hot "$prefix" "$KEYS" - >/dev/null 2>&1
  done
  for round in $(seq "$ROUNDS"); do
    for t in "$@"; do
      c0=$(ticks "${PID[$t]}")
      out=$(timeout $((DURATION + 20)) taskset -c 1 wrk -t1 -c64 -d"${DURATION}s" -s "$KIT/keys.lua" "${URL[$t]}" -- hot "$prefix" "$KEYS" - 2>&1)
      c1=$(ticks "${PID[$t]}")
      requests=$(echo "$out" | awk '/requests in/{print $1}')
      p99=$(echo "$out" | grep -o '"p99_us":[0-9]*' | cut -d: -f2)
      python3 -c "print('round $round %-7s %7.0f req/s %7.0f per server CPU-s  p99 %.2f ms' % ('$t', ${requests:-0} / $DURATION, ${requests:-0} * $hz / max($c1 - $c0, 1), ${p99:-0} / 1000))"
    done
  done
}
