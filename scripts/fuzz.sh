#!/usr/bin/env bash
# fuzz.sh runs every Go fuzz target of the workspace (every `func FuzzXxx(f *testing.F)` in a
# _test.go file), one after another, each in its package directory with
#   go test -run='^$' -fuzz='^FuzzXxx$' -fuzztime=$FUZZTIME -fuzzminimizetime=5s
# and prints a table: target, package, time, result (ok, or crash with the failing input
# that go test wrote under the package's testdata/fuzz/FuzzXxx/). It exits 1 when any target
# crashed or did not build, 2 on bad usage.
#
#   scripts/fuzz.sh                  every target, FUZZTIME (default 10s) each
#   FUZZTIME=2s scripts/fuzz.sh      what CI runs
#   scripts/fuzz.sh -list            list the targets and exit
#   scripts/fuzz.sh 'WAL|Extract'    only targets whose name matches the extended regex
#
# The logs of every run are kept in $FUZZ_LOGS (default a fresh temporary directory), whose
# path is printed at the end. A crash leaves its input in testdata/fuzz, where `go test`
# replays it as a regression seed from then on: commit it with the fix.
set -uo pipefail
cd "$(dirname "$0")/.."

fuzztime=${FUZZTIME:-10s}
list=
filter=
for arg in "$@"; do
  case $arg in
    -list|--list) list=1 ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "fuzz.sh: unknown flag $arg (see --help)" >&2; exit 2 ;;
    *)
      if [ -n "$filter" ]; then echo "fuzz.sh: one name pattern at most (got '$filter' and '$arg')" >&2; exit 2; fi
      filter=$arg ;;
  esac
done
if ! [[ $fuzztime =~ ^[0-9]+(ns|us|ms|s|m|h|x)$ ]]; then
  echo "fuzz.sh: FUZZTIME='$fuzztime': want a Go duration such as 10s, or a count such as 500x" >&2
  exit 2
fi

# targets: "dir name" per line, sorted by directory then name.
targets=$(grep -rEo --include='*_test.go' --exclude-dir=.git --exclude-dir=node_modules \
    '^func Fuzz[A-Za-z0-9_]*\(' . 2>/dev/null |
  sed -E 's|^\./||; s|^(.*)/[^/]*_test\.go:func (Fuzz[A-Za-z0-9_]*)\($|\1 \2|' |
  sort -u)
if [ -n "$filter" ]; then
  targets=$(echo "$targets" | awk -v re="$filter" '$2 ~ re')
fi
if [ -z "$targets" ]; then
  echo "fuzz.sh: no fuzz target found${filter:+ matching '$filter'}" >&2
  exit 1
fi
if [ -n "$list" ]; then
  echo "$targets" | awk '{printf "%-24s %s\n", $2, $1}'
  exit 0
fi

logs=${FUZZ_LOGS:-$(mktemp -d "${TMPDIR:-/tmp}/berth-fuzz.XXXXXX")}
mkdir -p "$logs"
n=$(echo "$targets" | wc -l)
echo "fuzzing $n targets, $fuzztime each; logs in $logs"

rows=()
failed=0
while read -r dir name; do
  log="$logs/$name.log"
  pkg=$(cd "$dir" && go list . 2>/dev/null) || pkg=$dir
  start=$(date +%s.%N)
  (cd "$dir" && go test -run='^$' -fuzz="^${name}\$" -fuzztime="$fuzztime" -fuzzminimizetime=5s .) >"$log" 2>&1
  rc=$?
  secs=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN{printf "%.1fs", e-s}')
  if [ $rc -eq 0 ]; then
    execs=$(grep -Eo 'execs: [0-9]+' "$log" | tail -1 | awk '{print $2}')
    result="ok${execs:+ ($execs execs)}"
  else
    failed=$((failed+1))
    input=$(grep -Eo 'testdata/fuzz/'"$name"'/[0-9a-f]+' "$log" | tail -1)
    if [ -n "$input" ]; then
      result="crash: $dir/$input"
    else
      result="error (exit $rc): see $log"
    fi
  fi
  rows+=("$name|$pkg|$secs|$result")
  printf '  %-22s %-8s %s\n' "$name" "$secs" "$result"
done <<<"$targets"

echo
{
  echo "TARGET|PACKAGE|TIME|RESULT"
  printf '%s\n' "${rows[@]}"
} | awk -F'|' '{for (i = 1; i <= NF; i++) { cell[NR, i] = $i; if (length($i) > w[i]) w[i] = length($i) } }
  END { for (r = 1; r <= NR; r++) printf "%-*s  %-*s  %*s  %s\n", w[1], cell[r, 1], w[2], cell[r, 2], w[3], cell[r, 3], cell[r, 4] }'
echo
if [ $failed -gt 0 ]; then
  echo "fuzz.sh: $failed of $n targets failed; logs in $logs" >&2
  exit 1
fi
echo "fuzz.sh: all $n targets ok ($fuzztime each)"
