#!/usr/bin/env bash
# scheduler.sh benchmarks berth-scheduler (DESIGN §12): 20,000 hosts in 10 datacenters,
# placements arriving as requests of 1 to 50 replicas.
#   1. the in-memory decision alone (no coord, no NATS): 1,000,000 placements;
#   2. end to end with coord in the loop: requests over NATS request/reply to a scheduler
#      replica that commits each in a coord transaction (one in-process berth-coord member
#      with fsync, in-process NATS). Fewer placements by default (COORD_PLACEMENTS), since
#      a million allocations in one coord member is memory this script should not need.
# It prints placements per second and the p99 of one request beside published figures of
# other schedulers, measured on other machines.
#
#   HOSTS=20000 DCS=10 PLACEMENTS=1000000 COORD_PLACEMENTS=200000 CLIENTS=8 REPLICAS=1 scripts/bench/scheduler.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
HOSTS=${HOSTS:-20000}
DCS=${DCS:-10}
PLACEMENTS=${PLACEMENTS:-1000000}
COORD_PLACEMENTS=${COORD_PLACEMENTS:-200000}
CLIENTS=${CLIENTS:-8}
REPLICAS=${REPLICAS:-1}
GO=${GO:-go}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

(cd services/scheduler && "$GO" build -o "$tmp/decision" ./internal/schedbench)
(cd test && "$GO" build -o "$tmp/e2e" ./inventory/schedbench)

echo "== berth-scheduler, $(nproc) CPUs, $(date -u +%Y-%m-%dT%H:%MZ)"
echo "-- 1. decision alone"
"$tmp/decision" -hosts "$HOSTS" -dcs "$DCS" -placements "$PLACEMENTS" | tee "$tmp/decision.out"
echo "-- 2. end to end, coord and NATS in the loop"
"$tmp/e2e" -hosts "$HOSTS" -dcs "$DCS" -placements "$COORD_PLACEMENTS" -clients "$CLIENTS" -replicas "$REPLICAS" | tee "$tmp/e2e.out"

dec=$(grep -o '^  [0-9]* placements/s' "$tmp/decision.out" | grep -o '[0-9]*' || echo 0)
e2e=$(grep -o '^  [0-9]* placements/s' "$tmp/e2e.out" | grep -o '[0-9]*' || echo 0)
p99=$(grep -o 'p99 [^ ]*' "$tmp/e2e.out" | head -1 | cut -d' ' -f2)
echo
echo "== summary"
printf '%-58s %12s\n' "berth-scheduler, decision alone (this machine)" "$dec/s"
printf '%-58s %12s  p99 %s\n' "berth-scheduler, end to end with coord (this machine)" "$e2e/s" "$p99"
printf '%-58s %12s\n' "Nomad C2M (published, other hardware)" "~1500/s"
printf '%-58s %12s\n' "kube-scheduler CI floor at 5,000 nodes (published, other hw)" "680/s"
printf '%-58s %12s\n' "goal: decision" ">= 50000/s"
printf '%-58s %12s\n' "goal: p99 per request end to end" "< 100ms"
awk -v d="$dec" 'BEGIN { printf "ratio decision / Nomad C2M: %.0fx; / kube-scheduler floor: %.0fx\n", d/1500, d/680 }'
