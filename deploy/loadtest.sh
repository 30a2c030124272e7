#!/usr/bin/env bash
# Reproduces the README's capacity table: for each audio mode and call count,
# starts `callbridge echo-realtime --mode loopback` and `callbridge serve` on
# loopback, runs `callbridge loadtest` against them and prints one table row:
# admitted and busy calls, relay latency, lost and late frames, and the CPU
# of all three processes per call-second (they share the machine, so the
# peer's and the generator's cost counts against the capacity too).
#
# Usage: deploy/loadtest.sh [DURATION_S] [CALLS...]
#   defaults: 60 s, 200 400 600 800 1000 1200 calls.
# Environment:
#   MODES="pcm16 pcmu"  audio modes to run
#   RUNS=1              runs of each mode and count
#   MAX_CALLS=          the bridge's max_calls: empty = calls + 10 (every
#                       call admitted); "default" = the bridge's own default
#                       (the overload run: offer 1.5x of it and see the rest
#                       refused busy); or a number
#   CALLBRIDGE_AUDIO__APPEND_MS=20  the bridge's audio.append_ms (any other
#                       CALLBRIDGE_* variable reaches the bridge as well)
# Loopback only; every run is bounded in time and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-60}
shift || true
counts=("$@")
[ ${#counts[@]} -gt 0 ] || counts=(200 400 600 800 1000 1200)

cargo build --release --locked >/dev/null
bin=target/release/callbridge
peer_port=18090
bridge_port=18080
admin_port=18091
ulimit -n 65536 2>/dev/null || true
clk_tck=$(getconf CLK_TCK)
# utime and stime of a process, in clock ticks (fields 14 and 15 of
# /proc/PID/stat; the command name in field 2 has no spaces here).
ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }

printf '| mode | append ms | calls offered | admitted | busy | p50 ms | p90 ms | p99 ms | max ms | frames sent | lost | late (>100 ms) | bridge CPU ms per call-s | of which kernel | peer ms per call-s | loadgen ms per call-s | bridge RSS MiB | RSS KiB per call |\n'
printf '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n'
for mode in ${MODES:-pcm16 pcmu}; do
  for calls in "${counts[@]}"; do
    for _ in $(seq "${RUNS:-1}"); do
      case "${MAX_CALLS:-}" in
        "") limit=(CALLBRIDGE_MAX_CALLS=$((calls + 10))) ;;
        default) limit=() ;;
        *) limit=(CALLBRIDGE_MAX_CALLS="$MAX_CALLS") ;;
      esac
      "$bin" echo-realtime --listen 127.0.0.1:$peer_port --mode loopback >/dev/null 2>&1 &
      peer=$!
      env CALLBRIDGE_LISTEN=127.0.0.1:$bridge_port \
        CALLBRIDGE_ADMIN_LISTEN=127.0.0.1:$admin_port \
        CALLBRIDGE_PUBLIC_URL=http://127.0.0.1:$bridge_port \
        CALLBRIDGE_REALTIME__URL=ws://127.0.0.1:$peer_port/v1/realtime \
        CALLBRIDGE_TWILIO__VALIDATE_SIGNATURES=false \
        CALLBRIDGE_AUDIO__MODE="$mode" \
        CALLBRIDGE_LOG__LEVEL=warn \
        ${limit[@]+"${limit[@]}"} \
        "$bin" serve >/dev/null 2>&1 &
      bridge=$!
      sleep 1
      idle_rss=$(awk '/VmRSS/ {print $2}' "/proc/$bridge/status")
      bridge_before=$(ticks $bridge)
      peer_before=$(ticks $peer)
      json=$("$bin" loadtest --bridge http://127.0.0.1:$bridge_port --calls "$calls" \
               --duration "$duration" --ramp 10 --bridge-pid $bridge --json || true)
      bridge_after=$(ticks $bridge)
      peer_after=$(ticks $peer)
      kill $bridge $peer 2>/dev/null || true
      wait $bridge $peer 2>/dev/null || true
      python3 - "$mode" "$calls" "$idle_rss" "$clk_tck" "$bridge_before" "$bridge_after" \
        "$peer_before" "$peer_after" "$json" "${CALLBRIDGE_AUDIO__APPEND_MS:-20}" <<'PY'
import json, sys
mode, calls, idle_rss, clk_tck, b0, b1, p0, p1, raw, append = sys.argv[1:11]
try:
    r = json.loads(raw)
except ValueError:
    print(f"| {mode} | {append} | {calls} | run failed | | | | | | | | | | | | | | |")
    sys.exit(0)
hz = float(clk_tck)
def used(before, after):
    a = [int(x) for x in before.split()]
    b = [int(x) for x in after.split()]
    return (b[0] - a[0]) / hz, (b[1] - a[1]) / hz
bu, bk = used(b0, b1)
pu, pk = used(p0, p1)
# Call-seconds actually relayed (busy calls relay nothing).
call_s = r["frames_sent"] * 0.02
per = lambda s: "-" if call_s == 0 else f"{s * 1000 / call_s:.3f}"
lat = r["latency_ms"]
ms = lambda k, f: "-" if lat.get(k) is None else f.format(lat[k])
rss = r.get("bridge_rss_kib")
admitted = r["calls_connected"]
rss_per_call = (rss - int(idle_rss)) / admitted if rss and admitted else None
share = "-" if bu + bk == 0 else f"{100 * bk / (bu + bk):.0f} %"
print(f"| {mode} | {append} | {calls} | {admitted} | {r.get('calls_busy', 0)} | {ms('p50', '{:.2f}')} | {ms('p90', '{:.2f}')} | "
      f"{ms('p99', '{:.2f}')} | {ms('max', '{:.1f}')} | {r['frames_sent']:,} | {r['frames_lost']:,} | "
      f"{r.get('frames_late', 0):,} | {per(bu + bk)} | {share} | {per(pu + pk)} | {per(r.get('loadgen_cpu_s') or 0)} | "
      f"{'-' if rss is None else f'{rss / 1024:.0f}'} | {'-' if rss_per_call is None else f'{rss_per_call:.0f}'} |")
PY
    done
  done
done
