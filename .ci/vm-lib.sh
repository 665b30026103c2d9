# Helpers for the VM scenarios (.ci/vm-scenarios/*.sh), sourced in the VM before
# the scenario, in its scratch directory, under `set -euo pipefail`.
# shellcheck shell=bash
#
#   predump ARGS…              the CLI of this checkout
#   workload_start ARGS…       a predump-workload CRIU can dump and restore (commands
#                              through FIFOs, no pipe held between them): sets
#                              WL_PID, WL_DATA (its data region's start, hex)
#   wl COMMAND…                one workload command; prints its JSON answer
#   wl_check                   the workload checks its own memory: fails unless ok
#   criu_do ACTION -D DIR ARGS…  criu with a verbose log in DIR/ACTION.log; fails,
#                              with the log's errors, unless criu succeeds
#   criu_fails ACTION -D DIR ARGS…  criu must fail; its log is DIR/ACTION.log
#   criu_stats DIR             "WRITTEN PARENT" pages of DIR/stats-dump (crit)
#   json FILE FILTER           jq -r FILTER FILE
#   expect_eq A B WHAT / expect_match TEXT REGEX WHAT / expect_between N LO HI WHAT
#   note TEXT                  a line for the harness's summary
#   fail TEXT / skip TEXT      end the scenario
# Every process started here is killed (by pid) when the scenario ends; every *.log
# and *.json under the scratch directory is copied to $VM_OUT/SCENARIO/.

SCENARIO=${SCENARIO:?the scenario name, from .ci/vm-guest}
WORKLOAD_SRC=$VM_REPO/target/release/predump-workload
_vm_pids=()

# To stderr: a helper whose output a scenario discards (`wl … >/dev/null`) or captures
# (`x=$(wl …)`) must still say why it failed.
fail() {
  echo "FAIL: $*" >&2
  exit 1
}
skip() {
  echo "SKIP: $*"
  exit 77
}
note() { echo "NOTE: $*"; }
step() { printf '\n=== %s (%ss after boot)\n' "$*" "$(cut -d' ' -f1 /proc/uptime)"; }

_vm_cleanup() {
  local rc=$?
  local p
  for p in "${_vm_pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  local keep=$VM_OUT/$SCENARIO
  mkdir -p "$keep"
  find . \( -name '*.log' -o -name '*.json' -o -name 'out' \) -type f -size -20M -print0 2>/dev/null |
    while IFS= read -r -d '' f; do
      mkdir -p "$keep/$(dirname "$f")"
      cp "$f" "$keep/$f"
    done
  exit $rc
}
trap _vm_cleanup EXIT

predump() { "$VM_NODE" "$VM_REPO/bin/predump.js" "$@"; }
json() { jq -r "$2" "$1"; }

# A copy on tmpfs: CRIU then restores the binary's mappings from a plain file
# system (the checkout is an overlay on 9p inside the VM).
_workload_bin() {
  [ -x /tmp/predump-workload ] || cp "$WORKLOAD_SRC" /tmp/predump-workload
  echo /tmp/predump-workload
}

workload_start() {
  WL=$PWD/wl-$RANDOM
  mkdir "$WL"
  mkfifo "$WL/cmd" "$WL/reply"
  # setsid: a session of its own and no terminal, as CRIU wants of a process tree
  # it dumps without --shell-job; stdin /dev/null, output to a file.
  setsid "$(_workload_bin)" --control "$WL" "$@" </dev/null >"$WL/out" 2>&1 &
  local starter=$!
  disown "$starter" # no "Killed" job notice when criu dump ends it
  _vm_pids+=("$starter")
  local ready
  ready=$(timeout 120 head -n1 "$WL/reply") || fail "the workload did not start: $(cat "$WL/out")"
  WL_PID=$(jq -r .pid <<<"$ready")
  WL_DATA=$(jq -r .data.start <<<"$ready")
  [ "$WL_PID" = "$starter" ] || _vm_pids+=("$WL_PID")
  echo "workload $WL_PID ready: $ready"
}

