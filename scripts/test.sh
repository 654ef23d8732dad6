#!/usr/bin/env bash
# test.sh is Berth's test command: for every module of the workspace, go vet, staticcheck and
# go test -race; then the generated-code and module checks. It fails on the first failure.
#   TEST_SHORT=1 scripts/test.sh    passes -short to go test
#   TEST_TIMEOUT=15m                per-module go test timeout (default 15m)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/tools.sh
ensure_tool staticcheck "$STATICCHECK_PKG@$STATICCHECK_VERSION"

short=()
[ -n "${TEST_SHORT:-}" ] && short=(-short)
timeout=${TEST_TIMEOUT:-15m}

mods=$(go list -m -f '{{.Dir}}' | sed "s|^$PWD/||" | sort)
start=$SECONDS
for m in $mods; do
  echo "=== $m"
  (
    cd "$m"
    if [ -z "$(go list ./... 2>/dev/null)" ]; then echo "(no packages yet)"; exit 0; fi
    go vet ./...
    staticcheck ./...
    go test -race -count=1 -timeout "$timeout" "${short[@]}" ./...
  )
done
echo "=== generated code"
scripts/genproto.sh --check
echo "=== modules"
scripts/verify-mod.sh
echo "all modules passed in $((SECONDS-start)) s"
