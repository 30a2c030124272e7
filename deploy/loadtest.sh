#!/usr/bin/env bash
# Reproduces the README's performance table: for each audio mode and call
# count, starts `callbridge echo-realtime --mode loopback` and `callbridge
# serve` on loopback, runs `callbridge loadtest` against them and prints one
# table row (p50/p99/max relay latency, lost frames, bridge CPU and RSS).
#
# Usage: deploy/loadtest.sh [DURATION_S] [CALLS...]
#   defaults: 60 s, 250 500 750 1000 calls; MODES="pcm16 pcmu" by default.
#   Loopback only; every run is
#   bounded in time and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-60}
shift || true
counts=("$@")
[ ${#counts[@]} -gt 0 ] || counts=(250 500 750 1000)

cargo build --release --locked >/dev/null
bin=target/release/callbridge
peer_port=18090
bridge_port=18080
admin_port=18091
ulimit -n 65536 2>/dev/null || true

printf '| mode | calls | p50 ms | p90 ms | p99 ms | max ms | frames sent | lost | late | bridge CPU s | CPU ms per call-s | bridge RSS MiB | RSS KiB per call |\n'
printf '|---|---|---|---|---|---|---|---|---|---|---|---|---|\n'
for mode in ${MODES:-pcm16 pcmu}; do
  for calls in "${counts[@]}"; do
    "$bin" echo-realtime --listen 127.0.0.1:$peer_port --mode loopback >/dev/null 2>&1 &
    peer=$!
    CALLBRIDGE_LISTEN=127.0.0.1:$bridge_port \
    CALLBRIDGE_ADMIN_LISTEN=127.0.0.1:$admin_port \
    CALLBRIDGE_PUBLIC_URL=http://127.0.0.1:$bridge_port \
    CALLBRIDGE_REALTIME__URL=ws://127.0.0.1:$peer_port/v1/realtime \
    CALLBRIDGE_TWILIO__VALIDATE_SIGNATURES=false \
    CALLBRIDGE_AUDIO__MODE=$mode \
    CALLBRIDGE_MAX_CALLS=$((calls + 10)) \
    CALLBRIDGE_LOG__LEVEL=warn \
      "$bin" serve >/dev/null 2>&1 &
    bridge=$!
    sleep 1
    idle_rss=$(awk '/VmRSS/ {print $2}' /proc/$bridge/status)
    json=$("$bin" loadtest --bridge http://127.0.0.1:$bridge_port --calls "$calls" \
             --duration "$duration" --ramp 10 --bridge-pid $bridge --json || true)
    kill $bridge $peer 2>/dev/null || true
    wait $bridge $peer 2>/dev/null || true
    python3 - "$mode" "$calls" "$duration" "$idle_rss" "$json" <<'PY'
import json, sys
mode, calls, duration, idle_rss, raw = sys.argv[1:6]
try:
    r = json.loads(raw)
except ValueError:
    print(f"| {mode} | {calls} | run failed | | | | | | | | | | |")
    sys.exit(0)
lat = r["latency_ms"]
cpu = r.get("bridge_cpu_s")
rss = r.get("bridge_rss_kib")
calls = int(calls)
per_call_s = cpu * 1000 / (calls * float(duration)) if cpu is not None else None
rss_per_call = (rss - int(idle_rss)) / calls if rss is not None else None
fmt = lambda v, f: "-" if v is None else f.format(v)
print(f"| {mode} | {calls} | {lat['p50']:.2f} | {lat['p90']:.2f} | {lat['p99']:.2f} | {lat['max']:.1f} | "
      f"{r['frames_sent']} | {r['frames_lost']} | {r.get('frames_late', '-')} | {fmt(cpu, '{:.1f}')} | "
      f"{fmt(per_call_s, '{:.3f}')} | {fmt(rss and rss / 1024, '{:.0f}')} | {fmt(rss_per_call, '{:.0f}')} |")
PY
  done
done
