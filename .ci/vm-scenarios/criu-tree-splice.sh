# A process tree sharing memory, pre-dumped in splice mode: predump splice → predump splice (soft-dirty tracked) → criu dump --track-mem --prev-images-dir ../2 → criu restore: every process's memory whole.
# needs: soft-dirty criu
# timeout: 500
#   (240 s on 6.1 and 95 s on 6.12 on a quiet host, 2026-12-05 04:09; 6.1 timed out at 400 s
#   once while this host also ran the ava tests: its crit takes 35 s there)
#
# Issue 12's round trip of a tree, in splice mode (criu-tree-restore's tree and writes:
# 4 processes, a grandchild among them, each with private data, all sharing a
# MAP_SHARED|MAP_ANONYMOUS region and a shared /dev/zero mapping). In each pre-dump
# every process's pages are referenced into pipes by a vmsplice injected into it inside
# the tree's one freeze and written after the thaw; the shared objects are read through
# their file, as in read mode. The inventory says splice (no unreadable pages were left
# out), as CRIU's splice pre-dump writes it. Soft-dirty tracking (CRIU's own: nothing is
# left in the processes), so that criu dump --track-mem continues the chain; then CRIU's
# restore. Proof: no predump fd or mapping in any process after each pre-dump, and each
# restored process's own check (its data and both shared regions, page by page).

# Fds of predump's (pipes, sockets it passed, its tracking) or its mappings in any of PIDS:
# a process of the workload holds no pipe or socket of its own here.
predump_leftovers() {
  local pid
  for pid in "$@"; do
    ls -l "/proc/$pid/fd" 2>/dev/null | grep -E 'pipe:|socket:|userfaultfd|memfd:predump' |
      sed "s/^/process $pid: /" || true
    grep -E 'predump' "/proc/$pid/maps" 2>/dev/null | sed "s/^/process $pid: /" || true
  done
}

run() {
  workload_start --size 4M --threads 1 --tree 4 --shared 1M --devzero 512K
  wl tree | jq -c '[.processes[] | {index, pid, parent}]'
  local pids before
  pids=$(wl tree | jq -r '[.processes[].pid] | join(" ")')
  # shellcheck disable=SC2086 # a list of pids
  before=$(predump_leftovers $pids)
  step "predump splice pre-dump 1 of the tree"
  predump pre-dump -t "$WL_PID" -D 1 --track-mem soft-dirty --pre-dump-mode splice --json >1.json ||
    fail "predump splice pre-dump 1 of the tree failed"
  expect_eq "$(json 1.json .mode)" splice "pre-dump 1's mode"
  expect_eq "$(json 1.json .fallback)" null "pre-dump 1's fallback"
  expect_eq "$(jq '[.processes[] | select(.fallback != null)] | length' 1.json)" 0 "processes not spliced"
  expect_eq "$(crit decode -i 1/inventory.img | jq .entries[0].pre_dump_mode)" 1 "pre_dump_mode (1: splice)"
  # shellcheck disable=SC2086 # a list of pids
  expect_eq "$(predump_leftovers $pids)" "$before" "predump's fds and mappings in the tree after pre-dump 1"
  wl shared-dirty shared 100 7 >/dev/null
  wl proc 1 dirty 100 3 >/dev/null
  step "predump splice pre-dump 2 of the tree, on ../1"
  predump pre-dump -t "$WL_PID" -D 2 --prev-images-dir ../1 --track-mem soft-dirty \
    --pre-dump-mode splice --json >2.json || fail "predump splice pre-dump 2 of the tree failed"
  expect_eq "$(json 2.json .mode)" splice "pre-dump 2's mode"
  expect_eq "$(json 2.json .trackBackend)" soft-dirty "pre-dump 2's tracking"
  note "predump splice pre-dumps: $(json 1.json .pagesWritten) then $(json 2.json .pagesWritten) pages ($(json 2.json .pagesSkippedParent) left to the parent), $(json 2.json .pipes) pipes, $(json 2.json .injectedCalls) calls injected, stopped $(jq '.stoppedWindowMs | round' 1.json) and $(jq '.stoppedWindowMs | round' 2.json) ms, $(jq '.processes | length' 2.json) processes, $(jq '.sharedMemory | length' 2.json) shared objects"
  note "pre-dump 2's note: $(json 2.json .trackNote)"
  # Each process's 4 MiB of private data is in the first; the second takes only what
  # was written since (10% of process 1's data, stacks; the shared objects as compared).
  [ "$(json 2.json .pagesSkippedParent)" -gt 2048 ] ||
    fail "pre-dump 2 left only $(json 2.json .pagesSkippedParent) pages to its parent: the tracking did not work"
  # shellcheck disable=SC2086 # a list of pids
  expect_eq "$(predump_leftovers $pids)" "$before" "predump's fds and mappings in the tree after pre-dump 2"
  wl shared-dirty devzero 100 9 >/dev/null
  wl proc 2 dirty 50 5 >/dev/null
  step "criu dump of the tree on ../2"
  criu_do dump -t "$WL_PID" -D 3 --track-mem --prev-images-dir ../2
  read -r written parent < <(criu_stats 3)
  note "criu dump on predump's splice chain: $written pages written, $parent from the parent"
  step "criu restore of the tree"
  criu_do restore -D 3 -d
  local k answer
  for k in 1 2 3; do
    answer=$(wl proc "$k" check)
    echo "process $k check: $answer"
    [ "$(jq -r .ok <<<"$answer")" = true ] || fail "process $k's own check failed after restore: $answer"
  done
  wl_check
}
