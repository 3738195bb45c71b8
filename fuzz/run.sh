#!/usr/bin/env bash
# Coverage-guided fuzzing of every lorascope parser with atheris (libFuzzer).
#
#   fuzz/run.sh SECONDS [TARGET ...]     # default: every fuzz/fuzz_*.py, one after the other
#
# Each harness runs for SECONDS (restarted after a crash until its time is spent).
# Crashing inputs are saved to fuzz/corpus/<target>/crashes/ (commit them: they become
# regression tests in tests/hostile/test_regressions.py); the growing corpus lives in
# fuzz/corpus/<target>/queue/ (not committed).  A summary line per target, with the
# number of executions, goes to fuzz/corpus/<target>/stats.txt and stdout.
set -uo pipefail
cd "$(dirname "$0")/.."
SECS=${1:?usage: fuzz/run.sh SECONDS [TARGET ...]}
shift
PY=${PYTHON:-.venv/bin/python}
if [ $# -gt 0 ]; then TARGETS=("$@"); else
  TARGETS=(); for f in fuzz/fuzz_*.py; do t=${f#fuzz/fuzz_}; TARGETS+=("${t%.py}"); done
fi
status=0
for t in "${TARGETS[@]}"; do
  dir=fuzz/corpus/$t
  mkdir -p "$dir/queue" "$dir/crashes"
  start=$(date +%s); execs=0; runs=0
  while :; do
    left=$(( SECS - ($(date +%s) - start) ))
    [ "$left" -le 0 ] && break
    log=$(mktemp)
    "$PY" "fuzz/fuzz_$t.py" "$dir/queue" "fuzz/seeds/$t" \
      -max_total_time="$left" -timeout=20 -rss_limit_mb=2560 -max_len=65536 \
      -artifact_prefix="$dir/crashes/" -print_final_stats=1 >"$log" 2>&1
    rc=$?
    runs=$((runs + 1))
    n=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    [ -z "$n" ] && n=$(grep -o '^#[0-9]*' "$log" | tail -1 | tr -d '#')
    execs=$((execs + ${n:-0}))
    if [ "$rc" -ne 0 ]; then
      status=1
      echo "== $t: crash (exit $rc); input saved under $dir/crashes/" >&2
      grep -E 'Error|Exception|Traceback|==ERROR|artifact' "$log" | tail -8 >&2
      cp "$log" "$dir/crashes/last-crash.log"
      # the same bug would be found again at once: stop this target after 3 crashes
      [ "$runs" -ge 3 ] && { rm -f "$log"; break; }
    fi
    rm -f "$log"
    [ "$rc" -eq 0 ] && break
  done
  line="$t: $(( $(date +%s) - start )) s, $execs executions, $(find "$dir/crashes" -type f ! -name '*.log' | wc -l) crash file(s)"
  echo "$line" | tee "$dir/stats.txt"
done
exit $status
