#!/usr/bin/env bash
# images.sh builds, on the local Docker engine, every image docker-compose.yml runs, without
# pulling anything (this machine, like CI, reaches no image registry):
#
#   berth/<binary>:dev     each Berth binary, static (CGO_ENABLED=0), FROM scratch; the agent
#                          also gets a static busybox as /bin/sh and the usual applets, since
#                          package scripts are shell scripts
#   berth/nats-server:dev  nats-server v2.15.2, built from its Go module
#   berth/registry:dev     Debian's docker-registry with the few shared libraries it links
#   berth/ftpd:dev         a small anonymous, read-only FTP server for packages (goftp.io)
#
# Images are made with `docker import` from a root file system laid out here (no Dockerfile,
# no builder, no base image), with a reproducible tar; an image whose root file system did
# not change is left as it is (label dev.berth.rootfs-sha256).
#
#   scripts/images.sh            build everything that can be built; a Berth binary whose
#                                main package does not exist yet is skipped with a warning
#   scripts/images.sh --strict   fail instead of skipping
#   scripts/images.sh coord agent     only these (binary names with or without berth-;
#                                     nats-server, registry, ftpd)
#
# Needs: go, docker, tar, sha256sum, ldd; busybox-static (/bin/busybox) and docker-registry
# from Debian (apt-get install busybox-static docker-registry).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

TAG=${BERTH_IMAGE_TAG:-dev}
NATS_VERSION=v2.15.2
GOFTP_VERSION=v2.0.3
BUSYBOX=${BUSYBOX:-/bin/busybox}
REGISTRY_BIN=${REGISTRY_BIN:-/usr/bin/docker-registry}

strict=0
want=()
for a in "$@"; do
  case $a in
    --strict) strict=1 ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    -*) echo "images.sh: unknown flag $a" >&2; exit 2 ;;
    *) want+=("${a#berth-}") ;;
  esac
done

# binaries maps each Berth binary to its main package.
binaries=(
  "berth-coord:./services/coord/cmd/berth-coord"
  "berth-controller:./services/task-controller/cmd/berth-controller"
  "berth-scheduler:./services/scheduler/cmd/berth-scheduler"
  "berth-cmdb-sync:./services/cmdb-sync/cmd/berth-cmdb-sync"
  "berth-image-builder:./services/image-builder/cmd/berth-image-builder"
  "berth-name-service:./services/name-service/cmd/berth-name-service"
  "berth-agent:./services/agent/cmd/berth-agent"
)

work=$(mktemp -d /tmp/berth-images.XXXXXX)
trap 'rm -rf "$work"' EXIT
export CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -trimpath -buildvcs=false"
built=() skipped=()

