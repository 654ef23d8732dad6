#!/usr/bin/env bash
# failover.sh kills the berth-controller leader KILLS times (default 20) while DEPLOYS
# deployments (default 20; 100 for the long run) roll out over emulated agents, with three
# replicas (a new one replaces each killed one). A kill cuts the leader's NATS and coord
# connections like a kill -9: its coord session (TTL 1 s) must expire before another
# replica leads. It prints the time from each kill to the next step sent, p50 and p99
# (DESIGN §12: goal p99 ≤ 2 s), and checks that every deployment succeeded with every
# step run exactly once by the emulated agents (0 lost, 0 executed twice).
#
#   scripts/bench/failover.sh
#   DEPLOYS=100 KILLS=20 scripts/bench/failover.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
DEPLOYS=${DEPLOYS:-20}
KILLS=${KILLS:-20}
HOSTS=${HOSTS:-30}
STEP=${STEP:-2s}
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
(cd test && go build -o "$bin/ctlbench" ./controller/cmd/ctlbench)
"$bin/ctlbench" failover -deploys "$DEPLOYS" -kills "$KILLS" -hosts "$HOSTS" -step "$STEP"