wl() {
  local answer
  echo "$*" >"$WL/cmd"
  answer=$(timeout 120 cat "$WL/reply") || fail "the workload did not answer '$*': $(_wl_state)"
  echo "$answer"
}

# Why the workload may not have answered: whether its serving process lives, where
# each of its threads waits, and the end of its output.
_wl_state() {
  local t
  if [ ! -d "/proc/$WL_PID" ]; then
    echo "process $WL_PID is gone; its output: $(tail -c 400 "$WL/out" 2>/dev/null | tr '\n' ' ')"
    return
  fi
  for t in /proc/"$WL_PID"/task/*; do
    printf 'thread %s %s in %s [%s]; ' "${t##*/}" "$(cut -d' ' -f3 "$t/stat")" \
      "$(cat "$t/wchan" 2>/dev/null)" "$(tr '\n' ' ' <"$t/syscall" 2>/dev/null | cut -c1-40)"
  done
  echo "kernel stack of $WL_PID: $(head -6 "/proc/$WL_PID/stack" 2>/dev/null | tr '\n' ' ')"
  echo "status: $(grep -E '^(State|TracerPid|SigPnd|ShdPnd|SigBlk)' "/proc/$WL_PID/status" | tr '\n' ' ')"
  echo "output: $(tail -c 400 "$WL/out" 2>/dev/null | tr '\n' ' ')"
}

wl_check() {
  local answer
  answer=$(wl check)
  echo "workload check: $answer"
  [ "$(jq -r .ok <<<"$answer")" = true ] || fail "the workload's own check failed: $answer"
}

_criu_errors() { grep -E 'Error|error|Warn|Missing|BUG' "$1" | tail -20; }
# The line that says why criu failed: criu logs harmless errors of its own kernel
# probes first (util.c "exited, status=1", tun), so the last real one.
_criu_why() {
  grep -E 'Error|BUG' "$1" | grep -vE 'util.c:[0-9]+\): exited, status=|tun: Unable to create tun' |
    grep -E 'Missing|not found|Can.t|FAILED|BUG|Error' | head -3 | tr '\n' ' '
}

# The criu in use (Debian's 3.17, or PREDUMP_VM_CRIU's) and the page-server header
# layout it speaks: 24-byte headers up to CRIU 4.1, 32-byte ones from 4.2 on.
CRIU_VERSION=$(criu --version 2>/dev/null | sed -n 's/^Version: *//p')
case $CRIU_VERSION in
  [0-3].* | 4.[01] | 4.[01].*) CRIU_FORMAT=criu-4.1 ;;
  *) CRIU_FORMAT=criu-4.2 ;;
esac

criu_do() {
  local action=$1 dir=
  shift
  local a prev=
  for a in "$@"; do
    [ "$prev" = -D ] && dir=$a
    prev=$a
  done
  [ -n "$dir" ] || fail "criu_do needs -D DIR"
  mkdir -p "$dir" # criu 3.17 does not make it
  echo "+ criu $action $*"
  if ! criu "$action" "$@" -v4 -o "$action.log"; then
    echo "--- errors of $dir/$action.log:"
    _criu_errors "$dir/$action.log"
    fail "criu $action $* failed: $(_criu_why "$dir/$action.log")"
  fi
}

criu_fails() {
  local action=$1 dir=
  shift
  local a prev=
  for a in "$@"; do
    [ "$prev" = -D ] && dir=$a
    prev=$a
  done
  mkdir -p "$dir"
  echo "+ criu $action $* (must fail)"
  if criu "$action" "$@" -v4 -o "$action.log"; then
    fail "criu $action $* succeeded; it must fail"
  fi
  echo "--- errors of $dir/$action.log (expected):"
  _criu_errors "$dir/$action.log"
}

criu_stats() {
  crit decode -i "$1/stats-dump" | jq -r '.entries[0].dump | "\(.pages_written) \(.pages_skipped_parent // 0)"'
}