wanted() {
  [ ${#want[@]} -eq 0 ] && return 0
  local n=${1#berth-} w
  for w in "${want[@]}"; do [ "$w" = "$n" ] && return 0; done
  return 1
}

# import_rootfs IMAGE DIR CHANGE...: makes IMAGE from the root file system in DIR, with the
# Dockerfile instructions CHANGE (ENTRYPOINT, EXPOSE, ...), unless an image of the same
# content already exists.
import_rootfs() {
  local image=$1 dir=$2; shift 2
  local tarball="$work/$(echo "$image" | tr '/:' '__').tar" sum have
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$dir" -cf "$tarball" .
  sum=$(sha256sum "$tarball" | cut -d' ' -f1)
  have=$(docker image inspect -f '{{index .Config.Labels "dev.berth.rootfs-sha256"}}' "$image" 2>/dev/null || true)
  if [ "$have" = "$sum" ]; then
    echo "  $image unchanged"
    built+=("$image")
    return 0
  fi
  local changes=(--change "LABEL dev.berth.rootfs-sha256=$sum" --change "LABEL org.opencontainers.image.source=https://github.com/berthdev/berth")
  local c
  for c in "$@"; do changes+=(--change "$c"); done
  docker import "${changes[@]}" "$tarball" "$image" >/dev/null
  echo "  $image built ($(du -h "$tarball" | cut -f1))"
  built+=("$image")
}

# base_rootfs DIR: the directories every image has (/tmp for os.TempDir, /etc for the files
# Go reads when present).
base_rootfs() {
  mkdir -p "$1/tmp" "$1/etc" "$1/data"
  chmod 1777 "$1/tmp"
  printf 'root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$1/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$1/etc/group"
  printf 'hosts: files dns\n' >"$1/etc/nsswitch.conf"
}

# add_busybox DIR: a static busybox with every applet linked in /bin, and a nohup (Debian's
# busybox has none; package start scripts use it).
add_busybox() {
  local dir=$1
  [ -x "$BUSYBOX" ] || { echo "images.sh: $BUSYBOX missing (apt-get install busybox-static)" >&2; exit 1; }
  if ! file -L "$BUSYBOX" 2>/dev/null | grep -q 'statically linked' && ldd "$BUSYBOX" >/dev/null 2>&1; then
    echo "images.sh: $BUSYBOX is not statically linked (apt-get install busybox-static)" >&2; exit 1
  fi
  mkdir -p "$dir/bin" "$dir/usr/bin" "$dir/sbin" "$dir/usr/sbin"
  cp "$BUSYBOX" "$dir/bin/busybox"
  local a
  for a in $("$BUSYBOX" --list); do
    [ "$a" = busybox ] && continue
    [ -e "$dir/bin/$a" ] || ln -s busybox "$dir/bin/$a"
  done
  cat >"$dir/bin/nohup" <<'SH'
#!/bin/sh
# nohup COMMAND...: runs COMMAND immune to hangups (busybox-static in Debian has no nohup).
trap '' HUP
exec "$@"
SH
  chmod 755 "$dir/bin/nohup"
}

echo "== Berth binaries"
for entry in "${binaries[@]}"; do
  name=${entry%%:*} pkg=${entry#*:}
  wanted "$name" || continue
  if [ ! -d "$pkg" ]; then
    if [ $strict = 1 ]; then echo "images.sh: $name: no main package at $pkg" >&2; exit 1; fi
    echo "  WARNING: $name skipped: no main package at $pkg yet"
    skipped+=("$name")
    continue
  fi
  dir="$work/$name"
  base_rootfs "$dir"
  mkdir -p "$dir/usr/local/bin"
  if ! go build -ldflags "-s -w" -o "$dir/usr/local/bin/$name" "$pkg" 2>"$work/$name.log"; then
    if [ $strict = 1 ]; then cat "$work/$name.log" >&2; echo "images.sh: build $name failed" >&2; exit 1; fi
    echo "  WARNING: $name skipped: go build failed: $(tail -3 "$work/$name.log" | tr '\n' ' ')"
    skipped+=("$name")
    continue
  fi
  changes=("ENTRYPOINT [\"/usr/local/bin/$name\"]" "WORKDIR /data")
  if [ "$name" = berth-agent ]; then
    add_busybox "$dir"
    mkdir -p "$dir/var/lib/berth/agent" "$dir/opt/berth/plugins"
    changes+=("ENV PATH=/usr/local/bin:/bin")
  fi
  import_rootfs "berth/$name:$TAG" "$dir" "${changes[@]}"
done

if wanted nats-server; then
  echo "== nats-server $NATS_VERSION"
  dir="$work/nats-server"
  base_rootfs "$dir"
  mkdir -p "$dir/usr/local/bin"
  GOWORK=off GOBIN="$work/gobin" go install -ldflags "-s -w" "github.com/nats-io/nats-server/v2@$NATS_VERSION"
  cp "$work/gobin/nats-server" "$dir/usr/local/bin/nats-server"
  import_rootfs "berth/nats-server:$TAG" "$dir" 'ENTRYPOINT ["/usr/local/bin/nats-server"]' 'EXPOSE 4222 8222'
fi

if wanted registry; then
  echo "== registry (Debian docker-registry)"
  [ -x "$REGISTRY_BIN" ] || { echo "images.sh: $REGISTRY_BIN missing (apt-get install docker-registry)" >&2; exit 1; }
  dir="$work/registry"
  base_rootfs "$dir"
  mkdir -p "$dir/usr/bin" "$dir/etc/docker/registry" "$dir/var/lib/registry"
  cp "$REGISTRY_BIN" "$dir/usr/bin/docker-registry"
  # A dynamically linked binary brings the libraries ldd names, at the same paths.
  for lib in $(ldd "$REGISTRY_BIN" 2>/dev/null | grep -oE '/[^ ]+' || true); do
    mkdir -p "$dir$(dirname "$lib")"
    cp -L "$lib" "$dir$lib"
  done
  cp deploy/compose/registry.yml "$dir/etc/docker/registry/config.yml"
  import_rootfs "berth/registry:$TAG" "$dir" 'ENTRYPOINT ["/usr/bin/docker-registry"]' 'CMD ["serve", "/etc/docker/registry/config.yml"]' 'EXPOSE 5000'
fi

if wanted ftpd; then
  echo "== ftpd (goftp.io/server $GOFTP_VERSION)"
  src="$work/ftpd-src"
  mkdir -p "$src"
  cat >"$src/main.go" <<'GO'
// Command berth-ftpd serves a directory over FTP to anonymous users, for packages in the
// compose stack (Elong's package FTP). Mount the directory read-only: the server does not
// refuse uploads itself.
package main

import (
	"flag"
	"log"

	"goftp.io/server/v2"
	"goftp.io/server/v2/driver/file"
)

func main() {
	root := flag.String("root", "/srv/ftp", "directory to serve")
	port := flag.Int("port", 21, "control port")
	passive := flag.String("passive-ports", "30000-30009", "passive data ports")
	publicIP := flag.String("public-ip", "", "address announced in PASV replies (EPSV needs none)")
	flag.Parse()
	driver, err := file.NewDriver(*root)
	if err != nil {
		log.Fatalf("driver %s: %v", *root, err)
	}
	s, err := server.NewServer(&server.Options{
		Name:         "berth-ftpd",
		Driver:       driver,
		Auth:         &server.SimpleAuth{Name: "anonymous", Password: "anonymous"},
		Perm:         server.NewSimplePerm("root", "root"),
		Hostname:     "0.0.0.0",
		Port:         *port,
		PassivePorts: *passive,
		PublicIP:     *publicIP,
	})
	if err != nil {
		log.Fatalf("ftp server: %v", err)
	}
	if err := s.ListenAndServe(); err != nil {
		log.Fatalf("ftp server: %v", err)
	}
}
GO
  printf 'module berth.local/ftpd\n\ngo 1.26\n' >"$src/go.mod"
  (cd "$src" && GOWORK=off GOFLAGS=-mod=mod go get "goftp.io/server/v2@$GOFTP_VERSION" >/dev/null 2>&1 &&
    GOWORK=off GOFLAGS=-mod=mod go build -trimpath -ldflags "-s -w" -o "$work/berth-ftpd" .)
  dir="$work/ftpd"
  base_rootfs "$dir"
  mkdir -p "$dir/usr/local/bin" "$dir/srv/ftp"
  cp "$work/berth-ftpd" "$dir/usr/local/bin/berth-ftpd"
  import_rootfs "berth/ftpd:$TAG" "$dir" 'ENTRYPOINT ["/usr/local/bin/berth-ftpd"]' 'EXPOSE 21'
fi

echo "== images: ${built[*]:-none}"
if [ ${#skipped[@]} -gt 0 ]; then
  echo "== not built (no main package yet or build failed): ${skipped[*]}"
fi
