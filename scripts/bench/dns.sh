#!/usr/bin/env bash
# dns.sh compares berth-name-service's DNS with unbound and dnsmasq serving the same zone
# (DESIGN §12): SERVICES services (default 10000) of INSTANCES A records each (default 2),
# queried by dnsperf with one A query per service in turn. Each server runs alone in the
# foreground on a loopback port, pinned to CPU $SERVER_CPU with taskset; dnsperf is pinned
# to CPU $CLIENT_CPU. For each server it prints the highest rate with at most 0.1% of the
# queries lost, and the p99 latency at half that rate, then the ratios to the goals:
# ≥ 1.5× dnsmasq, ≥ 1× unbound, p99 < 1 ms at half load.
#
#   scripts/bench/dns.sh               # installs dnsperf, unbound and dnsmasq when missing
#   DURATION=10 SERVICES=10000 scripts/bench/dns.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

SERVICES=${SERVICES:-10000}
INSTANCES=${INSTANCES:-2}
DURATION=${DURATION:-8}
SERVER_CPU=${SERVER_CPU:-1}
CLIENT_CPU=${CLIENT_CPU:-0}
PORT_BERTH=${PORT_BERTH:-15353}
PORT_UNBOUND=${PORT_UNBOUND:-15354}
PORT_DNSMASQ=${PORT_DNSMASQ:-15355}
# NICE is the niceness of the servers and dnsperf (as root, -20 keeps other load on the
# machine from skewing the comparison; empty leaves it alone).
NICE=${NICE-"-20"}
pin_server=(taskset -c "$SERVER_CPU")
pin_client=(taskset -c "$CLIENT_CPU")
if [ -n "$NICE" ] && [ "$(id -u)" = 0 ]; then
  pin_server=(nice -n "$NICE" "${pin_server[@]}")
  pin_client=(nice -n "$NICE" "${pin_client[@]}")
fi
# SERVERS picks which servers run (for profiling one of them); the ratios need all three.
SERVERS=${SERVERS:-"berth unbound dnsmasq"}

