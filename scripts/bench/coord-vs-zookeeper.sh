#!/usr/bin/env bash
# coord-vs-zookeeper.sh benchmarks berth-coord's sessions and ephemeral nodes against
# ZooKeeper 3.8 (Debian zookeeperd) on this machine: a 3-member ensemble of each on
# 127.0.0.1 (ZooKeeper run with java from a zoo.cfg generated in a temp dir, not the system
# service), driven by one harness (test/bench/coordbench). A client process creates 10,000
# ephemeral nodes in one session, is killed with SIGKILL, and a second client times the
# removal of its nodes; ZooKeeper's session timeout and berth's session TTL are the same
# (2 s). It prints a table with the ratios and the goals of DESIGN.md §12.
#
#   scripts/bench/coord-vs-zookeeper.sh
#   BENCH_N=20000 BENCH_TTL=5s BENCH_INFLIGHT=1,100 scripts/bench/coord-vs-zookeeper.sh
#
# It installs zookeeperd with apt-get when ZooKeeper is missing, cleans up every process it
# started (also on Ctrl-C), and gives up after 10 minutes.
set -euo pipefail
cd "$(dirname "$0")/../.."
LIMIT=${BENCH_LIMIT:-570}
N=${BENCH_N:-10000}
TTL=${BENCH_TTL:-2s}
INFLIGHT=${BENCH_INFLIGHT:-1,100}
ZK_JAR=/usr/share/java/zookeeper.jar

