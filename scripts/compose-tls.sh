#!/usr/bin/env bash
# compose-tls.sh makes everything docker-compose.tls.yml mounts, in deploy/compose/tls (or
# $BERTH_TLS_DIR, which the override reads too):
#
#   ca.crt, ca.key          a private CA (berth certs init); ca.key is mounted nowhere
#   <service>.crt/.key      one certificate per service, valid for the compose host names,
#                           localhost and 127.0.0.1; berth.crt/.key for the CLI
#   nats-server.conf        TLS with client certificates, one nkey user per service with only
#                           its own subjects (berth certs nats-config), paths under
#                           /etc/berth/tls, where the override mounts the files
#   nats/<user>.nk, .env    each user's seed and BERTH_NATS_* settings (agent-agent-1,
#                           agent-agent-2 for the two agents, berth for the CLI)
#
#   scripts/compose-tls.sh            keep an existing CA and seeds, make what is missing
#   scripts/compose-tls.sh --force    a new CA, new certificates and new seeds
#   docker-compose -f docker-compose.yml -f docker-compose.tls.yml up -d
#
# It ends by printing the CLI's settings for the stack. BERTH_BIN names a berth binary to
# use; by default it is built from ./cmd/berth.
set -euo pipefail
cd "$(dirname "$0")/.."

force=0
for a in "$@"; do
  case $a in
    --force) force=1 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "compose-tls.sh: unknown argument $a" >&2; exit 2 ;;
  esac
done

# berth certs init creates the directory (0700); the paths printed at the end are absolute.
dir=${BERTH_TLS_DIR:-deploy/compose/tls}
case $dir in /*) ;; *) dir=$PWD/$dir ;; esac

berth=${BERTH_BIN:-}
if [ -z "$berth" ]; then
  work=$(mktemp -d /tmp/berth-compose-tls.XXXXXX)
  trap 'rm -rf "$work"' EXIT
  go build -o "$work/berth" ./cmd/berth
  berth=$work/berth
fi

# The agents of docker-compose.yml; each gets its own NATS user (agent-<host id>).
agents=agent-1,agent-2

if [ $force = 1 ] || [ ! -e "$dir/ca.crt" ]; then
  flags=()
  [ $force = 1 ] && flags+=(--force)
  "$berth" certs init --dir "$dir" "${flags[@]}"
else
  echo "compose-tls.sh: keeping the CA and certificates in $dir (--force makes new ones)"
  missing=()
  for f in ca.crt coord coord-peer nats controller scheduler cmdb-sync image-builder name-service agent berth; do
    case $f in
      *.crt) [ -e "$dir/$f" ] || missing+=("$f") ;;
      *) for ext in crt key; do [ -e "$dir/$f.$ext" ] || missing+=("$f.$ext"); done ;;
    esac
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "compose-tls.sh: $dir has a CA but lacks ${missing[*]}; run with --force" >&2
    exit 1
  fi
fi

flags=(--dir "$dir" --path /etc/berth/tls --agent-hosts "$agents")
[ $force = 1 ] && flags+=(--force)
"$berth" certs nats-config "${flags[@]}"

cat <<EOF

compose-tls.sh: $dir is ready. Start the stack and point the CLI at it:

  docker-compose -f docker-compose.yml -f docker-compose.tls.yml up -d
  export BERTH_CONTROLLER_URL=https://127.0.0.1:7070 BERTH_NAMES_URL=https://127.0.0.1:7071
  export BERTH_COORD_ENDPOINTS=127.0.0.1:7379,127.0.0.1:7381,127.0.0.1:7383
  export BERTH_NATS_URL=tls://127.0.0.1:4222 BERTH_NATS_NKEY_SEED_FILE=$dir/nats/berth.nk
  export BERTH_CA_FILE=$dir/ca.crt BERTH_CERT_FILE=$dir/berth.crt BERTH_KEY_FILE=$dir/berth.key
EOF