need=()
for t in dnsperf:dnsperf unbound:unbound dnsmasq:dnsmasq taskset:util-linux; do
  command -v "${t%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${t%%:*}" ] || need+=("${t##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}" >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
UNBOUND=$(command -v unbound || echo /usr/sbin/unbound)
DNSMASQ=$(command -v dnsmasq || echo /usr/sbin/dnsmasq)

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

echo "building benchserver" >&2
(cd test && go build -o "$work/benchserver" ./names/benchserver)

# wait_dns PORT: until the server answers on 127.0.0.1:PORT.
wait_dns() {
  for _ in $(seq 1 300); do
    if dnsperf -s 127.0.0.1 -p "$1" -d "$work/one" -l 1 -t 1 2>/dev/null | grep -q 'Queries completed: *[1-9]'; then return 0; fi
    sleep 0.2
  done
  echo "server on port $1 did not answer" >&2
  return 1
}

# perf PORT [RATE]: runs dnsperf (closed loop with 200 queries outstanding, or open loop at
# RATE queries/s); prints "qps lost_percent".
perf() {
  local port=$1 rate=${2:-}
  local args=(-s 127.0.0.1 -p "$port" -d "$work/queries" -l "$DURATION" -t 1 -q 200 -c 4)
  [ -n "$rate" ] && args+=(-Q "$rate")
  "${pin_client[@]}" dnsperf "${args[@]}" >"$work/out" 2>&1 || true
  awk '/Queries sent:/ {sent=$3} /Queries lost:/ {lost=$3} /Queries per second:/ {qps=$4}
       END {printf "%d %.3f\n", qps, (sent > 0 ? 100*lost/sent : 100)}' "$work/out"
}

# p99 PORT RATE: loads the server at RATE with dnsperf in verbose mode (one line per
# query with its latency) and prints the p99 in ms, and the p50 after a slash.
p99() {
  local port=$1 rate=$2
  "${pin_client[@]}" dnsperf -s 127.0.0.1 -p "$port" -d "$work/queries" -l "$DURATION" -t 1 -q 200 -c 4 -Q "$rate" -v >"$work/probe" 2>&1 || true
  awk '$1 == ">" {print $NF}' "$work/probe" | sort -g >"$work/lat"
  awk '{a[NR]=$1} END {if (NR == 0) {print "nan"; exit} i=int(NR*0.99); if (i < 1) i=1; printf "%.3f/%.3f", a[i]*1000, a[int((NR+1)/2)]*1000}' "$work/lat"
}

# buckets: berth-name-service's own latency histogram (read to written, per UDP query).
buckets() {
  [ -n "${BERTH_HTTP:-}" ] || return 0
  curl -s "http://$BERTH_HTTP/metrics" | grep 'dns_request_duration_seconds_bucket{proto="udp"' |
    sed -E 's/.*le="([^"]*)"} ([0-9.e+]+)/\1 \2/'
}

# server_p99 BEFORE AFTER: the bucket bound under which 99% of the queries between two
# bucket readings fell, in ms.
server_p99() {
  paste -d' ' "$1" "$2" | awk '{le[NR]=$1; d[NR]=$4-$2} END {t=d[NR]; for (i=1; i<=NR; i++) if (d[i] >= 0.99*t) {printf "≤ %s ms", (le[i] == "+Inf" ? "inf" : le[i]*1000); exit}}'
}

# measure NAME PORT: the highest rate with ≤ 0.1% loss, then p99 at half of it.
measure() {
  local name=$1 port=$2
  perf "$port" >/dev/null # warm-up
  # The closed-loop rate is the ceiling; then open-loop runs at decreasing rates until the
  # loss is at most 0.1%.
  read -r qps _ < <(perf "$port")
  local best=0
  for pct in 100 95 90 85 80 70 60 50; do
    local rate=$((qps * pct / 100))
    read -r got l < <(perf "$port" "$rate")
    if awk -v l="$l" 'BEGIN {exit !(l <= 0.1)}'; then best=$got; break; fi
  done
  buckets >"$work/b0"
  local lat
  lat=$(p99 "$port" $((best / 2)))
  buckets >"$work/b1"
  if [ -s "$work/b1" ]; then
    echo "berth-name-service's own p99 (read to written) at half load: $(server_p99 "$work/b0" "$work/b1")" >&2
  fi
  echo "$name $best $lat"
}

# The records: benchserver writes them for the others too.
echo "search.hotel.ns.berth.internal A" >"$work/one"
"${pin_server[@]}" "$work/benchserver" -dir "$work/berth" -services "$SERVICES" -instances "$INSTANCES" \
  -dns "127.0.0.1:$PORT_BERTH" -hosts-out "$work/hosts" -unbound-out "$work/unbound-data" -queries-out "$work/queries" \
  >"$work/berth.log" 2>&1 &
pids+=($!)
berth_pid=$!
for _ in $(seq 1 600); do grep -q '^ready' "$work/berth.log" && break; sleep 0.2; done
grep '^ready' "$work/berth.log" >&2 || { cat "$work/berth.log" >&2; exit 1; }
BERTH_HTTP=$(grep -o 'http=[^ ]*' "$work/berth.log" | cut -d= -f2)
head -1 "$work/queries" >"$work/one"
shuf "$work/queries" -o "$work/queries"

results=()
if [[ " $SERVERS " == *" berth "* ]]; then
  results+=("$(measure berth-name-service "$PORT_BERTH")")
  [ -n "${PROFILE:-}" ] && echo "berth log: $work/berth.log" >&2
fi
kill "$berth_pid"; wait "$berth_pid" 2>/dev/null || true
BERTH_HTTP=

cat >"$work/unbound.conf" <<CONF
server:
    interface: 127.0.0.1@$PORT_UNBOUND
    port: $PORT_UNBOUND
    do-daemonize: no
    use-syslog: no
    logfile: ""
    verbosity: 0
    chroot: ""
    username: ""
    directory: "$work"
    pidfile: ""
    num-threads: 1
    do-ip6: no
    access-control: 127.0.0.0/8 allow
    so-reuseport: no
    local-zone: "ns.berth.internal." static
$(cat "$work/unbound-data")
CONF
if [[ " $SERVERS " == *" unbound "* ]]; then
"${pin_server[@]}" "$UNBOUND" -d -c "$work/unbound.conf" >"$work/unbound.log" 2>&1 &
pids+=($!)
unbound_pid=$!
wait_dns "$PORT_UNBOUND"
results+=("$(measure unbound "$PORT_UNBOUND")")
kill "$unbound_pid"; wait "$unbound_pid" 2>/dev/null || true
fi

if [[ " $SERVERS " == *" dnsmasq "* ]]; then
"${pin_server[@]}" "$DNSMASQ" --keep-in-foreground --no-resolv --no-hosts --addn-hosts="$work/hosts" \
  --port="$PORT_DNSMASQ" --listen-address=127.0.0.1 --bind-interfaces --local=/ns.berth.internal/ \
  --user=root --pid-file= --cache-size=10000 --dns-forward-max=1000 --log-facility=- >"$work/dnsmasq.log" 2>&1 &
pids+=($!)
dnsmasq_pid=$!
wait_dns "$PORT_DNSMASQ"
results+=("$(measure dnsmasq "$PORT_DNSMASQ")")
kill "$dnsmasq_pid"; wait "$dnsmasq_pid" 2>/dev/null || true
fi

echo
echo "DNS: $SERVICES services × $INSTANCES A records, ${DURATION}s per run, server on CPU $SERVER_CPU, dnsperf on CPU $CLIENT_CPU, nice ${NICE:-0}, load average $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-20s %22s %26s\n' server "max qps (≤0.1% loss)" "p99/p50 ms @ half load"
for r in "${results[@]}"; do
  read -r n q p <<<"$r"
  printf '%-20s %22s %26s\n' "$n" "$q" "$p"
done
[ ${#results[@]} -eq 3 ] || exit 0
read -r _ bq bp <<<"${results[0]}"
read -r _ uq _ <<<"${results[1]}"
read -r _ dq _ <<<"${results[2]}"
awk -v b="$bq" -v u="$uq" -v d="$dq" -v p="${bp%%/*}" 'BEGIN {
  printf "\nberth / unbound = %.2f (goal ≥ 1)\nberth / dnsmasq = %.2f (goal ≥ 1.5)\nberth p99 at half load = %s ms (goal < 1)\n", b/u, b/d, p }'