TMP=$(mktemp -d "${TMPDIR:-/tmp}/coord-vs-zookeeper.XXXXXX")
PIDS=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  if [ $rc -ne 0 ]; then
    echo "failed (exit $rc); server logs:" >&2
    for f in "$TMP"/*.log; do [ -f "$f" ] && { echo "--- $f" >&2; tail -n 15 "$f" >&2; }; done
  fi
  rm -rf "$TMP"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# bounded CMD... runs CMD with what is left of the time limit.
bounded() {
  local left=$((LIMIT - SECONDS))
  if [ $left -le 0 ]; then echo "coord-vs-zookeeper: over ${LIMIT}s, giving up" >&2; return 124; fi
  timeout --signal=TERM --kill-after=10 "$left" "$@"
}

if [ ! -f "$ZK_JAR" ] || ! command -v java >/dev/null; then
  echo "installing zookeeperd (ZooKeeper 3.8)" >&2
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  bounded $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive bounded $SUDO apt-get install -y -qq zookeeperd >/dev/null
  # The package may start its system service; this script runs its own ensemble instead.
  $SUDO systemctl stop zookeeper 2>/dev/null || true
fi
ZK_VERSION=$(unzip -p "$ZK_JAR" META-INF/MANIFEST.MF 2>/dev/null | awk -F': ' '/Implementation-Version/ {print $2}' | tr -d '\r')
ZK_VERSION=${ZK_VERSION:-$(dpkg-query -W -f '${Version}' zookeeper 2>/dev/null || echo unknown)}

echo "building berth-coord and coordbench" >&2
bounded go build -o "$TMP/berth-coord" ./services/coord/cmd/berth-coord
(cd test && bounded go build -o "$TMP/coordbench" ./bench/coordbench)

# free_port prints a loopback port below the ephemeral range that nothing listens on.
USED=" "
free_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 12000))
    case "$USED" in *" $p "*) continue ;; esac
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then USED+="$p "; echo "$p"; return; fi
  done
}

# ttl_ms converts a Go duration of whole seconds or milliseconds ("2s", "1500ms") to ms.
ttl_ms() {
  case "$1" in
    *ms) echo "${1%ms}" ;;
    *s) echo $(( ${1%s} * 1000 )) ;;
    *) echo "BENCH_TTL=$1: want Ns or Nms" >&2; return 1 ;;
  esac
}
TTL_MS=$(ttl_ms "$TTL")

# ZooKeeper: 3 members. A session timeout must lie in [2, 20] ticks, so the tick is 200 ms
# (the default 2 s tick would round a 2 s timeout up to 4 s); session expiry is checked
# every tick. syncLimit/initLimit keep the usual 5/10 ticks.
declare -a ZC ZQ ZE
for i in 1 2 3; do ZC[$i]=$(free_port); ZQ[$i]=$(free_port); ZE[$i]=$(free_port); done
ZK_CLIENTS=()
for i in 1 2 3; do
  d="$TMP/zk$i"
  mkdir -p "$d/data"
  echo "$i" >"$d/data/myid"
  {
    echo "tickTime=200"
    echo "initLimit=10"
    echo "syncLimit=5"
    echo "dataDir=$d/data"
    echo "clientPort=${ZC[$i]}"
    echo "clientPortAddress=127.0.0.1"
    echo "maxClientCnxns=0"
    echo "admin.enableServer=false"
    echo "4lw.commands.whitelist=ruok,srvr"
    echo "metricsProvider.className=org.apache.zookeeper.metrics.impl.NullMetricsProvider"
    for j in 1 2 3; do echo "server.$j=127.0.0.1:${ZQ[$j]}:${ZE[$j]}"; done
  } >"$d/zoo.cfg"
  printf 'log4j.rootLogger=WARN, F\nlog4j.appender.F=org.apache.log4j.ConsoleAppender\nlog4j.appender.F.layout=org.apache.log4j.PatternLayout\nlog4j.appender.F.layout.ConversionPattern=%%d %%p %%c{1}: %%m%%n\n' >"$d/log4j.properties"
  java -Xmx1g -cp "$d:$ZK_JAR:/usr/share/java/slf4j-log4j12.jar:/usr/share/java/log4j-1.2.jar" \
    -Dlog4j.configuration="file:$d/log4j.properties" -Dzookeeper.jmx.log4j.disable=true \
    org.apache.zookeeper.server.quorum.QuorumPeerMain "$d/zoo.cfg" >"$TMP/zk$i.log" 2>&1 &
  PIDS+=($!) ZK_CLIENTS+=("127.0.0.1:${ZC[$i]}")
done

# berth-coord: 3 members with the same Raft timings as in coord-vs-etcd.sh.
declare -a CC CP CM
COORD_CLUSTER=""
for i in 1 2 3; do CC[$i]=$(free_port); CP[$i]=$(free_port); CM[$i]=$(free_port); COORD_CLUSTER+="n$i=127.0.0.1:${CP[$i]},"; done
COORD_CLUSTER=${COORD_CLUSTER%,}
COORD_CLIENTS=()
for i in 1 2 3; do
  "$TMP/berth-coord" --name "n$i" --data-dir "$TMP/coord$i" \
    --listen-client "127.0.0.1:${CC[$i]}" --listen-peer "127.0.0.1:${CP[$i]}" --listen-metrics "127.0.0.1:${CM[$i]}" \
    --initial-cluster "$COORD_CLUSTER" --initial-cluster-state new \
    --heartbeat-interval 100 --election-timeout 1000 --log-format text >"$TMP/coord$i.log" 2>&1 &
  PIDS+=($!) COORD_CLIENTS+=("127.0.0.1:${CC[$i]}")
done

# zk_mode PORT prints the member's mode (leader, follower) once it serves.
zk_mode() {
  exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
  printf 'srvr' >&3
  awk -F': ' '/^Mode/ {print $2}' <&3
  exec 3<&-
}
for _ in $(seq 300); do
  up=0
  for i in 1 2 3; do
    m=$(zk_mode "${ZC[$i]}" 2>/dev/null || true)
    case "$m" in leader|follower) up=$((up + 1)) ;; esac
    curl -fsS -o /dev/null "http://127.0.0.1:${CM[$i]}/readyz" 2>/dev/null && up=$((up + 1))
  done
  [ $up = 6 ] && break
  sleep 0.2
done
[ $up = 6 ] || { echo "ensembles not up within 60 s" >&2; exit 1; }
echo "ZooKeeper $ZK_VERSION and berth-coord are up; data in $TMP; load average: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

join() { local IFS=,; echo "$*"; }
bounded "$TMP/coordbench" ephemeral --zk "$(join "${ZK_CLIENTS[@]}")" --coord "$(join "${COORD_CLIENTS[@]}")" \
  --n "$N" --ttl "$TTL" --inflight "$INFLIGHT"
echo "(ZooKeeper: tickTime 200 ms, session timeout ${TTL_MS} ms; berth-coord: heartbeat 100 ms, election 1000 ms, TTL ${TTL_MS} ms)"
