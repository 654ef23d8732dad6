#!/usr/bin/env bash
# dispatch.sh measures berth-controller dispatching one deployment to AGENTS emulated agents
# (default 5000) in one batch: the time from the API call until every target succeeded,
# against a bare nats.go scatter-gather of the same number of requests (same payload size)
# in the same run (DESIGN §12: goal ≤ 1.3× the bare baseline and ≤ 2 s).
#
# Everything runs in one process (test/controller/cmd/ctlbench): a NATS server with
# JetStream, a three-member berth-coord on loopback, one controller, and the emulated
# agents — light responders on their own NATS subscriptions that answer like an agent's
# journal (accepted, then a StepResult) and run a no-op step. Each side is measured ROUNDS
# times (default 3) and the best of each is compared.
#
#   scripts/bench/dispatch.sh
#   AGENTS=1000 ROUNDS=5 scripts/bench/dispatch.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
AGENTS=${AGENTS:-5000}
ROUNDS=${ROUNDS:-3}
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
(cd test && go build -o "$bin/ctlbench" ./controller/cmd/ctlbench)
"$bin/ctlbench" dispatch -agents "$AGENTS" -rounds "$ROUNDS"
