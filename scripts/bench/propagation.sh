#!/usr/bin/env bash
# propagation.sh measures name propagation (DESIGN §12): 1,000 instances registered by
# emulated agents (coord sessions writing instance nodes exactly as berth-agent does),
# through a real berth-coord member, NATS and berth-name-service, observed in the
# per-service views on NATS and in a real berth-agent's local /v1/resolve; then 1% fail by
# health, 1% by kill -9 (session expiry) and 1% by agent stop (session close). It prints
# p50/p99 of registration → resolvable and failure → gone, beside the budgets of Consul's
# defaults (~13 s) and Kubernetes readiness defaults (~30 s). Goals: removal ≤ 1 s after the
# failure is detected; registration → resolvable ≤ 500 ms at p99.
#
#   scripts/bench/propagation.sh
#   BENCH_INSTANCES=5000 BENCH_RATE=500 scripts/bench/propagation.sh
#
# Harness: test/bench/propagation (everything in one process on loopback).
set -euo pipefail
cd "$(dirname "$0")/../.."
TMP=$(mktemp -d "${TMPDIR:-/tmp}/propagation.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
(cd test && go build -o "$TMP/propagation" ./bench/propagation)
"$TMP/propagation" -instances "${BENCH_INSTANCES:-1000}" -rate "${BENCH_RATE:-200}" \
  -session-ttl "${BENCH_SESSION_TTL:-3s}" -dir "$TMP/run"
