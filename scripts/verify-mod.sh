#!/usr/bin/env bash
# verify-mod.sh fails when `go mod tidy` or scripts/gowork.sh would change anything, or when
# a module does not build on its own (GOWORK=off, through its replace directives).
set -euo pipefail
cd "$(dirname "$0")/.."
fail=0
scripts/gowork.sh --check || fail=1
for m in $(go list -m -f '{{.Dir}}' | sed "s|^$PWD/||" | sort); do
  if ! out=$(cd "$m" && GOWORK=off go mod tidy -diff 2>&1); then
    echo "$m: go mod tidy would change go.mod or go.sum:" >&2
    echo "$out" | head -40 >&2
    fail=1
  fi
  if ! out=$(cd "$m" && GOWORK=off go build ./... 2>&1); then
    echo "$m: does not build with GOWORK=off:" >&2
    echo "$out" | head -20 >&2
    fail=1
  fi
done
[ $fail = 0 ] && echo "modules: tidy, workspace up to date, each builds alone"
exit $fail
