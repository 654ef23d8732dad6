#!/usr/bin/env bash
# images.sh benchmarks berth-image-builder (DESIGN §12) on this machine, both sides in one
# run (test/images/imagebench):
#   1. the cache-hit decision: 1,000 requests over NATS request/reply for a version whose
#      image exists (coord record + registry HEAD), p50 and p99 — goal p99 <= 20 ms;
#   2. a cold build — fetch, unpack, build, push, record — beside `docker build` + `docker
#      push` of the same context (the builder's Dockerfile and the unpacked package) on the
#      same engine and registry, rounds alternating — goal <= 1.1x;
#   3. the agent's container start (services/agent/cmd/container-start-bench): a
#      container-deploy deploy of an allocation until the step returned (health passed by
#      docker exec, instance registered) and http://<ip>:<port>/ answers from the host,
#      beside `docker run -d` of the same image with the same settings until the same
#      endpoint answers, rounds alternating — goal <= 1.1x.
# Needs a Docker engine, docker-registry and busybox-static (apt-get install
# docker-registry busybox-static).
#
# The hits are measured twice: with the builder's default confirm_ttl (the registry is
# asked at most every 5 s per version) and with confirm_ttl 0 (asked on every request).
#
#   HITS=1000 ROUNDS=5 FILES=200 SIZE=8388608 STARTS=20 scripts/bench/images.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
HITS=${HITS:-1000}
ROUNDS=${ROUNDS:-5}
FILES=${FILES:-200}
SIZE=${SIZE:-8388608}
STARTS=${STARTS:-20}
GO=${GO:-go}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd test && "$GO" build -o "$tmp/imagebench" ./images/imagebench)
"$tmp/imagebench" -hits "$HITS" -rounds "$ROUNDS" -files "$FILES" -size "$SIZE"
echo
echo "== cache hits with confirm_ttl 0"
"$tmp/imagebench" -hits "$HITS" -rounds 0 -confirm-ttl 0 | grep -A1 '^-- 1\.'
echo
echo "== container start"
(cd services/agent && "$GO" build -o "$tmp/container-start-bench" ./cmd/container-start-bench)
"$tmp/container-start-bench" -rounds "$STARTS" | sed -n '/^-- 3\./,$p'
