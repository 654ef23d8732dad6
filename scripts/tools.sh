# tools.sh pins the versions of the tools the scripts install with `go install`. Sourced.
export PATH="$(go env GOPATH)/bin:$PATH"
BUF_PKG=github.com/bufbuild/buf/cmd/buf
BUF_VERSION=v1.75.0
PROTOC_GEN_GO_PKG=google.golang.org/protobuf/cmd/protoc-gen-go
PROTOC_GEN_GO_VERSION=v1.36.12
PROTOC_GEN_GO_GRPC_PKG=google.golang.org/grpc/cmd/protoc-gen-go-grpc
PROTOC_GEN_GO_GRPC_VERSION=v1.5.1
STATICCHECK_PKG=honnef.co/go/tools/cmd/staticcheck
STATICCHECK_VERSION=v0.7.0

# ensure_tool NAME PKG@VERSION installs PKG@VERSION unless NAME already reports VERSION.
ensure_tool() {
  local name=$1 spec=$2 want=${2##*@} bin
  bin="$(go env GOPATH)/bin/$name"
  if [ -x "$bin" ] && go version -m "$bin" 2>/dev/null | grep -q "[[:space:]]$want\b"; then return 0; fi
  echo "installing $spec" >&2
  GOFLAGS=-buildvcs=false go install "$spec"
}
HELM_PKG=helm.sh/helm/v3/cmd/helm
HELM_VERSION=v3.22.0
