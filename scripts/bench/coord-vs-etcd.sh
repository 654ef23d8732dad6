#!/usr/bin/env bash
# coord-vs-etcd.sh benchmarks berth-coord against etcd 3.4 (Debian etcd-server) on this
# machine: a 3-member cluster of each on 127.0.0.1 with the same Raft timings (heartbeat
# 100 ms, election 1000 ms), data dirs side by side in one temp dir, driven by one harness
# (test/bench/coordbench) that prints a table with the ratios and the goals of DESIGN.md §12:
# puts of 256 B values (1 client; 1000 clients over 100 connections), linearizable and
# serializable gets, and put-to-event latency and memory per watcher with 10,000 watchers.
# The two systems take turns, three rounds (the machine may be shared); each figure is the
# round with the median throughput.
#
#   scripts/bench/coord-vs-etcd.sh                 # everything, about 5 minutes
#   BENCH_DURATION=4s BENCH_ROUNDS=1 scripts/bench/coord-vs-etcd.sh
#   BENCH_ONLY=put,read scripts/bench/coord-vs-etcd.sh
#
# It installs etcd-server with apt-get when etcd is missing, cleans up every process it
# started (also on Ctrl-C), and gives up after 10 minutes.
set -euo pipefail
cd "$(dirname "$0")/../.."
LIMIT=${BENCH_LIMIT:-570}        # seconds for the whole run, setup included
DURATION=${BENCH_DURATION:-6s}   # measured time of each run
ROUNDS=${BENCH_ROUNDS:-3}        # alternating rounds
ONLY=${BENCH_ONLY:-}

TMP=$(mktemp -d "${TMPDIR:-/tmp}/coord-vs-etcd.XXXXXX")
PIDS=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  if [ $rc -ne 0 ]; then
    echo "failed (exit $rc); server logs:" >&2
    for f in "$TMP"/*.log; do [ -f "$f" ] && { echo "--- $f" >&2; tail -n 15 "$f" >&2; }; done
  fi
  rm -rf "$TMP"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# bounded CMD... runs CMD with what is left of the time limit.
bounded() {
  local left=$((LIMIT - SECONDS))
  if [ $left -le 0 ]; then echo "coord-vs-etcd: over ${LIMIT}s, giving up" >&2; return 124; fi
  timeout --signal=TERM --kill-after=10 "$left" "$@"
}

if ! command -v etcd >/dev/null; then
  echo "installing etcd-server (etcd 3.4)" >&2
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  bounded $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive bounded $SUDO apt-get install -y -qq etcd-server >/dev/null
fi
ETCD_VERSION=$(etcd --version | awk '/etcd Version/ {print $3}')
case "$ETCD_VERSION" in 3.4.*) ;; *) echo "warning: etcd $ETCD_VERSION is not 3.4" >&2 ;; esac

echo "building berth-coord and coordbench" >&2
bounded go build -o "$TMP/berth-coord" ./services/coord/cmd/berth-coord
(cd test && bounded go build -o "$TMP/coordbench" ./bench/coordbench)

# free_port prints a loopback port below the ephemeral range that nothing listens on.
USED=" "
free_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 12000))
    case "$USED" in *" $p "*) continue ;; esac
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then USED+="$p "; echo "$p"; return; fi
  done
}

# wait_http URL waits until URL answers 200.
wait_http() {
  for _ in $(seq 200); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "no answer from $1" >&2
  return 1
}

HB=100
ET=1000

# etcd: 3 members.
ETCD_CLIENTS=() ETCD_PIDS=() ETCD_CLUSTER=""
declare -a EC EP
for i in 1 2 3; do EC[$i]=$(free_port); EP[$i]=$(free_port); ETCD_CLUSTER+="e$i=http://127.0.0.1:${EP[$i]},"; done
ETCD_CLUSTER=${ETCD_CLUSTER%,}
for i in 1 2 3; do
  etcd --name "e$i" --data-dir "$TMP/etcd$i" \
    --listen-client-urls "http://127.0.0.1:${EC[$i]}" --advertise-client-urls "http://127.0.0.1:${EC[$i]}" \
    --listen-peer-urls "http://127.0.0.1:${EP[$i]}" --initial-advertise-peer-urls "http://127.0.0.1:${EP[$i]}" \
    --initial-cluster "$ETCD_CLUSTER" --initial-cluster-token coord-vs-etcd --initial-cluster-state new \
    --heartbeat-interval $HB --election-timeout $ET --logger zap --log-level warn >"$TMP/etcd$i.log" 2>&1 &
  PIDS+=($!) ETCD_PIDS+=($!) ETCD_CLIENTS+=("127.0.0.1:${EC[$i]}")
done

# berth-coord: 3 members.
COORD_CLIENTS=() COORD_PIDS=() COORD_CLUSTER=""
declare -a CC CP CM
for i in 1 2 3; do CC[$i]=$(free_port); CP[$i]=$(free_port); CM[$i]=$(free_port); COORD_CLUSTER+="n$i=127.0.0.1:${CP[$i]},"; done
COORD_CLUSTER=${COORD_CLUSTER%,}
for i in 1 2 3; do
  "$TMP/berth-coord" --name "n$i" --data-dir "$TMP/coord$i" \
    --listen-client "127.0.0.1:${CC[$i]}" --listen-peer "127.0.0.1:${CP[$i]}" --listen-metrics "127.0.0.1:${CM[$i]}" \
    --initial-cluster "$COORD_CLUSTER" --initial-cluster-state new \
    --heartbeat-interval $HB --election-timeout $ET --log-format text >"$TMP/coord$i.log" 2>&1 &
  PIDS+=($!) COORD_PIDS+=($!) COORD_CLIENTS+=("127.0.0.1:${CC[$i]}")
done

for i in 1 2 3; do wait_http "http://127.0.0.1:${EC[$i]}/health"; wait_http "http://127.0.0.1:${CM[$i]}/readyz"; done
echo "etcd $ETCD_VERSION and berth-coord are up; data in $TMP (same disk: $(df --output=source "$TMP" | tail -1)); load average: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

join() { local IFS=,; echo "$*"; }
args=(kv --etcd "$(join "${ETCD_CLIENTS[@]}")" --etcd-pids "$(join "${ETCD_PIDS[@]}")"
  --coord "$(join "${COORD_CLIENTS[@]}")" --coord-pids "$(join "${COORD_PIDS[@]}")"
  --duration "$DURATION" --rounds "$ROUNDS")
[ -n "$ONLY" ] && args+=(--only "$ONLY")
bounded "$TMP/coordbench" "${args[@]}"
