# shellcheck shell=bash
# Progress lines for the long steps of the demo and test scripts (sourced), so that a first run
# never sits silent: each step says what it does and roughly how long it takes, and a step
# that runs without output of its own says every minute that it is still running.
#
#   progress MESSAGE                        "==> MESSAGE" on stderr
#   progress_run LABEL ESTIMATE CMD...      runs CMD with a start line, a line a minute while
#                                           it runs, and its time at the end; CMD's status
#   progress_cargo LABEL ESTIMATE ARGS...   `cargo ARGS`: on a terminal with cargo's own
#                                           progress bar, otherwise --quiet under progress_run

progress() {
  echo "==> $*" >&2
}

progress_run() {
  local label=$1 estimate=$2
  shift 2
  progress "$label ($estimate)"
  local start pid status=0 next=60
  start=$(date +%s)
  "$@" &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    if [ $(($(date +%s) - start)) -ge "$next" ]; then
      echo "    ... still $label ($(($(date +%s) - start)) s so far)" >&2
      next=$((next + 60))
    fi
  done
  wait "$pid" || status=$?
  local outcome="finished"
  [ "$status" -eq 0 ] || outcome="FAILED (exit $status)"
  echo "    $label: $outcome in $(($(date +%s) - start)) s" >&2
  return "$status"
}

progress_cargo() {
  local label=$1 estimate=$2
  shift 2
  if [ -t 2 ]; then
    progress "$label ($estimate)"
    cargo "$@"
  else
    progress_run "$label" "$estimate" cargo --quiet "$@"
  fi
}
