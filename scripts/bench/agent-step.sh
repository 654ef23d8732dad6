#!/usr/bin/env bash
# agent-step.sh measures what berth-agent adds to running a task plugin: request -> result
# over NATS for a plugin that exits at once (/bin/true), against running the same
# executable directly, p50 and p99 over 1,000 runs each, on this machine, in one harness
# (services/agent/cmd/agent-step-bench: embedded NATS, an agent with its fsynced journal,
# and the client). Goal (issue 4): at most 2 ms added at p50.
#
#   scripts/bench/agent-step.sh                 # 1,000 steps
#   BENCH_STEPS=5000 scripts/bench/agent-step.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
STEPS=${BENCH_STEPS:-1000}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/agent-step.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
(cd services/agent && go build -o "$TMP/agent-step-bench" ./cmd/agent-step-bench)
"$TMP/agent-step-bench" -n "$STEPS" -dir "$TMP/run"
