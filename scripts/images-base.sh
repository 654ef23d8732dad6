#!/usr/bin/env bash
# images-base.sh makes Berth's base image with the docker CLI, for engines with no registry
# to pull from — what `berth images base` does through the engine API: FROM scratch, a
# static busybox at /bin/busybox with a link for each applet (so /bin/sh, ls, cat, ...
# exist), /tmp, /root, /etc/passwd and /etc/group; tagged <registry>/<name> and pushed, or
# only tagged <name> when the registry is empty.
#
#   scripts/images-base.sh [--name berth/base:busybox] [--registry 127.0.0.1:5000] [--busybox /bin/busybox]
#   scripts/images-base.sh --registry ""     # a local image only
#
# Needs a static busybox (Debian: apt-get install busybox-static) and a Docker engine. A
# registry on loopback is reached over plain HTTP without configuring the engine.
set -euo pipefail
name=berth/base:busybox
registry=127.0.0.1:5000
busybox=/bin/busybox
while [ $# -gt 0 ]; do
  case $1 in
    --name) name=$2; shift 2 ;;
    --registry) registry=$2; shift 2 ;;
    --busybox) busybox=$2; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "images-base.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

if [ ! -x "$busybox" ]; then
  echo "images-base.sh: no busybox at $busybox (apt-get install busybox-static, or pass --busybox)" >&2
  exit 1
fi
if file -L "$busybox" 2>/dev/null | grep -q 'dynamically linked'; then
  echo "images-base.sh: $busybox is not statically linked: a scratch image has no dynamic loader (apt-get install busybox-static)" >&2
  exit 1
fi
case $registry in
  */*|*@*|*" "*) echo "images-base.sh: --registry $registry: want host[:port]" >&2; exit 2 ;;
esac
ref=$name
[ -n "$registry" ] && ref=$registry/$name

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
root=$ctx/rootfs
mkdir -p "$root/bin" "$root/etc" "$root/root" "$root/tmp"
chmod 1777 "$root/tmp"
chmod 700 "$root/root"
cp "$busybox" "$root/bin/busybox"
chmod 755 "$root/bin/busybox"
n=0
while read -r applet; do
  applet=${applet#/}
  case $applet in ""|bin/busybox|..*|*/../*) continue ;; esac
  dir=$(dirname "$applet")
  mkdir -p "$root/$dir"
  # Relative links, as berth images base makes them.
  up=$(echo "$dir" | sed -e 's|[^/][^/]*|..|g')
  ln -sf "$up/bin/busybox" "$root/$applet"
  n=$((n + 1))
done < <("$busybox" --list-full)
[ -L "$root/bin/sh" ] || { echo "images-base.sh: $busybox has no sh applet" >&2; exit 1; }
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
cat >"$ctx/Dockerfile" <<'EOF'
FROM scratch
COPY rootfs/ /
LABEL dev.berth.base-image="true"
CMD ["/bin/sh"]
EOF

docker build -t "$ref" "$ctx"
echo "image      $ref ($n applets)"
if [ -n "$registry" ]; then
  docker push "$ref"
fi
