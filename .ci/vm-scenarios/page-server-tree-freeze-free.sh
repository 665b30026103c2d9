# A process tree's freeze-free chain migrated through criu's page server: two predump freeze-free pre-dumps of a tree sharing memory (the second stopping no process) stream every process's pages and the shared memory objects to `criu page-server`, one connection each; predump untrack -t; criu dump -t continues the chain onto the server; criu restore brings the whole tree back from the server's directory.
# needs: uffd-wp soft-dirty criu pagemap-scan
#   (6.12 only: 6.1 has no uffd-wp, and freeze-free pre-dumps of a tree need it)
# timeout: 600
#
# Issues 12 and 14 together, in the freeze-free mode: page-server-tree's migration with
# criu-tree-freeze-free's chain. The workload as a tree of 4 processes (a grandchild
# among them), each with private data, all sharing a MAP_SHARED|MAP_ANONYMOUS region
# and a shared /dev/zero mapping. The destination's ps1, ps2 (parent ../ps1) and ps3
# (parent ../ps2) are written by criu page-server alone, one connection each carrying
# every pagemap of the tree; the source's local1..3 keep what each client keeps
# locally. The first freeze-free pre-dump stops each process alone, once, to make its
# tracking; the second stops none and sends only what each process wrote (the shared
# objects whole: the chain's copy is on the server). criu dump refuses a userfaultfd,
# so `predump untrack -t` ends the tracking first (nothing of predump left); CRIU's dump
# (--track-mem: soft-dirty, which predump never reset) sends what it finds changed.
# Proof: each restored process's own check (its data and both shared regions, page by
# page against the pattern).

predump_fds() {
  local pid
  for pid in "$@"; do
    ls -l "/proc/$pid/fd" 2>/dev/null | grep -E 'userfaultfd|memfd:predump' | sed "s/^/process $pid: /" || true
  done
}

run() {
  local k answer pids left w p
  workload_start --size 4M --threads 1 --tree 4 --shared 1M --devzero 512K
  pids=$(wl tree | jq -r '[.processes[].pid] | sort | join(" ")')

  step "predump freeze-free tree pre-dump 1 → criu page-server"
  cps_start ps1
  predump pre-dump -t "$WL_PID" -D local1 --pre-dump-mode freeze-free --json \
    --page-server --address 127.0.0.1 --port "$CPS_PORT" --page-server-format "$CRIU_FORMAT" >1.json ||
    fail "predump's freeze-free tree pre-dump to criu page-server failed"
  cps_wait ps1
  expect_eq "$(json 1.json .mode)" freeze-free "pre-dump 1's mode"
  expect_eq "$(json 1.json .trackBackend)" uffd-wp "pre-dump 1's tracking"
  expect_eq "$(jq -r '[.processes[].pid] | sort | join(" ")' 1.json)" "$pids" "processes pre-dumped"
  for k in $pids; do
    [ -f "ps1/pagemap-$k.img" ] || fail "criu page-server has no pagemap of process $k: $(ls ps1)"
  done
  for k in $(jq -r '.sharedMemory[].shmid' 1.json); do
    [ -f "ps1/pagemap-shmem-$k.img" ] || fail "criu page-server has no pagemap of shared object $k"
  done
  note "freeze-free tree pre-dump 1 → criu page-server: $(json 1.json .pagesWritten) pages, $(jq '.processes | length' 1.json) processes, $(jq '.sharedMemory | length' 1.json) shared objects, stopped $(jq '.stoppedWindowMs | round' 1.json) ms at most per process, $(ls ps1/pagemap-*.img | wc -l) pagemaps stored"

  wl shared-dirty shared 100 7 >/dev/null
  wl proc 1 dirty 100 3 >/dev/null

  step "predump freeze-free tree pre-dump 2 → criu page-server, on top of the first"
  cps_start ps2 --prev-images-dir ../ps1
  predump pre-dump -t "$WL_PID" -D local2 --prev-images-dir ../local1 --pre-dump-mode freeze-free --json \
    --page-server --address 127.0.0.1 --port "$CPS_PORT" --page-server-format "$CRIU_FORMAT" >2.json ||
    fail "predump's second freeze-free tree pre-dump to criu page-server failed"
  cps_wait ps2
  expect_eq "$(json 2.json .mode)" freeze-free "pre-dump 2's mode"
  expect_eq "$(json 2.json .stoppedWindowMs)" 0 "stopped (ms) in the second freeze-free pre-dump"
  expect_eq "$(json 2.json .pageServer.hasParent)" true "criu's server says its parent holds the root's pagemap"
  # Each process's 4 MiB of private data is in the first; the second takes what was written.
  [ "$(json 2.json .pagesSkippedParent)" -gt 2048 ] ||
    fail "pre-dump 2 left only $(json 2.json .pagesSkippedParent) pages to the server's parent"
  note "freeze-free tree pre-dump 2 → criu page-server: $(json 2.json .pagesWritten) pages sent, $(json 2.json .pagesSkippedParent) left to ps1, stopped 0 ms"

  wl shared-dirty devzero 100 9 >/dev/null
  wl proc 2 dirty 50 5 >/dev/null

  step "predump untrack -t (criu dump refuses a userfaultfd)"
  predump untrack -t "$WL_PID" || fail "untrack -t failed"
  # shellcheck disable=SC2086 # a list of pids
  left=$(predump_fds $pids)
  [ -z "$left" ] || fail "predump's fds are still in the tree after untrack -t: $left"

  step "criu dump of the tree → criu page-server, on predump's freeze-free chain"
  cps_start ps3 --prev-images-dir ../ps2
  criu_do dump -t "$WL_PID" -D local3 --track-mem --prev-images-dir ../local2 \
    --page-server --address 127.0.0.1 --port "$CPS_PORT"
  cps_wait ps3
  read -r w p < <(criu_stats local3)
  note "criu dump → criu page-server on the freeze-free chain: $w pages written, $p from the parent"

  step "criu restore of the tree from the server's directory"
  find local3 -maxdepth 1 -type f -exec cp {} ps3/ \;
  criu_do restore -D ps3 -d
  for k in 1 2 3; do
    answer=$(wl proc "$k" check)
    echo "process $k check: $answer"
    [ "$(jq -r .ok <<<"$answer")" = true ] || fail "process $k's own check failed after restore: $answer"
  done
  wl_check
}