# predump verify of the restored (stopped) process against the chain ending at DIR:
# no page of the chain unlike its memory (rseq areas aside), none missing from it.
verify_restored() {
  local dir=$1
  predump verify -t "$WL_PID" -D "$dir" --json >verify.json || true
  cat verify.json
  if [ "$(json verify.json .mismatches)" != 0 ]; then
    local a
    for a in $(jq -r '.firstMismatches[]' verify.json); do
      while read -r range rest; do
        (($((16#${range%-*})) <= a && a < $((16#${range#*-})))) && echo "mismatch at $a in: $range $rest"
      done <"/proc/$WL_PID/maps"
    done
  fi
  expect_eq "$(json verify.json .mismatches)" 0 "pages of the chain unlike the restored memory"
  expect_eq "$(json verify.json .notInChain)" 0 "pages the chain lacks"
  note "restored memory against the chain: $(json verify.json .pagesCompared) pages equal ($(json verify.json .rseqOnly) differing only in rseq areas)"
}

expect_eq() { [ "$1" = "$2" ] || fail "$3: got '$1', want '$2'"; }
expect_match() { [[ $1 =~ $2 ]] || fail "$3: '$1' does not match /$2/"; }
expect_between() { [ "$1" -ge "$2" ] && [ "$1" -le "$3" ] || fail "$4: $1 is not within $2..$3"; }

# cps_start DIR ARGS…: `criu page-server` on loopback port 27000+N in the
# background; returns once --status-fd says it listens. Sets CPS_PID, CPS_PORT.
CPS_N=0
cps_start() {
  local dir=$1
  shift
  CPS_N=$((CPS_N + 1))
  CPS_PORT=$((27000 + CPS_N))
  mkdir -p "$dir"
  mkfifo "$dir.ready"
  criu page-server -D "$dir" --address 127.0.0.1 --port "$CPS_PORT" --status-fd 3 "$@" \
    -v4 -o page-server.log 3>"$dir.ready" &
  CPS_PID=$!
  _vm_pids+=("$CPS_PID")
  timeout 300 head -c1 "$dir.ready" >/dev/null ||
    fail "criu page-server did not start: $(_criu_errors "$dir/page-server.log")"
}

# cps_wait DIR: criu page-server ends well once its client has closed the session.
cps_wait() {
  wait "$CPS_PID" || fail "criu page-server for $1 failed: $(_criu_errors "$1/page-server.log")"
  [ -f "$1/pagemap-$WL_PID.img" ] || fail "criu page-server wrote no pagemap into $1: $(ls "$1")"
}

# ps_start DIR ARGS…: starts predump page-server on a free loopback port in
# the background; sets PS_PID and PS_PORT once it listens (--status-fd says
# when; its first stdout line is the listening JSON).
ps_start() {
  local dir=$1
  shift
  mkfifo "$dir.ready"
  predump page-server -D "$dir" --address 127.0.0.1 --port 0 --json --status-fd 3 "$@" \
    >"$dir.json" 2>"$dir.log" 3>"$dir.ready" &
  PS_PID=$!
  _vm_pids+=("$PS_PID")
  timeout 300 head -c1 "$dir.ready" >/dev/null || fail "predump page-server did not start: $(cat "$dir.log")"
  PS_PORT=$(head -n1 "$dir.json" | jq -r .listening.port)
  echo "predump page-server for $dir listening on port $PS_PORT"
}

# ps_wait DIR: the server must end well; prints its result line.
ps_wait() {
  wait "$PS_PID" || fail "predump page-server for $1 failed: $(cat "$1.log")"
  tail -n1 "$1.json" >"$1.result.json"
  cat "$1.log"
  json "$1.result.json" .ok | grep -qx true || fail "no result from the server of $1"
  expect_eq "$(json "$1.result.json" .format)" "$CRIU_FORMAT" "the header layout criu $CRIU_VERSION sent to $1"
  [ -f "$1/pagemap-$WL_PID.img" ] && [ -f "$1/pages-65537.img" ] || fail "$1 lacks its images: $(ls "$1")"
}
