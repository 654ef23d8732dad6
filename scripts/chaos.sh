#!/usr/bin/env bash
# chaos.sh runs Berth's chaos suites (test/chaos) and prints their summaries: coord under
# kill -9, SIGSTOP pauses, partitions, cut and slow links with porcupine-checked client
# histories and identical member states and histories; NATS restarted during deployments;
# the controller leader killed during deployments. It also runs the broken variant
# (berth-coord built with berth_unsafe_local_reads), which must make the checker report
# violations, so that a green run means the checker could have failed.
#
#   scripts/chaos.sh              full: CHAOS_DURATION (default 5m) of random coord faults,
#                                 100 deployments per controller suite
#   scripts/chaos.sh --short      every coord fault twice, 12 and 20 deployments (~2-3 min)
#   scripts/chaos.sh -run REGEX   only the tests matching REGEX (go test -run)
#
# CHAOS_SEED fixes the random choices of a run (each run logs its seed). The full output
# is kept in $CHAOS_LOG (default a temporary file), whose path is printed at the end.
set -uo pipefail
cd "$(dirname "$0")/../test"

short=()
timeout=90m
run=()
while [ $# -gt 0 ]; do
  case $1 in
    --short|-short) short=(-short); timeout=20m ;;
    -run|--run)
      [ $# -ge 2 ] || { echo "chaos.sh: $1 needs a regular expression" >&2; exit 2; }
      run=(-run "$2"); shift ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "chaos.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

log=${CHAOS_LOG:-$(mktemp "${TMPDIR:-/tmp}/berth-chaos.XXXXXX.log")}
start=$SECONDS
CHAOS_BROKEN=1 go test -count=1 -v -timeout "$timeout" "${short[@]}" "${run[@]}" ./chaos/... >"$log" 2>&1 &
pid=$!
# Show the tests' progress while they run.
tail -n +1 -f "$log" --pid=$pid 2>/dev/null | grep --line-buffered -E '^(--- |ok |FAIL|panic)|round [0-9]+:|NATS restart|kill [0-9]+:'
wait $pid
rc=$?

echo
echo "== chaos summaries ($((SECONDS-start)) s)"
grep -E '^chaos summary:' "$log" | sed 's/^chaos summary: /  /'
grep -E '^\s+--- (FAIL|SKIP)' "$log" | sed 's/^\s*/  /'
echo "full log: $log"
if [ $rc -ne 0 ]; then
  echo "chaos.sh: FAILED (go test exit $rc)" >&2
fi
exit $rc
