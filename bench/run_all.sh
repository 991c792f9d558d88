#!/usr/bin/env bash
# Runs every benchmark in sequence (as root, from the repository root) and
# keeps their output in bench/results-<UTC time>/ (or $1). Each script waits
# for a quiet machine before each measurement (see --quiet-cores); on a shared
# machine, run it as `nice -n -20 bench/run_all.sh` (children inherit it).
#   bench/run_all.sh [OUTDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/results-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out"
py=.venv/bin/python
run() {
  local name=$1; shift
  echo "== $name: $*"
  "$@" 2>&1 | tee "$out/$name.txt" || echo "($name exited non-zero: a target missed, or a failure)"
}
run startup   $py bench/startup.py --runs 10
run rss       $py bench/rss.py --procs 5000
run exec_storm $py bench/exec_storm.py --execs 20000 --rounds 3 --json "$out/exec_storm.json"
if [ -x .venv/bin/py-spy ]; then
  run profile_storm     $py bench/profile_daemon.py storm --execs 5000
  run profile_bootstrap $py bench/profile_daemon.py bootstrap --procs 5000
fi
# tracer beside bpftrace and auditd (installs them if missing); --record adds
# the table to BENCHMARKS.md with the date, the commit and the machine.
run peers $py bench/peers.py --record
echo "results in $out"
