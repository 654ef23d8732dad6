#!/usr/bin/env bash
# genproto.sh regenerates the Go code of proto/ with buf and the pinned protoc plugins.
#   scripts/genproto.sh          regenerate (installs the pinned tools when missing)
#   scripts/genproto.sh --check  lint, regenerate into a scratch copy and fail when the
#                                committed code differs (CI)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/tools.sh
. scripts/tools.sh
ensure_tool buf "$BUF_PKG@$BUF_VERSION"
ensure_tool protoc-gen-go "$PROTOC_GEN_GO_PKG@$PROTOC_GEN_GO_VERSION"
ensure_tool protoc-gen-go-grpc "$PROTOC_GEN_GO_GRPC_PKG@$PROTOC_GEN_GO_GRPC_VERSION"

(cd proto && buf lint)

if [ "${1:-}" = "--check" ]; then
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  cp -r proto "$tmp/proto"
  find "$tmp/proto" -name '*.pb.go' -delete
  (cd "$tmp/proto" && buf generate)
  if ! diff -r -q --exclude='*.proto' --exclude='*.yaml' --exclude='go.*' --exclude='*_test.go' --exclude='subjects' proto "$tmp/proto" >"$tmp/diff" 2>&1; then
    echo "generated code in proto/ is stale; run scripts/genproto.sh:" >&2
    cat "$tmp/diff" >&2
    exit 1
  fi
  echo "proto: lint clean, generated code up to date"
  exit 0
fi

find proto -name '*.pb.go' -delete
(cd proto && buf generate)
echo "proto: generated"
